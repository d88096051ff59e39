"""Two processors in one module, so ``KRT_HANDLER_PATH`` must name one: ``processor_pair.py:Shout``.

``Shout`` is all sync (one worker-thread hop per message); ``Whisper`` is all async.
"""

from greeter_pb2 import Request, Response

from krt_runner import Processor


class Shout(Processor):
    def validate(self, ctx, req: Request):
        if req.name.isupper():
            raise ValueError("already shouting")

    def process(self, ctx, req: Request) -> Response:
        return Response(greeting=f"{req.name.upper()}!")


class Whisper(Processor):
    async def validate(self, ctx, req: Request):
        if not req.name:
            raise ValueError("nothing to whisper")

    async def process(self, ctx, req: Request) -> Response:
        return Response(greeting=f"{req.name.lower()}...")
