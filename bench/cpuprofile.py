"""Where a worker's CPU goes: py-spy samples of its process tree, summed by component.

`sampled(pid, path)` records the tree (pool processes included) while its block runs, with
py-spy's default of leaving out idle threads, so the samples follow CPU time; `components(path)`
turns the recording into rows of (component, share, samples). A sample counts for the most
specific component on its stack: the media code and the local provider first (whatever they
call), then the innermost botocore or HTTP frame, pynamodb, redis-py (by our caller), the
collector, and otherwise the innermost of JSON, logging, our code or Celery/kombu/billiard.
Samples of the worker's main process (the consumer: broker I/O, events, timers) are listed
apart. Benchmarks only: nothing in mvpipe knows about it.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

_BOTOCORE = (
    ("botocore: sign", r"botocore/(auth|signers)\.py"),
    ("botocore: serialize + validate", r"botocore/(serialize|validate)\.py"),
    ("botocore: parse", r"botocore/(parsers|response)\.py"),
    (
        "HTTP (urllib3, http.client, socket)",
        r"^(urllib3/|http/client|email/|socket\.py|botocore/(httpsession|awsrequest))",
    ),
    ("botocore: event hooks, handlers", r"botocore/(hooks|handlers|utils|retries/|retryhandler)"),
    ("botocore: endpoint, client, other", r"^(botocore|boto3)/"),
)
_FRAME_FILE = re.compile(r"\(([^:()]+):\d+\)$")
#: Innermost frames that wait for a socket: py-spy counts some of that time as active (its
#: samples came to ~1.6x the tree's CPU time), so these are left out of the shares.
_WAITING = re.compile(
    r"^(SocketIO\.readinto|SocketBuffer\._read_from_socket|poll_wait_for_socket|_epoll\.poll) "
)
#: The row that counts them.
WAITING = "(left out: waiting in a socket read or poll)"


@contextlib.contextmanager
def sampled(pid: int, path: Path, rate: int = 250) -> Iterator[None]:
    """Sample `pid` and its children with py-spy while the block runs, into `path` (raw)."""
    spy = shutil.which("py-spy")
    if spy is None:
        raise RuntimeError("BENCH_PROFILE=py-spy needs py-spy on PATH (pip install py-spy)")
    argv = [spy, "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
            "--rate", str(rate), "--format", "raw", "--output", str(path)]  # fmt: skip
    recorder = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes what it has and exits
        recorder.wait(timeout=120)


def components(path: Path) -> list[tuple[str, float, int]]:
    """(component, share of the samples not waiting, samples), largest first; last, the
    `WAITING` row."""
    counts: Counter[str] = Counter()
    waiting = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        if _WAITING.match(frames[-1]):
            waiting += int(n)
            continue
        processes = sum(1 for f in frames if f.startswith("process "))
        files = [m.group(1) for f in frames if (m := _FRAME_FILE.search(f))]
        where = "main process: " if processes == 1 else ""
        counts[where + component(files)] += int(n)
    total = sum(counts.values()) or 1
    return [(name, n / total, n) for name, n in counts.most_common()] + [(WAITING, 0.0, waiting)]


def component(files: list[str]) -> str:
    """The component one stack (its frames' files, outermost first) is spent in."""
    if any("mvpipe/media/" in f for f in files):
        return "PyAV cut and probe (mvpipe/media)"
    if any(re.search(r"mvpipe/providers/(local|render|local_lipsync)\.py", f) for f in files):
        return "local provider (its SQLite job store, render cache)"
    service = "S3" if any("mvpipe/store/clips.py" in f for f in files) else "DynamoDB"
    for file in reversed(files):
        for name, pattern in _BOTOCORE:
            if re.search(pattern, file):
                return f"{name} [{service}]"
    if any(f.startswith("pynamodb/") for f in files):
        return "pynamodb (models, attributes, expressions)"
    if any(f.startswith("redis/") for f in files):
        if any("mvpipe/providers/limiter.py" in f for f in files):
            return "redis-py: the limiter's scripts"
        if any(f.startswith("mvpipe/") for f in files):
            return "redis-py: our other calls (run board, marks, cancel)"
        return "redis-py: Celery/kombu"
    if any(f.startswith("gc") or "mvpipe/celery_app.py" in f for f in files):
        return "garbage collection (celery_app._collect_cycles)"
    for file in reversed(files):
        if file.startswith(("json/", "kombu/utils/json")):
            return "JSON"
        if file.startswith("logging/"):
            return "logging"
        if file.startswith("mvpipe/"):
            return "our code (mvpipe)"
        if re.match(r"(kombu|celery|billiard|amqp|vine|click)/", file):
            return "Celery/kombu/billiard"
    return "other: " + (files[-1] if files else "no Python frame")
