"""Shared plumbing for the benchmarks: a private local stack, worker processes, result tables.

`record` appends a table to BENCHMARKS.md; with `BENCH_NO_RECORD=1` in the environment it only
prints (smoke runs, and `bench/all.py`, which writes BENCHMARKS.md itself from one run). `summary`
prints one figure for the summary table that `bench/all.py` collects.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from countingproxy import CountingProxy  # noqa: E402

from mvpipe.deps import reset_context  # noqa: E402
from mvpipe.devstack.localstack import (  # noqa: E402
    LocalStack,
    Service,
    start_control_worker,
    start_worker,
)


@contextlib.contextmanager
def bench_stack(**settings: str) -> Iterator[tuple[LocalStack, Path]]:
    """Redis + state server for one benchmark; this process is pointed at them too."""
    workdir = Path(tempfile.mkdtemp(prefix="mvpipe-bench-"))
    stack = LocalStack(workdir)
    with stack.running(), _removed_after(workdir):
        env = {
            **stack.env,
            "MVPIPE_TABLE": "mvpipe-bench",
            "MVPIPE_BUCKET": "mvpipe-bench",
            "MVPIPE_LOCAL_STATE": str(workdir / "local.sqlite3"),
            "MVPIPE_LOCAL_LEDGER": str(workdir / "ledger.jsonl"),
            **{f"MVPIPE_{k.upper()}": v for k, v in settings.items()},
        }
        os.environ.update(env)
        reset_context()
        stack.env = env
        yield stack, workdir


@contextlib.contextmanager
def _removed_after(path: Path) -> Iterator[None]:
    try:
        yield
    finally:
        shutil.rmtree(path, ignore_errors=True)


def workers(
    stack: LocalStack,
    workdir: Path,
    concurrency: int,
    app: str = "mvpipe.celery_app",
    pool: str = "prefork",
    **extra_env: str,
) -> Service:
    env = stack.child_env(PYTHONPATH=f"{ROOT}:{ROOT / 'bench'}", **extra_env)
    if app == "mvpipe.celery_app":
        return start_worker(
            env, workdir / "worker.log", concurrency=concurrency, loglevel="INFO", pool=pool
        )
    from mvpipe.devstack.localstack import _spawn, wait_until

    argv = [sys.executable, "-m", "celery", "-A", app, "worker", "-c", str(concurrency),
            "-P", "prefork", "-l", "INFO", "--without-mingle", "--without-gossip",
            "-Q", "bench"]  # fmt: skip
    log = workdir / f"{app}.log"
    proc = _spawn(app, argv, log, env=env)
    service = Service(app, proc, log)
    wait_until(lambda: " ready." in service.log_text(), 120, app, proc)
    return service


def proxied(stack: LocalStack, delay: float = 0.0) -> CountingProxy:
    """A `CountingProxy` (holding each request `delay` seconds) between the state server and
    every process started from here on, this one included."""
    proxy = CountingProxy(int(stack.env["MVPIPE_DYNAMODB_ENDPOINT"].rsplit(":", 1)[1]), delay)
    stack.env["MVPIPE_DYNAMODB_ENDPOINT"] = stack.env["MVPIPE_S3_ENDPOINT"] = proxy.url
    os.environ.update(stack.env)
    reset_context()
    return proxy


def control_worker(stack: LocalStack, workdir: Path, **extra_env: str) -> Service:
    """The local stack's control worker (`localstack.CONTROL_QUEUES`), beside `workers`."""
    env = stack.child_env(PYTHONPATH=f"{ROOT}:{ROOT / 'bench'}", **extra_env)
    return start_control_worker(env, workdir / "control.log")


def tree_cpu_seconds(pid: int) -> float:
    """User + sys CPU of a process and its descendants (live ones, and reaped ones through
    their parent's cutime/cstime), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
            for task in Path(f"/proc/{current}/task").iterdir():
                stack.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / tick


def settle(pid: int, timeout: float = 300) -> None:
    """Wait until the process tree is idle (under 2 % of a core over half a second): the
    start-up work a worker does after it says it is ready is over."""
    deadline = time.monotonic() + timeout
    before = tree_cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = tree_cpu_seconds(pid)
        if now - before < 0.01:
            return
        before = now
    raise TimeoutError(f"worker {pid} still busy after {timeout} s")


def wait_all(project_ids: list[str], timeout: float) -> float:
    """Seconds until every project's run is over (polled cheaply, a project at a time)."""
    from mvpipe import api

    start = time.monotonic()
    for project_id in project_ids:
        remaining = max(1.0, timeout - (time.monotonic() - start))
        api.wait_project(project_id, timeout=remaining, interval=0.5)
    return time.monotonic() - start


def warm_up() -> None:
    """Run a one-scene project, unmeasured: fresh workers' first tasks import, connect and
    warm up, which a service's long-running workers did long ago."""
    from mvpipe import api

    project_id = api.create_project("Warm-up", "bench", scenes=[{"prompt": "warm-up"}])
    api.run_project(project_id)
    api.wait_project(project_id, timeout=600, interval=0.2)


def table(title: str, rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    out = [f"### {title}", "", line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def machine() -> str:
    return f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"


def record(text: str) -> None:
    """Print a result and append it to BENCHMARKS.md with the machine and the date (unless
    `BENCH_NO_RECORD=1`: then print only)."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = f"\n{text}\n\n_{stamp}; {machine()}_\n"
    print(block, flush=True)
    if os.environ.get("BENCH_NO_RECORD") == "1":
        return
    with open(ROOT / "BENCHMARKS.md", "a", encoding="utf-8") as handle:
        handle.write(block)


#: The prefix of a summary line on a benchmark's standard output.
SUMMARY_TAG = "BENCH-SUMMARY "


def summary(measure: str, value: str, target: str = "", met: bool | None = None) -> None:
    """One row of BENCHMARKS.md's summary table (`bench/all.py` collects these lines): what was
    measured with its sizes, the figure, the target, and whether the figure meets it."""
    row = {"measure": measure, "value": value, "target": target, "met": met}
    print(SUMMARY_TAG + json.dumps(row), flush=True)
