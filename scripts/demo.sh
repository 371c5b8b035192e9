#!/usr/bin/env bash
# Sets everything up, starts the local stack, generates a music video end to end, stops the stack.
# Pass --keep to leave the stack running for exploring in Flower (Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mvpipe demo "$@"
