"""A KRT as files: the ``krt.yml`` model (``model``), the Python DSL (``dsl``), protos (``protos``, and
``regenerate`` for ``krt-runner protos``), checking (``check``), packing into ``.krt`` files (``package``,
``build``). Nothing here runs a node."""
