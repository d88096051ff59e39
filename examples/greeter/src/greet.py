"""First node of the greeter workflow: Request{name} -> Response{greeting}.

A plain KRE v1 handler module: ``init(ctx)`` once, ``handler(ctx, data)`` per
message, ``data`` a ``google.protobuf.Any``.
"""

from greeter_pb2 import Request, Response


def init(ctx):
    ctx.set("template", "Hello, {name}!")
    ctx.logger.info("greet node initialised")


async def handler(ctx, data):
    request = Request()
    data.Unpack(request)
    name = request.name.strip() or "stranger"
    ctx.measurement.save("greetings", {"name_length": len(name)}, {"node": "greet"})
    return Response(greeting=ctx.get("template").format(name=name))
