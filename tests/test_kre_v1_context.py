"""KRE v1 handlers' ways with ``ctx``, through a real ``krt-runner run`` on a real nats-server: attributes of their
own (set in ``init`` for every message, in a handler for one), ``ctx.__request_msg__`` and ``ctx.__config__``,
``ctx.path`` joined as ``os.path.join`` joins, and a typed handler that still calls ``data.Unpack``."""

from __future__ import annotations

from conftest import greeter_pb2, node_env, unpack

KRE_STYLE = """
    from greeter_pb2 import Request


    def init(ctx):
        ctx.model = {"greeting": "Hello"}  # KRE v1 handlers kept their model on ctx


    async def handler(ctx, data):
        request = Request()
        data.Unpack(request)
        if request.name == "seen":
            return Request(name=str(hasattr(ctx, "started")))  # another message's attribute is not this one's
        ctx.started = 1
        parts = [
            ctx.model["greeting"], str(ctx.started), ctx.__request_msg__.tracking_id,
            ctx.__config__.krt_version, ctx.__config__.krt_node_name, ctx.__config__.nats_input,
            ctx.path("models/") + "m.pkl",
        ]
        return Request(name="|".join(parts))
"""


async def test_attributes_init_gives_ctx_are_every_messages_and_a_handlers_are_its_own(
    nats_server, handler_dir, start_node, requester
) -> None:
    base = handler_dir(KRE_STYLE)
    start_node(**node_env(nats_server, base, "src/node.py", input="kre-ctx", name="kre"))

    answer = await requester.greet("kre-ctx", "Ada")
    seen = await requester.greet("kre-ctx", "seen")

    greeting, started, tracking_id, version, node, subject, path = unpack(answer, greeter_pb2.Request).name.split("|")
    assert (greeting, started) == ("Hello", "1")
    assert tracking_id == answer.tracking_id and tracking_id
    assert (version, node, subject) == ("v1", "kre", "kre-ctx")
    assert path == f"{base}/models/m.pkl"  # the trailing / kept, as os.path.join keeps it
    assert unpack(seen, greeter_pb2.Request).name == "False"


async def test_a_typed_handler_that_still_unpacks_its_data_is_told_why_in_its_error_answer(
    nats_server, handler_dir, start_node, requester
) -> None:
    base = handler_dir("""
        from greeter_pb2 import Request


        async def handler(ctx, data: Request):
            request = Request()
            data.Unpack(request)
            return request
    """)
    start_node(**node_env(nats_server, base, "src/node.py", input="kre-typed", name="typed"))

    answer = await requester.greet("kre-typed", "Ada")

    assert answer.error.startswith("error in node 'typed': handler raised AttributeError: Unpack (Request.Unpack: it "
                                   "is a greeter.Request, not an Any;")
    assert "annotated with a message class gets that message already unpacked" in answer.error


async def test_the_request_envelope_shows_the_requesters_inbox_and_an_early_reply_as_kre_v1_did(
    nats_server, handler_dir, start_node, requester
) -> None:
    base = handler_dir("""
        from greeter_pb2 import Request


        async def handler(ctx, data):
            envelope = ctx.__request_msg__
            if data.Is(Request.DESCRIPTOR) and data.value == Request(name="after").SerializeToString():
                return Request(name=ctx.get("after"))
            before = f"{envelope.reply.startswith('_INBOX.')} {envelope.replied}"
            await ctx.reply(Request(name=before))
            if not ctx.__request_msg__.replied:  # KRE v1 handlers checked it before a second reply
                await ctx.reply(Request(name="twice"))
            ctx.set("after", f"{ctx.__request_msg__.replied}")
    """)
    start_node(**node_env(nats_server, base, "src/node.py", input="kre-reply", name="first"))

    early = await requester.greet("kre-reply", "Ada")
    after = await requester.greet("kre-reply", "after")

    assert unpack(early, greeter_pb2.Request).name == "True False" and early.replied
    assert unpack(after, greeter_pb2.Request).name == "True"


async def test_a_name_nobody_set_on_ctx_says_where_to_set_it(nats_server, handler_dir, start_node, requester):
    base = handler_dir("""
        async def handler(ctx, data):
            return ctx.model
    """)
    start_node(**node_env(nats_server, base, "src/node.py", input="kre-missing", name="missing"))

    answer = await requester.greet("kre-missing", "Ada")

    assert "'HandlerContext' object has no attribute 'model': set it in init (ctx.model = ...)" in answer.error
