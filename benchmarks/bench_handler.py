"""The handler both sides of the benchmark run: unpack a small message, answer a Response."""

from greeter_pb2 import Request, Response


def read_name(data) -> str:
    if data.Is(Request.DESCRIPTOR):
        request = Request()
        data.Unpack(request)
        return request.name
    response = Response()
    data.Unpack(response)
    return response.greeting


async def handler(ctx, data):
    return Response(greeting=read_name(data))
