"""Fairness of the shared provider quota: small projects started behind a large one.

    python bench/fairness.py [--quota 8 --large 80 --small 2 --smalls 3 --latency 1
                              --size 320x180]

On one stack (same workers, same quota P, provider latency L):
1. Alone: after a one-scene warm-up (a fresh worker's first task imports and connects), each
   small project run by itself, then the large one by itself; their makespans.
2. Together: the large project starts first; once its jobs fill the quota, the small ones start
   at once. Each project's makespan is measured from its own start.

Reported: each small project's time beside the large one over the median of the small ones
alone (goal <= 1.5; the median, as the alone runs are the same work), every scene paid exactly
once (the local provider's ledger), and the large project's growth against its fair share.
Beside them, each small project's wait for its slots: from its start to the provider accepting
its last job (the ledger's stamps), the quota's part of its time apart from rendering, cutting
and assembly on the workers' CPU.

The sizes follow from the arithmetic of the rule (a freed slot goes to the waiting project with
the fewest jobs in flight): k small projects of s scenes all start in the first wave of freed
slots, as they would alone, only when P >= (k + 1) * s; with a smaller quota each small project's
share is P / (k + 1) slots and it needs several waves whatever the rule. Hence P = 8 for three
projects of 2 scenes, and a large project of 10 quotas. Even so a small project that arrives
just after the large one's wave started waits for that wave to free its slots (up to L), which
no rule that does not pre-empt running jobs can avoid: the table prints that floor beside it.
A small project alone takes about L plus a fixed overhead o, so the floor is about
(2L + o) / (L + o): under 1.5 only while L < o. Hence L = 1 s by default; at L = 2 s the goal
sits at the floor and the figure says little about the rule (first come, first served would
still show: the small projects would wait for the large one's 10 waves). P and L are kept low
enough that the quota, not the two worker processes, limits the throughput.

Every project is cut and assembled too, on the workers' CPU, whose queue (`mvpipe.media`) is
first come, first served: at 1280x720 two worker processes cut more slowly than a quota of 8
delivers clips at L = 1 s (8 a second), so the small projects' cuts would wait behind the large
one's and the figure would measure the workers' CPU, not the quota's sharing. Hence a small
output size by default; `--size 1280x720` shows the other case.

The workers are the local stack's: one on every queue (`--concurrency` processes) and a
one-process control worker on every queue but `mvpipe.video`, which holds no provider polls, so a
run's planning, finalize and assembly are not kept behind a wave of the large project's due polls
(`--no-control`: the single worker).

The large project's bound: the small projects' k * s jobs take that many slot-turns of L from
the quota, so the large one should finish no later than alone + ceil(k * s / P) * L.

3. Mid-run: a second large project, and k more small projects started half a job length after
   its third wave was accepted (`--arrive`, in job lengths): a newcomer in the large project's
   steady state, arriving mid-wave, waits on average L/2 for the wave's frees, not L. Its floor,
   alone + arrive * L, is printed beside it; this row is the one held to the 1.5 goal as the
   typical case, the first (arrival right at a wave's start) as the worst case.

`--jitter J` spreads each job's latency uniformly over L * (1 +- J), alone runs included (the
rows are then named with it, beside the fixed-latency ones, never in their place). A job's draw
is a pure function of `--seed` and the job (its prompt, which names its project, its scene and
its submission), so the same command gives every job the same latency again. Real
providers' times vary (Veo: 30 s to minutes), so a large project's jobs do not free their slots
in lockstep waves the way the local provider's fixed latency makes them; the floors printed are
the fixed-latency arithmetic and only a guide there.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from common import ROOT, bench_stack, record, summary, table, warm_up, workers

from mvpipe import api
from mvpipe.devstack.drills import double_payments, paid_generations
from mvpipe.devstack.localstack import start_control_worker
from mvpipe.models import ProjectStatus
from mvpipe.providers.local import LocalJobs


@dataclass(frozen=True)
class Run:
    project_id: str
    #: wall clock, as the provider ledger's stamps
    started_at: float
    #: from starting the project's run until no run is active (completed)
    seconds: float

    def slot_wait(self, ledger: Path) -> float:
        """Seconds from the start until the provider accepted the project's last job: the wait
        for quota slots (and dispatch), apart from rendering, cutting and assembly."""
        return last_accepted(ledger, self.project_id) - self.started_at


def run_timed(project_id: str, interval: float, timeout: float = 1800) -> Run:
    started_at, started = time.time(), time.monotonic()
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=timeout, interval=interval)
    elapsed = time.monotonic() - started
    assert view.status == ProjectStatus.COMPLETED, (project_id, view.status, view.last_error)
    return Run(project_id, started_at, elapsed)


def last_accepted(ledger: Path, project_id: str) -> float:
    entries = [json.loads(x) for x in ledger.read_text().splitlines() if x.strip()]
    return max(float(e["at"]) for e in entries if e["project_id"] == project_id)


def wait_paid(ledger: Path, project_id: str, count: int, timeout: float = 300) -> None:
    """Until the provider accepted `count` jobs of the project (the quota is full)."""
    deadline = time.monotonic() + timeout
    while sum(paid_generations(ledger, project_id).values()) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{project_id}: fewer than {count} jobs accepted")
        time.sleep(0.05)


def not_paid_once(ledger: Path, project_id: str, scenes: int) -> int:
    """Scenes of the project the provider was not paid exactly once for."""
    paid = paid_generations(ledger, project_id)
    return sum(1 for n in range(1, scenes + 1) if paid.get(n, 0) != 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quota", type=int, default=8)
    parser.add_argument("--large", type=int, default=80)
    parser.add_argument("--small", type=int, default=2)
    parser.add_argument("--smalls", type=int, default=3)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--size", default="320x180", help="output size of the cut and final video")
    parser.add_argument("--keep-log", type=Path, help="copy the workers' log here (timelines)")
    parser.add_argument(
        "--arrive", type=float, default=0.5, help="mid-run arrival, in job lengths after a wave"
    )
    parser.add_argument(
        "--no-control", action="store_true", help="no control worker beside the worker"
    )
    parser.add_argument("--waves", type=int, default=3, help="mid-run: waves of the large first")
    parser.add_argument(
        "--jitter",
        type=float,
        default=0.0,
        help="each job's latency spread by up to this share of L either way (0: all equal)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="the jitter's seed: the same seed repeats every draw"
    )
    args = parser.parse_args()
    quota, latency, k, s = args.quota, args.latency, args.smalls, args.small
    settings = {
        "local_latency": str(latency),
        "local_latency_jitter": str(args.jitter),
        "local_latency_seed": str(args.seed),
        "local_max_concurrent": str(quota),
        "provider_concurrency": str(quota),
        "local_clip_seconds": "0.5",
        "output_size": args.size,
    }

    def project(title: str, scenes: int) -> str:
        specs = [{"prompt": f"{title} {i}"} for i in range(scenes)]
        return api.create_project(title, "bench", scenes=specs)

    with bench_stack(**settings) as (stack, workdir):
        ledger = Path(stack.env["MVPIPE_LOCAL_LEDGER"])
        worker = workers(stack, workdir, args.concurrency)
        # The local stack's layout: a control worker beside the one that polls providers
        # (`--no-control`: the worker alone, as before).
        control = None
        if not args.no_control:
            env = stack.child_env(PYTHONPATH=f"{ROOT}:{ROOT / 'bench'}")
            control = start_control_worker(env, workdir / "control.log")
        sizes: dict[str, int] = {}
        warm_up()
        alone_runs = []
        for n in range(k):
            pid = project(f"Small alone {n}", s)
            sizes[pid] = s
            alone_runs.append(run_timed(pid, interval=0.1))
        large_alone_id = project("Large alone", args.large)
        sizes[large_alone_id] = args.large
        large_alone = run_timed(large_alone_id, interval=0.5).seconds

        large = project("Large", args.large)
        smalls = [project(f"Small {n}", s) for n in range(k)]
        sizes.update({large: args.large, **{p: s for p in smalls}})
        with ThreadPoolExecutor(k + 1) as pool:
            large_run = pool.submit(run_timed, large, 0.5)
            wait_paid(ledger, large, quota)  # the large project holds the whole quota
            small_runs = [pool.submit(run_timed, p, 0.1) for p in smalls]
            beside_runs = [f.result() for f in small_runs]
            large_together = large_run.result().seconds

        # Mid-run: the small projects arrive inside the large project's run, mid-wave.
        large_mid = project("Large mid-run", args.large)
        smalls_mid = [project(f"Small mid-run {n}", s) for n in range(k)]
        sizes.update({large_mid: args.large, **{p: s for p in smalls_mid}})
        with ThreadPoolExecutor(k + 1) as pool:
            large_mid_run = pool.submit(run_timed, large_mid, 0.5)
            wait_paid(ledger, large_mid, args.waves * quota)
            time.sleep(args.arrive * latency)
            mid_futures = [pool.submit(run_timed, p, 0.1) for p in smalls_mid]
            mid_runs = [f.result() for f in mid_futures]
            large_mid_run.result()
        worker.stop()
        if control is not None:
            control.stop()
            if args.keep_log:
                shutil.copyfile(workdir / "control.log", f"{args.keep_log}.control")
        if args.keep_log:
            shutil.copyfile(workdir / "worker.log", args.keep_log)
        jobs = LocalJobs(Path(stack.env["MVPIPE_LOCAL_STATE"]))
        unpaid = sum(not_paid_once(ledger, p, n) for p, n in sizes.items())
        twice = [double_payments(ledger, jobs, p) for p in sizes]
        waits = [
            [r.slot_wait(ledger) for r in runs] for runs in (alone_runs, beside_runs, mid_runs)
        ]
    alone_small = [r.seconds for r in alone_runs]
    together_small = [r.seconds for r in beside_runs]
    mid_small = [r.seconds for r in mid_runs]

    alone_med = statistics.median(alone_small)
    ratios = [t / alone_med for t in together_small]
    mid_ratios = [t / alone_med for t in mid_small]
    mid_floor = alone_med + args.arrive * latency
    lost_turns = math.ceil(k * s / quota)
    bound = large_alone + lost_turns * latency
    growth = large_together - large_alone
    jitter_text = f" +- {args.jitter:.0%}" if args.jitter else ""
    rows = [
        (
            "quota P / latency L / workers / output",
            f"{quota} / {latency:g} s{jitter_text} / {args.concurrency}"
            f"{'' if control is None else ' + 1 control'} / {args.size}",
        ),
        ("projects", f"1 x {args.large} scenes started first, {k} x {s} scenes once it fills P"),
        (
            "small projects alone (median)",
            f"{', '.join(f'{a:.1f}' for a in alone_small)} s ({alone_med:.1f} s)",
        ),
        (
            "small projects beside the large one",
            f"{', '.join(f'{t:.1f}' for t in together_small)} s",
        ),
        ("worst small ratio, beside / alone median (goal <= 1.5)", f"{max(ratios):.2f}x"),
        (
            "small projects: start -> last job accepted (slot wait), alone / beside",
            " / ".join(", ".join(f"{w:.1f}" for w in side) + " s" for side in waits[:2]),
        ),
        (
            "floor: alone + one wave of the large project (L)",
            f"{alone_med + latency:.1f} s = {(alone_med + latency) / alone_med:.2f}x",
        ),
        (
            f"mid-run: small projects started {args.arrive:g} L after the large one's "
            f"wave {args.waves}",
            f"{', '.join(f'{t:.1f}' for t in mid_small)} s",
        ),
        (
            "mid-run: worst small ratio, beside / alone median (goal <= 1.5)",
            f"{max(mid_ratios):.2f}x",
        ),
        ("mid-run: slot wait", ", ".join(f"{w:.1f}" for w in waits[2]) + " s"),
        (
            f"mid-run floor: alone + {args.arrive:g} L",
            f"{mid_floor:.1f} s = {mid_floor / alone_med:.2f}x",
        ),
        (
            "large project: alone -> beside the small ones",
            f"{large_alone:.1f} s -> {large_together:.1f} s ({growth:+.1f} s)",
        ),
        (
            f"large bound: alone + ceil({k}*{s}/P)*L = alone + {lost_turns * latency:g} s",
            f"{bound:.1f} s: {'met' if growth <= lost_turns * latency else 'MISSED'}",
        ),
        ("scenes not paid exactly once (must be 0)", str(unpaid)),
        (
            "paid twice in the named window / otherwise (must be 0 / 0)",
            f"{sum(a for a, _ in twice)} / {sum(b for _, b in twice)}",
        ),
    ]
    record(table("Fairness: small projects behind a large one", rows, ("measure", "value")))
    sizes_text = f"P={quota}, L={latency:g} s{jitter_text}, 1 x {args.large} then {k} x {s} scenes"
    summary(
        f"fairness: small project beside a large one / alone ({sizes_text})",
        f"{max(ratios):.2f}x (worst of {k}; floor {(alone_med + latency) / alone_med:.2f}x)",
        "<= 1.5 (issue 14)",
        max(ratios) <= 1.5,
    )
    summary(
        f"fairness: small project arriving mid-run / alone ({sizes_text}, "
        f"{args.arrive:g} L into a wave)",
        f"{max(mid_ratios):.2f}x (worst of {k}; floor {mid_floor / alone_med:.2f}x)",
        "<= 1.5 (issue 14)",
        max(mid_ratios) <= 1.5,
    )
    summary(
        "fairness: the large project's growth",
        f"{growth:+.1f} s ({large_alone:.1f} -> {large_together:.1f} s)",
        f"<= ceil({k}*{s}/P)*L = {lost_turns * latency:g} s",
        growth <= lost_turns * latency,
    )
    summary("fairness: scenes not paid exactly once", str(unpaid), "0", unpaid == 0)


if __name__ == "__main__":
    main()
