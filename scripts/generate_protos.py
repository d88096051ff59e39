"""Regenerate the checked-in protobuf modules from their .proto files.

Run from the repository root: ``python scripts/generate_protos.py``.
Needs the ``dev`` extra (grpcio-tools). ``tests/test_generated_protos.py``
fails when a checked-in module and its .proto disagree.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (directory holding the .proto, .proto file name, output directory)
TARGETS = [
    (ROOT / "protos", "kre_nats_msg.proto", ROOT / "krt_runner" / "_proto"),
    (ROOT / "examples/greeter/proto", "greeter.proto", ROOT / "examples/greeter/src"),
    (ROOT / "examples/greeter/proto", "greeter.proto", ROOT / "tests/handlers"),
    (ROOT / "examples/iris/proto", "iris.proto", ROOT / "examples/iris/src"),
    (ROOT / "tests/market_price/proto", "public_input.proto", ROOT / "tests/market_price/src"),
    (ROOT / "tests/market_price/proto", "internal_nodes.proto", ROOT / "tests/market_price/src"),
]


def generate(proto_dir: Path, proto_name: str, out_dir: Path) -> None:
    """Compile one .proto into ``out_dir`` with the protoc bundled in grpcio-tools."""
    import grpc_tools
    from grpc_tools import protoc

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    args = ["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out_dir}", f"--pyi_out={out_dir}"]
    if protoc.main([*args, str(proto_dir / proto_name)]) != 0:
        raise SystemExit(f"protoc failed on {proto_dir / proto_name}")


def main(out_root: Path | None = None) -> None:
    for proto_dir, name, out_dir in TARGETS:
        target = out_dir if out_root is None else out_root / out_dir.relative_to(ROOT)
        target.mkdir(parents=True, exist_ok=True)
        generate(proto_dir, name, target)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
