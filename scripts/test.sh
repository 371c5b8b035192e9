#!/usr/bin/env bash
# Sets everything up, then runs the whole suite: lint, format, types, and every test
# (the integration tests start their own redis-server, moto server and Celery workers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff check";        ruff check .
echo "== ruff format";       ruff format --check .
echo "== mypy";              mypy mvpipe celeryconfig.py
echo "== pytest";            pytest -q -p no:cacheprovider --durations=30 "$@"
