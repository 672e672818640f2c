#!/bin/sh
# Set up (idempotent) and run the demo: real TCP through the inline monitor.
set -eu
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/mosxdp demo "$@"
