"""A processor node: ``validate`` rejects empty names and names starting with ``bad``;
``process`` fails on ``boom``. Sync setup and validate, async process.

Runnable on its own: ``python classifier.py --request '{"name": "Ada"}'``.
"""

from __future__ import annotations

from greeter_pb2 import Request, Response

import krt_runner


class Classifier(krt_runner.Processor):
    def __init__(self) -> None:
        self.setups = 0

    def setup(self, ctx):
        self.setups += 1
        ctx.set("template", "Hello, {name}!")

    def validate(self, ctx, req: Request) -> None:
        if not req.name:
            raise ValueError("name is empty")
        if req.name.startswith("bad"):
            raise ValueError(f"name {req.name!r} is not allowed")

    async def process(self, ctx, req: Request) -> Response:
        if req.name == "boom":
            raise RuntimeError("boom requested")
        greeting = ctx.get("template").format(name=req.name)
        return Response(greeting=f"{greeting} setups={self.setups}")


if __name__ == "__main__":
    krt_runner.serve(Classifier)
