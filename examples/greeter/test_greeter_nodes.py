"""Unit tests of the greeter's nodes with krt_runner.testing: plain pytest, no NATS, no InfluxDB.

Run them with  pytest examples/greeter
"""

import sys
from pathlib import Path

from krt_runner.testing import run_node

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "src"))  # the generated greeter_pb2, as the nodes import it

from greeter_pb2 import Request, Response  # noqa: E402


def test_greet_says_hello_and_saves_a_measurement():
    with run_node(HERE, "src/greet.py") as node:
        answer = node.call(Request(name="Ada"), Response)

    assert answer.greeting == "Hello, Ada!"
    assert node.points[0].measurement == "greetings"
    assert node.points[0].fields == {"name_length": 3}


def test_greet_calls_a_nameless_person_stranger():
    with run_node(HERE, "src/greet.py") as node:
        assert node.call(Request(name="  "), Response).greeting == "Hello, stranger!"


def test_decorate_wraps_the_greeting():
    with run_node(HERE, "src/decorate.py") as node:
        answer = node.call(Response(greeting="Hello, Ada!"), Response)

    assert answer.greeting == "** Hello, Ada! **"
