"""A sync handler busy on the CPU for 2 ms: about 500 answers/s per replica."""

import time

from bench_handler import read_name
from greeter_pb2 import Response


def handler(ctx, data):
    deadline = time.perf_counter() + 0.002
    while time.perf_counter() < deadline:
        pass
    return Response(greeting=read_name(data))
