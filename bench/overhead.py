"""Orchestration overhead: the full pipeline at latency 0 against a bare Celery chord.

    python bench/overhead.py [--scenes 500 --concurrency 2]

Same Redis, same worker settings (prefork, acks_late, prefetch 1, JSON). The pipeline does real
work per scene: a lease transaction, the operation id write, an S3 upload of a cached render,
the completing write, plus polls; the bare chord does nothing at all.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

from common import bench_stack, record, summary, table, workers

from mvpipe import api


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenes", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    n = args.scenes
    settings = {
        "local_latency": "0",
        "local_max_concurrent": "10000",
        "provider_concurrency": "10000",
        "local_clip_seconds": "0.5",
        "poll_seconds": "0.05",
    }
    with bench_stack(**settings) as (stack, workdir):
        worker = workers(stack, workdir, args.concurrency)
        scenes = [{"prompt": "cached render"} for _ in range(n)]
        project_id = api.create_project("Overhead", "bench", scenes=scenes)
        started = time.monotonic()
        final = api.run_project(project_id).get(timeout=3600)
        ours = time.monotonic() - started
        assert final["status"] == "completed", final
        worker.stop()

        from blocking import noop
        from celery import chord

        bare_worker = workers(stack, workdir, args.concurrency, app="blocking")
        started = time.monotonic()
        chord(noop.si() for _ in range(n))(noop.si()).get(timeout=3600)
        bare = time.monotonic() - started
        bare_worker.stop()

        # Where the time goes in one process: the pipeline's step for a batch of scenes.
        profile = _profile_steps(min(n, 100))
    rows = [
        ("scenes", str(n)),
        ("mvpipe full pipeline", f"{ours:.1f} s = {n / ours:.1f} scenes/s"),
        ("bare Celery chord of no-ops", f"{bare:.1f} s = {n / bare:.1f} tasks/s"),
        ("ratio (target >= 0.25)", f"{(n / ours) / (n / bare):.2f}"),
    ]
    record(
        table("Orchestration overhead (latency 0)", rows, ("measure", "value")) + "\n\n" + profile
    )
    ratio = (n / ours) / (n / bare)
    summary(
        f"full pipeline / bare Celery chord throughput (latency 0, N={n}, C={args.concurrency})",
        f"{ratio:.2f} ({n / ours:.1f} scenes/s vs {n / bare:.1f} tasks/s)",
        ">= 0.25",
        ratio >= 0.25,
    )


def _profile_steps(count: int) -> str:
    """Profile the generate steps of `count` scenes run inline (no broker), top functions."""
    import uuid

    from mvpipe.deps import get_context
    from mvpipe.models import ProjectStatus
    from mvpipe.pipeline.generate import SceneJob
    from mvpipe.pipeline.steps import Next

    ctx = get_context()
    project_id = api.create_project("Profile", "bench", scenes=[{"prompt": "p"}] * count)
    run_id = str(uuid.uuid4())
    ctx.projects.win_run(project_id, run_id, ProjectStatus.PROCESSING)
    profiler = cProfile.Profile()
    profiler.enable()
    for sequence in range(1, count + 1):
        step = SceneJob(ctx, project_id, sequence, run_id, "local").step()
        while step.next != Next.DONE:
            step = SceneJob(ctx, project_id, sequence, run_id, "local").step(**step.carry)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(12)
    lines = [x for x in out.getvalue().splitlines() if x.strip()][:22]
    return (
        "Profile of the generate steps, inline (cumulative):\n\n```\n" + "\n".join(lines) + "\n```"
    )


if __name__ == "__main__":
    main()
