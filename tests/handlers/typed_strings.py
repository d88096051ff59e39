"""A typed sync handler with string annotations (``from __future__ import annotations``).

``ctx``'s annotation names a class imported for type checkers only: only the
request parameter's annotation is resolved, so this module loads. Runnable on
its own: ``python typed_strings.py --request '{"name": "Ada"}'``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from greeter_pb2 import Request, Response

import krt_runner

if TYPE_CHECKING:
    from krt_runner.node.context import HandlerContext

NODE = os.environ.get("KRT_NODE_NAME", "node")


def init(ctx: HandlerContext) -> None:
    ctx.set("template", "Hi, {name}!")


def handler(ctx: HandlerContext, req: Request) -> Response:
    if not isinstance(req, Request):
        raise TypeError(f"got {type(req).__name__}, not the unpacked Request")
    return Response(greeting=f"{ctx.get('template').format(name=req.name)} via {NODE}")


if __name__ == "__main__":
    krt_runner.serve(handler, init=init)
