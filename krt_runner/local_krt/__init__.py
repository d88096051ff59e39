"""Running a KRT on one machine: ``krt-runner up`` (``up``), ``krt_runner.local()`` and ``connect()``
(``running_krt``), ``krt-runner call`` (``call``) and dev mode (``dev``, behind ``krt_runner.serve``).

``plan`` checks what will start, ``supervisor`` starts, watches and stops the node processes
(``node_process``) and the embedded nats-server (``embedded``). Named ``local_krt`` because
``krt_runner.local`` is the public function.
"""
