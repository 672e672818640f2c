#!/bin/sh
# Set up (idempotent) and run the whole test suite: unit, bpf and netns tiers.
set -eu
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
