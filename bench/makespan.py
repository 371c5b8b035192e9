"""Makespan against the provider-quota bound, and against a blocking baseline.

    python bench/makespan.py [--scenes 200 --latency 5 --quota 20 --concurrency 2]

Our run: N scenes, latency L, quota P, C worker processes; bound = ceil(N/P) * L.
Baseline: tasks that sleep while the provider works; measured on --baseline-scenes (its time is
linear by construction: ceil(n/C) * L) and scaled to N, both figures printed.
"""

from __future__ import annotations

import argparse
import math
import time
import uuid

from common import bench_stack, record, table, wait_all, workers

from mvpipe import api


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--latency", type=float, default=5.0)
    parser.add_argument("--quota", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--baseline-scenes", type=int, default=40)
    args = parser.parse_args()
    n, latency, quota, conc = args.scenes, args.latency, args.quota, args.concurrency
    settings = {
        "local_latency": str(latency),
        "local_max_concurrent": str(quota),
        "provider_concurrency": str(quota),
        "local_clip_seconds": "1",
    }
    with bench_stack(**settings) as (stack, workdir):
        worker = workers(stack, workdir, conc)
        scenes = [{"prompt": f"scene {i}"} for i in range(1, n + 1)]
        project_id = api.create_project("Makespan", "bench", scenes=scenes)
        started = time.monotonic()
        api.run_project(project_id)
        wait_all([project_id], timeout=3600)
        ours = time.monotonic() - started
        view = api.get_project(project_id)
        assert view.completed_scenes == n, view.status
        worker.stop()

        from blocking import blocking_scene
        from celery import group

        baseline_worker = workers(stack, workdir, conc, app="blocking")
        b = args.baseline_scenes
        started = time.monotonic()
        group(blocking_scene.s(str(uuid.uuid4()), i) for i in range(1, b + 1)).apply_async().get(
            timeout=3600
        )
        baseline_measured = time.monotonic() - started
        baseline_worker.stop()
    bound = math.ceil(n / quota) * latency
    baseline_scaled = baseline_measured * math.ceil(n / conc) / math.ceil(b / conc)
    rows = [
        ("scenes / latency / quota / workers", f"{n} / {latency:g} s / {quota} / {conc}"),
        ("quota bound ceil(N/P)*L", f"{bound:.1f} s"),
        ("mvpipe makespan", f"{ours:.1f} s"),
        ("makespan / bound (target <= 1.10)", f"{ours / bound:.2f}"),
        (f"blocking baseline, measured on {b} scenes", f"{baseline_measured:.1f} s"),
        (f"blocking baseline scaled to {n} scenes", f"{baseline_scaled:.1f} s"),
        ("speed-up over blocking (target >= 5x)", f"{baseline_scaled / ours:.1f}x"),
    ]
    record(table("Makespan vs quota bound", rows, ("measure", "value")))


if __name__ == "__main__":
    main()
