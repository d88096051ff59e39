"""The node runtime: one ``krt-runner run`` process.

``main`` (process: signals, idle timeout) -> ``lifecycle`` (start-up and the
shutdown order) -> ``intake`` (how messages arrive) -> ``pipeline`` (one
message: decode, call, answer) -> ``answers`` (outcome -> bytes). Around
them: ``broker`` (the only module that talks to NATS), ``user_code``,
``loading``, ``request_types`` and ``calling`` (the user's code),
``protobuf_compat`` and ``generated_code`` (KRE v1 code on today's protobuf),
``threads`` (worker threads for sync code), ``context`` (``ctx``), with
``data_context`` and ``mongo_writer`` (KRE v1's ``ctx.db`` and
``ctx.prediction``) and ``loop_calls`` (one call for sync and async
handlers), ``health`` (the health file) and ``job`` (one message's state).
"""
