"""The checked-in *_pb2.py modules are what scripts/generate_protos.py makes from the .proto files."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("generate_protos", ROOT / "scripts" / "generate_protos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_checked_in_modules_match_their_proto_files(tmp_path):
    generator = _generator()

    generator.main(tmp_path)

    generated = sorted(tmp_path.rglob("*_pb2.py*"))
    assert generated, "the generator wrote nothing"
    stale = [
        str(path.relative_to(tmp_path))
        for path in generated
        if not (ROOT / path.relative_to(tmp_path)).is_file()
        or (ROOT / path.relative_to(tmp_path)).read_bytes() != path.read_bytes()
    ]
    assert not stale, f"out of date, run `{sys.executable} scripts/generate_protos.py`: {stale}"


def test_the_envelope_proto_is_exactly_the_design_contract():
    proto = (ROOT / "protos" / "kre_nats_msg.proto").read_text()

    for line in (
        'message Tracking { string node_name = 1; string start = 2; string end = 3; }',
        "string tracking_id = 1;",
        "repeated Tracking tracking = 2;",
        "string reply = 3;",
        "google.protobuf.Any payload = 4;",
        "string error = 5;",
        "bool replied = 6;",
    ):
        assert line in proto
