"""A Processor with a sync ``validate`` (rejects names starting with ``bad``) and a sync ``process_batch``
(greets each request with the size of its batch; sleeps for ``sleep:S``). No ``process``.

Runnable on its own: ``python batch_processor.py --request '{"name": "Ada"}'``.
"""

from __future__ import annotations

import time

from greeter_pb2 import Request, Response

import krt_runner


class Greeter(krt_runner.Processor):
    def validate(self, ctx, req: Request) -> None:
        if req.name.startswith("bad"):
            raise ValueError(f"name {req.name!r} is not allowed")

    def process_batch(self, ctx, requests: list[Request]) -> list[Response]:
        for request in requests:
            if request.name.startswith("sleep:"):
                time.sleep(float(request.name.split(":")[1]))
        size = len(requests)
        return [Response(greeting=f"Hello, {request.name}! batch of {size}") for request in requests]


if __name__ == "__main__":
    krt_runner.serve(Greeter)
