"""A typed handler: ``req`` is annotated, so the runner unpacks the Any into a ``Request``.

Answers ``Request(name=f"{req.name}>{node}")`` so chains show the path taken.
"""

import os

from greeter_pb2 import Request

NODE = os.environ.get("KRT_NODE_NAME", "node")


async def handler(ctx, req: Request) -> Request:
    if not isinstance(req, Request):
        raise TypeError(f"got {type(req).__name__}, not the unpacked Request")
    return Request(name=f"{req.name}>{NODE}")
