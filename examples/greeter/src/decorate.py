"""Second node of the greeter workflow: Response -> Response, decorated."""

from greeter_pb2 import Response


def handler(ctx, data):
    response = Response()
    data.Unpack(response)
    return Response(greeting=f"** {response.greeting} **")
