"""A sync handler that waits 2 ms with the GIL released (as inference in C code does): about 500 answers/s."""

import time

from bench_handler import read_name
from greeter_pb2 import Response


def handler(ctx, data):
    time.sleep(0.002)
    return Response(greeting=read_name(data))
