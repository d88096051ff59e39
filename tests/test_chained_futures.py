"""Futures that chain (issue 26): a workflow's future stands where another workflow's request goes."""

from __future__ import annotations

import io
import os
import time
import uuid
from pathlib import Path

import pytest
from up_helpers import leftovers

import krt_runner
from krt_runner.errors import ErrorAnswer
from krt_runner.krt.protos import grpc_tools_include
from krt_runner.krt.regenerate import regenerate

ANSWER_TIMEOUT = 60.0
CHAIN_PROTO = """\
syntax = "proto3";
package chain;

service Entrypoint {
  rpc Classify (Flower) returns (Species) {};
  rpc Price (Species) returns (Quote) {};
}

message Flower { string name = 1; }
message Species { string species = 1; }
message Quote { string species = 1; int32 cents = 2; }
"""
CLASSIFY = """\
import time

from chain_pb2 import Flower, Species


def handler(ctx, req: Flower) -> Species:
    if req.name == "boom":
        raise ValueError("not a flower")
    if req.name.startswith("slow"):
        time.sleep(1.0)
    return Species(species=f"{req.name}-species")
"""
PRICE = """\
from chain_pb2 import Quote, Species


def handler(ctx, req: Species) -> Quote:
    return Quote(species=req.species, cents=len(req.species))
"""
KRT_YML = """\
version: chain-v1
description: a classifier and a price list
entrypoint: {proto: proto/chain.proto, image: e}
nodes:
  - {name: classify, image: i, src: src/classify.py}
  - {name: price, image: i, src: src/price.py}
workflows:
  - {name: classify, entrypoint: Classify, sequential: [classify]}
  - {name: price, entrypoint: Price, sequential: [price]}
"""


@pytest.fixture(scope="module")
def chain_krt(tmp_path_factory):
    """Two workflows, the second's request the first's response; local() from a working directory of its own."""
    folder = tmp_path_factory.mktemp("chain")
    (folder / "proto").mkdir()
    (folder / "src").mkdir()
    (folder / "proto" / "chain.proto").write_text(CHAIN_PROTO)
    regenerate(folder / "src" / "chain_pb2.py", folder / "proto" / "chain.proto",
               include=grpc_tools_include(missing="the proto extra"), root=folder)
    (folder / "src" / "classify.py").write_text(CLASSIFY)
    (folder / "src" / "price.py").write_text(PRICE)
    (folder / "krt.yml").write_text(KRT_YML)
    marker, cwd = uuid.uuid4().hex, Path.cwd()
    os.environ["UP_TEST_MARKER"] = marker
    os.chdir(folder)
    env = {"KRT_MEASUREMENTS_ENABLED": "false"}
    try:
        with krt_runner.local(folder, env=env, output=io.StringIO(), grpc_port=None) as krt:
            yield krt
    finally:
        os.chdir(cwd)
        del os.environ["UP_TEST_MARKER"]
    assert leftovers(marker) == []


def test_a_future_of_the_first_workflow_is_the_request_of_the_second(chain_krt):
    classify, price = chain_krt.workflow("classify"), chain_krt.workflow("price")

    priced = price.submit(classify.submit({"name": "iris"}))

    answer = priced.result(ANSWER_TIMEOUT)
    assert (answer.species, answer.cents) == ("iris-species", len("iris-species"))


def test_submitting_a_future_returns_at_once_and_sends_when_the_first_answers(chain_krt):
    classify, price = chain_krt.workflow("classify"), chain_krt.workflow("price")
    started = time.monotonic()

    first = classify.submit({"name": "slow-rose"})
    second = price.submit(first)
    submitted = time.monotonic() - started

    assert submitted < 0.5 and not second.done()
    assert second.result(ANSWER_TIMEOUT).species == "slow-rose-species"
    assert first.done()


def test_a_failure_of_the_first_fails_the_second_with_the_first_error(chain_krt):
    classify, price = chain_krt.workflow("classify"), chain_krt.workflow("price")

    first = classify.submit({"name": "boom"})
    second = price.submit(first)

    error = second.exception(ANSWER_TIMEOUT)
    assert isinstance(error, ErrorAnswer) and "not a flower" in error.error
    assert error is first.exception(ANSWER_TIMEOUT)


def test_a_future_that_answers_another_type_is_refused_at_submit(chain_krt):
    classify, price = chain_krt.workflow("classify"), chain_krt.workflow("price")
    priced = price.submit({"species": "x"})

    refused = r"workflow 'classify' takes a chain\.Flower; that future answers a chain\.Quote"
    with pytest.raises(TypeError, match=refused):
        classify.submit(priced)
    assert priced.result(ANSWER_TIMEOUT).cents == 1
