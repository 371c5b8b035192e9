#!/usr/bin/env bash
# Installs what mvpipe needs on a fresh Debian machine: redis-server and a virtualenv with mvpipe.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# What Debian must provide: redis-server, and the venv module (python3-venv: stock Debian's
# python3 has no ensurepip without it).
packages=()
if ! command -v redis-server >/dev/null 2>&1 && [ ! -x /usr/bin/redis-server ]; then
  packages+=(redis-server)
fi
# A .venv without pip (made before python3-venv was there) is made again.
venv_ok() { .venv/bin/python -m pip --version >/dev/null 2>&1; }
if ! venv_ok && ! "$PYTHON" -c "import ensurepip, venv" >/dev/null 2>&1; then
  packages+=(python3-venv)
fi
if [ ${#packages[@]} -gt 0 ]; then
  echo "== installing ${packages[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${packages[@]}" >/dev/null
  # We start our own redis-server processes; the distribution's service is not needed.
  $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
# The quota limiter's scripts use EXPIRE's NX and GT options, which came with Redis 7.
redis_bin=$(command -v redis-server || echo /usr/bin/redis-server)
redis_version=$("$redis_bin" --version | sed -n 's/.* v=\([0-9.]*\).*/\1/p')
if [ "${redis_version%%.*}" -lt 7 ] 2>/dev/null || [ -z "$redis_version" ]; then
  echo "redis-server ${redis_version:-of unknown version} is too old: Redis 7 or later is needed" >&2
  exit 1
fi
if ! venv_ok; then
  echo "== creating .venv"
  "$PYTHON" -m venv --clear .venv
fi
stamp=.venv/.mvpipe-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "== installing mvpipe and its dev tools into .venv"
  log=$(mktemp)
  if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e '.[dev]'; } >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" | tail -40; rm -f "$log"; exit 1
  fi
  rm -f "$log"
  # librosa compiles its numba kernels on first use and caches them in .venv: do it once here,
  # so the first worker (and the first demo) does not spend half a minute compiling.
  echo "== compiling song analysis (once)"
  .venv/bin/python -c "from mvpipe.media.analysis import warm; warm()"
  touch "$stamp"
fi
