"""Makespan against the provider-quota bound, and against a blocking baseline.

    python bench/makespan.py [--scenes 200 --latency 5 --quota 20 --concurrency 2 --size 1280x720]

Our run: N scenes, latency L, quota P, C worker processes; bound = ceil(N/P) * L. A one-scene
project runs first, unmeasured, so that the workers' first-task costs are not counted. The
makespan runs until the final video is recorded (every project is cut and assembled); its
generation phase, cut tail and assembly come from the workers' log lines (`phases.py`).
`--size` is the cut's output: at a small size (160x90) the cut stays in the loop but its encode
is cheap, so the generation phase measures the orchestration; at 1280x720 on two worker
processes every scene's x264 encode competes with generation for the same CPU.
Baseline: tasks that sleep while the provider works; measured on --baseline-scenes (its time is
linear by construction: ceil(n/C) * L) and scaled to N, both figures printed;
`--baseline-scenes 0` skips it.
"""

from __future__ import annotations

import argparse
import math
import shutil
import time
import uuid
from pathlib import Path

from common import bench_stack, record, summary, table, warm_up, workers
from phases import Phases

from mvpipe import api
from mvpipe.devstack.localstack import LocalStack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--latency", type=float, default=5.0)
    parser.add_argument("--quota", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--baseline-scenes", type=int, default=40)
    parser.add_argument("--size", default="1280x720", help="the cut's output (WxH)")
    parser.add_argument("--keep-log", type=Path, help="copy the workers' log here (a timeline)")
    args = parser.parse_args()
    n, latency, quota, conc = args.scenes, args.latency, args.quota, args.concurrency
    settings = {
        "local_latency": str(latency),
        "local_max_concurrent": str(quota),
        "provider_concurrency": str(quota),
        "local_clip_seconds": "1",
        "output_size": args.size,
    }
    with bench_stack(**settings) as (stack, workdir):
        worker = workers(stack, workdir, conc)
        warm_up()
        scenes = [{"prompt": f"scene {i}"} for i in range(1, n + 1)]
        project_id = api.create_project("Makespan", "bench", scenes=scenes)
        started_at = time.time()
        started = time.monotonic()
        api.run_project(project_id)
        api.wait_project(project_id, timeout=3600, interval=0.1)
        ours = time.monotonic() - started
        view = api.get_project(project_id)
        assert view.completed_scenes == n, view.status
        worker.stop()
        phases = Phases.of(worker.log_path, project_id, n, started_at)
        if args.keep_log:
            shutil.copyfile(worker.log_path, args.keep_log)
            print(f"workers' log kept in {args.keep_log}; run started at {started_at:.3f}")
        b = args.baseline_scenes
        baseline_measured = _baseline(stack, workdir, conc, b) if b > 0 else None
    bound = math.ceil(n / quota) * latency
    rows = [
        (
            "scenes / latency / quota / workers / output",
            f"{n} / {latency:g} s / {quota} / {conc} / {args.size}",
        ),
        ("quota bound ceil(N/P)*L", f"{bound:.1f} s"),
        ("mvpipe makespan", f"{ours:.1f} s"),
        ("makespan / bound", f"{ours / bound:.2f}"),
        *phases.rows(ours, bound),
    ]
    sizes = f"N={n}, L={latency:g} s, P={quota}, C={conc}, {args.size}"
    if baseline_measured is not None:
        baseline_scaled = baseline_measured * math.ceil(n / conc) / math.ceil(b / conc)
        rows += [
            (f"blocking baseline, measured on {b} scenes", f"{baseline_measured:.1f} s"),
            (f"blocking baseline scaled to {n} scenes", f"{baseline_scaled:.1f} s"),
            ("speed-up over blocking (target >= 5x)", f"{baseline_scaled / ours:.1f}x"),
        ]
    record(table("Makespan vs quota bound", rows, ("measure", "value")))
    summary(
        f"generation phase / quota bound ({sizes})",
        f"{phases.generated / bound:.2f}x ({phases.generated:.1f} s vs {bound:.1f} s)",
        "<= 1.15 (issue 15; 1.10 in issue 7)",
        phases.generated / bound <= 1.15,
    )
    summary(
        f"makespan with cutting and assembly / quota bound ({sizes})",
        f"{ours / bound:.2f}x ({ours:.1f} s); {phases.shares(ours)}",
        "reported (issue 11)",
    )
    if baseline_measured is not None:
        summary(
            f"speed-up over a blocking baseline ({sizes}; baseline on {b} scenes, scaled)",
            f"{baseline_scaled / ours:.1f}x",
            ">= 5x",
            baseline_scaled / ours >= 5,
        )


def _baseline(stack: LocalStack, workdir: Path, conc: int, scenes: int) -> float:
    """Seconds for `scenes` tasks that hold their worker slot while the provider works."""
    from blocking import blocking_scene
    from celery import group

    baseline_worker = workers(stack, workdir, conc, app="blocking")
    started = time.monotonic()
    jobs = group(blocking_scene.s(str(uuid.uuid4()), i) for i in range(1, scenes + 1))
    jobs.apply_async().get(timeout=3600)
    measured = time.monotonic() - started
    baseline_worker.stop()
    return measured


if __name__ == "__main__":
    main()
