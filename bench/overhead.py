"""Orchestration overhead: the full pipeline at latency 0 against a bare Celery chord.

    python bench/overhead.py [--scenes 500 --concurrency 2]
    python bench/overhead.py --output-size 64x36 --duration 1   # without most of the encode
    python bench/overhead.py --pool threads --concurrency 8 --latency 2

Beside the throughput ratio: CPU seconds (user + sys) of each worker's process tree per scene
and per no-op task, measured over the same runs (the state server, Redis and this process are
not in the tree); target <= 4x. Both are steady-state figures: each worker first runs one
unmeasured project (or task) and the measure starts once its tree is idle, so a pool process's
start-up (a media worker warms song analysis, ~3 s of CPU per process, after the worker says
it is ready) and first-task imports are not counted as per-scene work.

    BENCH_PROFILE=py-spy python bench/overhead.py --output-size 64x36 --duration 1
        # also samples the pipeline worker's tree over the measured run and prints its CPU
        # by component (needs py-spy on PATH; BENCH_PROFILE_RAW=file keeps the raw stacks)

Same Redis, same worker settings (prefork, acks_late, prefetch 1, JSON). The pipeline does real
work per scene: a lease transaction, the operation id write, an S3 upload of a cached render,
the completing write, plus polls; the bare chord does nothing at all.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import site
import time
from pathlib import Path

from common import bench_stack, record, settle, summary, table, tree_cpu_seconds, warm_up, workers
from cpuprofile import WAITING, components, sampled

from mvpipe import api


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenes", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--pool", default="prefork", help="the pipeline workers' -P")
    parser.add_argument("--latency", default="0", help="the local provider's job seconds")
    parser.add_argument("--output-size", default="1280x720", help="the cut's output (WxH)")
    parser.add_argument(
        "--duration", type=int, default=8, help="scene seconds (the cut encodes all of them)"
    )
    args = parser.parse_args()
    n = args.scenes
    settings = {
        "local_latency": args.latency,
        "local_max_concurrent": "10000",
        "provider_concurrency": "10000",
        "local_clip_seconds": "0.5",
        "poll_seconds": "0.05",
        "output_size": args.output_size,
    }
    with bench_stack(**settings) as (stack, workdir):
        worker = workers(stack, workdir, args.concurrency, pool=args.pool)
        scenes = [{"prompt": "cached render", "duration_seconds": args.duration}] * n
        project_id = api.create_project("Overhead", "bench", scenes=scenes)
        warm_up()
        settle(worker.proc.pid)
        profiling = os.environ.get("BENCH_PROFILE") == "py-spy"
        samples = Path(os.environ.get("BENCH_PROFILE_RAW") or workdir / "worker.pyspy")
        with sampled(worker.proc.pid, samples) if profiling else contextlib.nullcontext():
            cpu_before, started = tree_cpu_seconds(worker.proc.pid), time.monotonic()
            final = api.run_project(project_id).get(timeout=3600)
            ours = time.monotonic() - started
            ours_cpu = tree_cpu_seconds(worker.proc.pid) - cpu_before
        by_component = _by_component(samples, ours_cpu / n) if profiling else ""
        assert final["status"] == "completed", final
        worker.stop()

        from blocking import noop
        from celery import chord

        bare_worker = workers(stack, workdir, args.concurrency, app="blocking")
        chord(noop.si() for _ in range(2 * args.concurrency))(noop.si()).get(timeout=600)
        settle(bare_worker.proc.pid)
        cpu_before, started = tree_cpu_seconds(bare_worker.proc.pid), time.monotonic()
        chord(noop.si() for _ in range(n))(noop.si()).get(timeout=3600)
        bare = time.monotonic() - started
        bare_cpu = tree_cpu_seconds(bare_worker.proc.pid) - cpu_before
        bare_worker.stop()

        # Where the time goes in one process: the pipeline's step for a batch of scenes.
        profile = _profile_steps(min(n, 100), args.duration)
    rows = [
        ("scenes", f"{n} of {args.duration} s, cut to {args.output_size}"),
        (
            f"mvpipe full pipeline (-P {args.pool}, latency {args.latency} s)",
            f"{ours:.1f} s = {n / ours:.1f} scenes/s",
        ),
        ("bare Celery chord of no-ops", f"{bare:.1f} s = {n / bare:.1f} tasks/s"),
        ("ratio (target >= 0.25)", f"{(n / ours) / (n / bare):.2f}"),
        ("worker CPU per scene (user + sys)", f"{ours_cpu / n * 1000:.1f} ms"),
        ("worker CPU per no-op chord task", f"{bare_cpu / n * 1000:.1f} ms"),
        ("CPU ratio (target <= 4)", f"{ours_cpu / bare_cpu:.2f}"),
    ]
    record(
        table("Orchestration overhead (latency 0)", rows, ("measure", "value"))
        + by_component
        + "\n\n"
        + profile
    )
    ratio = (n / ours) / (n / bare)
    # The scenes' length and the cut's size name the run: the cut's encode is media work that
    # grows with both (at 8 s of 1280x720 it is most of a scene's CPU), the rest is ours.
    sizes = f"N={n}, C={args.concurrency}, {args.duration} s scenes cut to {args.output_size}"
    summary(
        f"full pipeline / bare Celery chord throughput (latency 0, {sizes})",
        f"{ratio:.2f} ({n / ours:.1f} scenes/s vs {n / bare:.1f} tasks/s)",
        ">= 0.25",
        ratio >= 0.25,
    )
    summary(
        f"worker CPU per scene / per bare chord task (latency 0, {sizes})",
        f"{ours_cpu / bare_cpu:.2f}x ({ours_cpu / n * 1000:.1f} vs {bare_cpu / n * 1000:.1f} ms)",
        "<= 4",
        ours_cpu <= 4 * bare_cpu,
    )


def _by_component(samples: Path, cpu_per_scene: float) -> str:
    """The pipeline worker's CPU per scene by component (py-spy samples' shares of it)."""
    rows = [
        (name, f"{share * 100:.1f} %", f"{share * cpu_per_scene * 1000:.2f} ms", str(count))
        if name != WAITING
        else (name, "", "", str(count))
        for name, share, count in components(samples)
    ]
    header = ("component", "share", "per scene", "samples")
    return "\n\n" + table("Pipeline worker CPU by component (py-spy)", rows, header)


def _profile_steps(count: int, duration: int) -> str:
    """Profile the generate steps of `count` scenes run inline (no broker), top functions."""
    import uuid

    from mvpipe.deps import get_context
    from mvpipe.models import ProjectStatus
    from mvpipe.pipeline.generate import SceneJob
    from mvpipe.pipeline.steps import Next

    ctx = get_context()
    project_id = api.create_project(
        "Profile", "bench", scenes=[{"prompt": "p", "duration_seconds": duration}] * count
    )
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
    # Paths relative to the checkout and the installed packages: the figures name no machine.
    text = out.getvalue().replace(site.getsitepackages()[0] + "/", "site-packages/")
    text = text.replace(str(Path(__file__).resolve().parent.parent) + "/", "")
    lines = [x for x in text.splitlines() if x.strip()][:22]
    return (
        "Profile of the generate steps, inline (cumulative):\n\n```\n" + "\n".join(lines) + "\n```"
    )


if __name__ == "__main__":
    main()
