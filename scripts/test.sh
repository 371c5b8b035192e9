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
# Two test processes (pytest-xdist, each with its own servers and workers on free ports): most
# tests wait on real processes, so one process left the two cores idle half the time. Arguments
# come after, so `bash scripts/test.sh -n 0` runs the suite in one process.
echo "== pytest";            pytest -q -p no:cacheprovider --durations=30 -n 2 --dist worksteal "$@"
