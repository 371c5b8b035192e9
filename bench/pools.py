"""Scenes per second by the pool of the worker that runs the video queue (issue 15).

    python bench/pools.py [--scenes 160 --latencies 0 2 --size 160x90]

The same project (N scenes of 1 s, cut to a small size so the cut stays in the loop but cheap)
runs on the local stack's layout: the worker on every queue, here on each pool in turn (prefork
-c 2, the stack's default, then Celery's threads pool with -c 8 and -c 20), and the one-process
control worker (prefork, `mvpipe.plan,mvpipe.media`) beside it. The generate steps wait on the
provider and the store, not on our CPU, so threads can overlap what prefork's two processes
cannot. Each pool runs at every local latency (`MVPIPE_LOCAL_LATENCY`); the provider quota is
unlimited, so the pool, not the quota, is the bound (`--quota P`: the makespan is also shown
against the quota bound ceil(N/P) * L, as in makespan.py). The state server runs on the same
cores and answers in well under a millisecond: a store call's wait is CPU spent elsewhere on
the machine, where a remote DynamoDB's would be a network round trip. `--store-delay MS` holds
every store request that long in a proxy (`countingproxy.py`), to show the pools with one.

Per run: scenes/s from `run_project` to the project's completion (the final video recorded) and
the CPU (user + sys) of both workers' process trees per scene. Each pair of workers is fresh,
runs one unmeasured project first and is idle before the measure starts (as in overhead.py).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common import (
    bench_stack,
    control_worker,
    proxied,
    record,
    settle,
    summary,
    table,
    tree_cpu_seconds,
    warm_up,
    workers,
)

from mvpipe import api
from mvpipe.devstack.localstack import LocalStack

#: (pool, concurrency) of the worker on every queue; the first is the local stack's default.
POOLS = (("prefork", 2), ("threads", 8), ("threads", 20))


@dataclass(frozen=True)
class Run:
    pool: str
    concurrency: int
    latency: float
    seconds: float
    cpu: float

    @property
    def label(self) -> str:
        return f"{self.pool} -c {self.concurrency}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenes", type=int, default=160)
    parser.add_argument("--latencies", type=float, nargs="+", default=[0.0, 2.0])
    parser.add_argument("--size", default="160x90", help="the cut's output (WxH)")
    parser.add_argument(
        "--quota", type=int, default=10000, help="provider quota (default: no bound)"
    )
    parser.add_argument(
        "--store-delay",
        type=float,
        default=0.0,
        help="ms added to every DynamoDB/S3 request (a remote store's round trip)",
    )
    args = parser.parse_args()
    n = args.scenes
    settings = {
        "local_max_concurrent": str(args.quota),
        "provider_concurrency": str(args.quota),
        "local_clip_seconds": "0.5",
        "output_size": args.size,
        "warm_media": "0",  # no song here: no pool process warms song analysis
    }
    runs = []
    with bench_stack(**settings) as (stack, workdir):
        proxy = proxied(stack, args.store_delay / 1000) if args.store_delay else None
        try:
            for latency in args.latencies:
                for pool, concurrency in POOLS:
                    runs.append(measure(stack, workdir, pool, concurrency, latency, n))
        finally:
            if proxy is not None:
                proxy.stop()
    setup = f"{n} scenes of 1 s cut to {args.size}" + (
        f", {args.store_delay:g} ms added to each store call" if args.store_delay else ""
    )
    report(runs, n, setup, args.quota)


def measure(
    stack: LocalStack, workdir: Path, pool: str, concurrency: int, latency: float, n: int
) -> Run:
    env = {"MVPIPE_LOCAL_LATENCY": f"{latency:g}"}
    begun = time.monotonic()
    worker = workers(stack, workdir, concurrency, pool=pool, **env)
    try:
        control = control_worker(stack, workdir, **env)
    except BaseException:
        worker.stop()
        raise
    try:
        warm_up()
        for service in (worker, control):
            settle(service.proc.pid)
        scenes = [{"prompt": "cached render", "duration_seconds": 1}] * n
        project_id = api.create_project("Pools", "bench", scenes=scenes)
        cpu_before = sum(tree_cpu_seconds(s.proc.pid) for s in (worker, control))
        started = time.monotonic()
        api.run_project(project_id)
        view = api.wait_project(project_id, timeout=1800, interval=0.1)
        seconds = time.monotonic() - started
        cpu = sum(tree_cpu_seconds(s.proc.pid) for s in (worker, control)) - cpu_before
        assert view.completed_scenes == n and view.final_video_s3_key, view.status
    finally:
        worker.stop()
        control.stop()
    run = Run(pool, concurrency, latency, seconds, cpu)
    took = time.monotonic() - begun
    print(
        f"{run.label}, latency {latency:g} s: {n / seconds:.1f} scenes/s ({took:.0f} s)", flush=True
    )
    return run


def report(runs: list[Run], n: int, setup: str, quota: int) -> None:
    baseline = {r.latency: r for r in runs if (r.pool, r.concurrency) == POOLS[0]}
    bounded = quota < n  # the quota, not the pool, may be the bound: the makespan against it

    def row(r: Run) -> tuple[str, ...]:
        cells = (r.label, f"{r.latency:g} s", f"{r.seconds:.1f} s", f"{n / r.seconds:.1f}")
        cells += (f"{baseline[r.latency].seconds / r.seconds:.2f}x", f"{r.cpu / n * 1000:.0f} ms")
        if bounded:
            bound = math.ceil(n / quota) * r.latency
            cells += (f"{r.seconds / bound:.2f}x" if bound else "-",)
        return cells

    rows = [row(r) for r in runs]
    header = ("video worker's pool", "latency", "makespan", "scenes/s", "vs prefork", "CPU/scene")
    if bounded:
        header += (f"vs quota bound ceil(N/{quota})*L",)
    title = f"Scenes/s by the video worker's pool ({setup}; + control worker)"
    record(table(title, rows, header))
    at = " / ".join(f"{latency:g} s" for latency in sorted(baseline))
    summary(
        f"scenes/s by the video worker's pool at latency {at} ({setup})",
        per_pool(runs, lambda r: f"{n / r.seconds:.1f}"),
        "reported (issue 15)",
    )
    summary(
        f"workers' CPU per scene by the video worker's pool at latency {at} ({setup})",
        per_pool(runs, lambda r: f"{r.cpu / n * 1000:.0f} ms"),
        "reported (issue 15)",
    )


def per_pool(runs: list[Run], figure: Callable[[Run], str]) -> str:
    """ "prefork -c 2: a / b; threads -c 8: ..." with a figure per latency, in latency order."""
    cells = []
    for pool, concurrency in POOLS:
        mine = sorted(
            (r for r in runs if (r.pool, r.concurrency) == (pool, concurrency)),
            key=lambda r: r.latency,
        )
        cells.append(f"{pool} -c {concurrency}: " + " / ".join(figure(r) for r in mine))
    return "; ".join(cells)


if __name__ == "__main__":
    main()
