"""Load: many projects enqueued at once with beat running; every one completes, none paid twice.

    python bench/load.py [--projects 200 --scenes 5 --quota 20 --latency 2 --reconcile 5]

Reports the wall time until every run is over, paid-twice scenes (from the local provider's
ledger), invariant violations, and the duration of every reconcile pass beat ran meanwhile (from
the workers' "reconcile pass examined K of N projects in S s" log lines). Prints; records nothing.
"""

from __future__ import annotations

import argparse
import ast
import re
import statistics
import time
from pathlib import Path

from common import bench_stack, summary, wait_all, workers

from mvpipe import api
from mvpipe.deps import get_context
from mvpipe.devstack.drills import paid_generations
from mvpipe.devstack.invariants import violations
from mvpipe.devstack.localstack import start_beat
from mvpipe.models import ProjectStatus

PASS = re.compile(
    r"reconcile pass examined (\d+) of (\d+) projects in ([\d.]+) s \(full sweep: (\w+)"
)

REPAIRED = re.compile(r"reconcile repaired (\{.*\})")


def passes(log: Path) -> list[tuple[int, int, float, bool]]:
    """(examined, listed, seconds, full sweep) of each pass."""
    return [
        (int(n), int(listed), float(s), full == "True")
        for n, listed, s, full in PASS.findall(log.read_text(errors="replace"))
    ]


def repairs(log: Path) -> dict[str, int]:
    """What the passes repaired, summed by kind (a load with no crash should need little)."""
    found: dict[str, int] = {}
    for line in REPAIRED.findall(log.read_text(errors="replace")):
        for kind, count in ast.literal_eval(line).items():
            if kind != "total" and count:
                found[kind] = found.get(kind, 0) + count
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--projects", type=int, default=200)
    parser.add_argument("--scenes", type=int, default=5)
    parser.add_argument("--quota", type=int, default=20)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--reconcile", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    settings = {
        "local_latency": str(args.latency),
        "local_max_concurrent": str(args.quota),
        "provider_concurrency": str(args.quota),
        "local_clip_seconds": "0.5",
        "reconcile_seconds": str(args.reconcile),
    }
    with bench_stack(**settings) as (stack, workdir):
        worker = workers(stack, workdir, args.concurrency)
        beat = start_beat(
            stack.child_env(PYTHONPATH=str(Path(__file__).resolve().parent.parent)),
            workdir / "beat.log",
        )
        try:
            scenes = [{"prompt": f"scene {i}"} for i in range(1, args.scenes + 1)]
            ids = [
                api.create_project(f"Load {n}", "bench", scenes=scenes)
                for n in range(args.projects)
            ]
            started = time.monotonic()
            for project_id in ids:
                api.run_project(project_id)
            enqueued = time.monotonic() - started
            wall = wait_all(ids, timeout=3600) + enqueued
        finally:
            beat.stop()
            worker.stop()
        ctx = get_context()
        ledger = Path(stack.env["MVPIPE_LOCAL_LEDGER"])
        statuses = [api.get_project(p).status for p in ids]
        paid = [paid_generations(ledger, p) for p in ids]
        twice = sum(1 for counts in paid for c in counts.values() if c > 1)
        unpaid = sum(args.scenes - len(counts) for counts in paid)
        broken = {p: v for p in ids if (v := violations(ctx, p))}
        seen = passes(worker.log_path)
        repaired = repairs(worker.log_path)
    completed = statuses.count(ProjectStatus.COMPLETED)
    durations = [s for _, _, s, _ in seen]
    print(f"{args.projects} projects x {args.scenes} scenes, quota {args.quota}, "
          f"latency {args.latency} s, {args.concurrency} worker processes, "
          f"reconcile every {args.reconcile} s")  # fmt: skip
    print(f"enqueued in {enqueued:.1f} s; all runs over after {wall:.1f} s")
    print(f"completed {completed}/{len(ids)}; scenes paid twice {twice}; never paid {unpaid}; "
          f"projects with invariant violations {len(broken)}")  # fmt: skip
    for project_id, found in list(broken.items())[:5]:
        print(f"  {project_id}: {found}")
    if durations:
        most = max(n for n, _, _, _ in seen)
        median = statistics.median(durations)
        busy = sum(durations)
        print(f"reconcile passes {len(seen)}: examined max {most} projects; "
              f"duration median {median:.3f} s, max {max(durations):.3f} s, "
              f"sum {busy:.1f} s ({busy / wall:.0%} of one process over the run)")  # fmt: skip
        print(f"  repaired during the load: {repaired or 'nothing'}")
        print("  " + ", ".join(f"{n}/{listed}p {s:.2f}s{' (full)' if f else ''}"
                               for n, listed, s, f in seen))  # fmt: skip
    sizes = f"{args.projects} projects x {args.scenes} scenes, P={args.quota}, L={args.latency:g} s"
    summary(
        f"load with beat ({sizes}): completed, paid twice, never paid, violations",
        f"{completed}/{len(ids)}, {twice}, {unpaid}, {len(broken)} in {wall:.1f} s",
        "all, 0, 0, 0",
        completed == len(ids) and twice == unpaid == len(broken) == 0,
    )
    if durations:
        summary(
            "reconcile pass during the load: median / max duration",
            f"{statistics.median(durations):.3f} s / {max(durations):.3f} s ({len(seen)} passes)",
            "reported (issue 14)",
        )


if __name__ == "__main__":
    main()
