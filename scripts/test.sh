#!/bin/sh
# Set up everything the test suite needs, then run lint, types and the whole suite.
# Used as it is by the README and by .ci/run.
set -eu
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
# A real InfluxDB-write-compatible server for the measurement tests (Debian's victoria-metrics), valgrind for the
# instruction-count tool's test, and the Node.js test clients.
sh scripts/install_test_servers.sh
.venv/bin/ruff check krt_runner tests benchmarks examples scripts
.venv/bin/mypy
# Exit code 5 (no tests collected) fails this script like any other failure.
.venv/bin/python -m pytest -n 2 --dist loadfile -p no:cacheprovider "$@"
