"""Longer randomized fault drills: every kind of fault, on real processes, invariants checked.

    python bench/drill.py [--repeat 2 --scenes 8 --seed 1]

Each round starts its own stack, runs a project with the local provider, injects one fault
(a worker SIGKILLed at a critical moment — mid-cut too —, a whole worker killed, Redis restarted
with or without its data, the state server paused — also exactly while an operation id is
recorded, and while planning for longer than the lease so that reconcile takes the run over
mid-plan —, the run taken over during a record, provider faults, unreadable poll replies, every
scene's message redelivered under one task id, the run's root task delivered twice, the runs'
liveness marks lost while a reconcile passes, a second execution cutting a scene while the first
cut is held; for lip-synced projects: a worker SIGKILLed at each lip-sync crash point, lip-sync
faults, a cancel while lip-sync jobs run, every scene redelivered while they run), heals
(reconcile + re-run, as an operator would), then checks every invariant and counts paid jobs of
both stages from the providers' ledger. Local jobs are priced (`{"local": 0.25}` a
second) on a budget with room for every scene paid twice: the money columns show what the project
committed, its budget, and the price of the jobs the provider's ledger accepted — committed must
equal the ledger and never pass the budget.
"""

from __future__ import annotations

import argparse
import json
import random
import time
import uuid
from collections import Counter
from pathlib import Path

from common import bench_stack, record, summary, table, workers

from mvpipe import api
from mvpipe.celery_app import app
from mvpipe.deps import get_context
from mvpipe.devstack.drills import double_payments, heal, paid_generations, restart_redis
from mvpipe.devstack.failpoints import LIPSYNC_POINTS, POINTS, held, release
from mvpipe.devstack.invariants import violations
from mvpipe.devstack.localstack import LocalStack
from mvpipe.errors import MvpipeError
from mvpipe.media.synth import synthesize_song
from mvpipe.messaging.dispatch import GENERATE_SCENE, CeleryDispatcher
from mvpipe.models import ProjectStatus, ProjectView, SceneStatus
from mvpipe.pipeline.stage_provider import with_audio
from mvpipe.providers.local import LocalJobs

KINDS = [
    *(f"crash:{p}" for p in POINTS),
    "kill-worker",
    "redis-aof",
    "redis-lost",
    "pause-state",
    "faults",
    "pause-record",
    "takeover-record",
    "garbage-poll",
    "redeliver",
    "twin-root",
    "pause-planning",
    "lost-liveness",
    "duplicate-cut",
    *(f"lipsync-crash:{p}" for p in LIPSYNC_POINTS),
    "lipsync-faults",
    "lipsync-cancel",
    "lipsync-redeliver",
]
#: Lip-synced rounds: a song of 2 s slots (one scene per slot), every third scene lip-synced.
LIPSYNC_SLOT_SECONDS = 2
LIPSYNC_ENV = {"MVPIPE_SLOT_MAX_SECONDS": str(LIPSYNC_SLOT_SECONDS)}
#: Kinds that hold one execution just before it records its operation id.
HELD = ("pause-record", "takeover-record")
HOLD = "before_record"
#: The point a duplicate-cut round holds the first cut at (cut made, not uploaded).
CUT_HOLD = "during_cut"
SETTINGS = {
    "local_clip_seconds": "2",  # short renders, as this drill's figures were measured with
    "lease_seconds": "4",
    "provider_timeout_seconds": "2",
    "store_timeout_seconds": "1",
    "liveness_slack_seconds": "1",
    "run_stale_seconds": "4",
    "stage_queue_seconds": "4",
    "backoff_max": "2",
    "backoff_base": "0.2",
    "poll_seconds": "0.2",
    "max_attempts": "10",
    "prices": json.dumps({"local": 0.25}),
}
#: Each project's budget, in jobs of its scenes: room for every scene paid twice.
BUDGET_JOBS_PER_SCENE = 2


def wait_ledger(
    ledger: Path, project_id: str, count: int, timeout: float = 60, stage: str = "generate"
) -> None:
    deadline = time.monotonic() + timeout
    while sum(paid_generations(ledger, project_id, stage).values()) < count:
        if time.monotonic() > deadline:
            return
        time.sleep(0.1)


def wait_held(state_dir: Path, point: str = HOLD, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not held(state_dir, point) and time.monotonic() < deadline:
        time.sleep(0.05)


def pause_state_server(stack: LocalStack, seconds: float) -> None:
    moto = next(s for s in stack.services if s.name == "moto")
    moto.pause()
    try:
        time.sleep(seconds)  # the fault: the state server answers nothing
    finally:
        moto.resume()


def run_round(
    stack: LocalStack, workdir: Path, number: int, kind: str, scenes: int, rng: random.Random
) -> dict[str, int]:
    seed = rng.randint(1, 10**6)
    state_dir = workdir / f"state-{number}"
    env = {
        "MVPIPE_LOCAL_LATENCY": f"{rng.uniform(0.5, 2.5):.2f}",
        "MVPIPE_STATE_DIR": str(state_dir),
        "MVPIPE_FAILPOINTS": kind.split(":", 1)[1] if ":" in kind else "",
        "MVPIPE_LOCAL_FAULTS": {
            "faults": f"transient=0.3,permanent=0.1,seed={seed}",
            "garbage-poll": f"garbage=0.3,seed={seed}",
        }.get(kind, ""),
        "MVPIPE_LOCAL_LIPSYNC_FAULTS": (
            f"transient=0.3,permanent=0.1,seed={seed}" if kind == "lipsync-faults" else ""
        ),
    }
    lip_sync = kind.startswith("lipsync")
    if lip_sync:
        env.update(LIPSYNC_ENV)
    if kind in HELD:
        env["MVPIPE_FAILPOINTS"] = f"{HOLD}=hold"
        env["MVPIPE_STORE_RETRY_SECONDS"] = "2"  # a record gives up within the pause
    if kind == "duplicate-cut":
        env["MVPIPE_FAILPOINTS"] = f"{CUT_HOLD}=hold"
    ledger = Path(stack.env["MVPIPE_LOCAL_LEDGER"])
    worker = workers(stack, workdir, 2, **env)
    if lip_sync:
        song = synthesize_song(seconds=max(5, scenes * LIPSYNC_SLOT_SECONDS), bpm=120.0)
        project_id = api.create_project("Drill", "Chaos.", song=song.wav, lip_sync=True)
    else:
        project_id = api.create_project("Drill", "Chaos.", scene_count=scenes)
    api.set_budget(project_id, BUDGET_JOBS_PER_SCENE * api.estimate_cost(project_id))
    run = api.run_project(project_id)
    if kind == "twin-root":  # a broker redelivery: the same root message, same task id
        CeleryDispatcher(app).start_run(project_id, run.id)
    elif kind == "pause-planning":  # a stall longer than the lease, while the run plans
        pause_state_server(stack, float(SETTINGS["lease_seconds"]) + rng.uniform(1, 3))
        api.reconcile(project_id)
    if kind in HELD:
        wait_held(state_dir)
    elif kind == "duplicate-cut":
        wait_held(state_dir, CUT_HOLD)
    elif kind in ("lipsync-cancel", "lipsync-redeliver"):
        wait_ledger(ledger, project_id, 1, stage="lipsync")
    else:
        wait_ledger(ledger, project_id, rng.randint(1, scenes))
    if kind == "pause-record":  # the state server stops while an operation id is recorded
        moto = next(s for s in stack.services if s.name == "moto")
        moto.pause()
        release(state_dir, HOLD)
        time.sleep(rng.uniform(3, 5))  # the fault: longer than the record's store retries
        moto.resume()
    elif kind == "takeover-record":  # reconcile takes the run over while an id is recorded
        run = get_context().projects.get(project_id).active_run_id
        if run is not None:
            get_context().projects.take_over_run(
                project_id, run, str(uuid.uuid4()), ProjectStatus.PROCESSING
            )
        release(state_dir, HOLD)
    elif kind == "lipsync-cancel":  # the user cancels while lip-sync jobs run
        api.cancel_project(project_id)
    elif kind in ("redeliver", "lipsync-redeliver"):  # each scene's message twice, one task id
        run = get_context().projects.get(project_id).active_run_id
        for sequence in range(1, len(api.get_project(project_id).scenes) + 1):
            task_id = str(uuid.uuid4())
            for _ in range(2):
                app.send_task(
                    GENERATE_SCENE, args=[project_id, sequence, run, "local"], task_id=task_id
                )
    elif kind == "duplicate-cut":  # every scene run again while the first cut is held
        run = get_context().projects.get(project_id).active_run_id
        for sequence in range(1, scenes + 1):
            app.send_task(GENERATE_SCENE, args=[project_id, sequence, run, "local"])
        time.sleep(rng.uniform(0.5, 2))  # the duplicates cut meanwhile
        release(state_dir, CUT_HOLD)
    elif kind == "kill-worker":
        worker.kill()
        worker = workers(stack, workdir, 2, **env)
    elif kind.startswith("redis"):
        restart_redis(stack, keep_data=kind == "redis-aof")
    elif kind == "pause-state":
        pause_state_server(stack, rng.uniform(1, 5))
    elif kind == "lost-liveness":  # as after a Redis restart without persistence
        client = get_context().redis
        for key in client.scan_iter("mvpipe:live:*"):
            client.delete(key)
        api.reconcile(project_id)
    try:
        view = heal(project_id, timeout=240)
    except MvpipeError:
        view = api.get_project(project_id)
    found = violations(get_context(), project_id)
    if found:
        print(kind, "violations:", found, flush=True)
    worker.stop()
    jobs = LocalJobs(Path(stack.env["MVPIPE_LOCAL_STATE"]))
    # A user's cancel stops lip-sync jobs on purpose: the next run pays for them again.
    stages = ("generate",) if kind == "lipsync-cancel" else ("generate", "lipsync")
    doubles = [double_payments(ledger, jobs, project_id, stage) for stage in stages]
    in_window, outside = sum(d[0] for d in doubles), sum(d[1] for d in doubles)
    scenes = len(view.scenes) if lip_sync else scenes
    final = (SceneStatus.COMPLETED, SceneStatus.FAILED)
    committed = round(view.committed_cost_usd * 1e6)
    budget = round((view.budget_usd or 0) * 1e6)
    priced = ledger_micros(ledger, view)
    return {
        "committed": committed,
        "budget": budget,
        "ledger": priced,
        "money_off": int(committed != priced or committed > budget),
        "projects": 1,
        "scenes": scenes,
        "completed": sum(1 for s in view.scenes if s.status == SceneStatus.COMPLETED),
        "failed": sum(1 for s in view.scenes if s.status == SceneStatus.FAILED),
        "lost": sum(1 for s in view.scenes if s.status not in final) + scenes - len(view.scenes),
        "dup_window": in_window,
        "dup_other": outside,
        "violations": len(found),
    }


def ledger_micros(ledger: Path, view: ProjectView) -> int:
    """The price of every job the providers accepted for the project: generations by their
    scene's clip length, lip-syncs by their slot's."""
    settings = get_context().settings
    seconds = {s.sequence: s.duration_seconds for s in view.scenes}
    audio = {s.sequence: with_audio(s) for s in view.scenes}
    slots = {s.sequence: (s.end_seconds or 0.0) - (s.start_seconds or 0.0) for s in view.scenes}
    paid = paid_generations(ledger, view.project_id)
    synced = paid_generations(ledger, view.project_id, "lipsync")
    return sum(
        n * settings.video_price_micros(view.provider, seconds[seq], with_audio=audio[seq])
        for seq, n in paid.items()
    ) + sum(n * settings.lipsync_price_micros(slots[seq]) for seq, n in synced.items())


def dollars(micros: int) -> str:
    return f"${micros / 1e6:,.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated subset")
    args = parser.parse_args()
    kinds = [k for k in KINDS if k in args.kinds.split(",")]
    rng = random.Random(args.seed)
    totals: dict[str, Counter[str]] = {kind: Counter() for kind in kinds}
    rounds = [kind for _ in range(args.repeat) for kind in rng.sample(kinds, len(kinds))]
    with bench_stack(**SETTINGS) as (stack, workdir):
        for number, kind in enumerate(rounds):
            totals[kind].update(run_round(stack, workdir, number, kind, args.scenes, rng))
            print(kind, dict(totals[kind]), flush=True)
    columns = [
        "projects",
        "scenes",
        "completed",
        "failed",
        "lost",
        "dup_window",
        "dup_other",
        "violations",
        "committed",
        "budget",
        "ledger",
        "money_off",
    ]
    money = {"committed", "budget", "ledger"}

    def cells(counter: Counter[str]) -> tuple[str, ...]:
        return tuple(dollars(counter[c]) if c in money else str(counter[c]) for c in columns)

    rows = [(kind, *cells(totals[kind])) for kind in kinds]
    grand: Counter[str] = Counter()
    for counter in totals.values():
        grand.update(counter)
    rows.append(("total", *cells(grand)))
    header = (
        "fault injected",
        "projects",
        "scenes",
        "completed",
        "failed (permanent fault)",
        "lost (must be 0)",
        "paid twice in the named window",
        "paid twice otherwise (must be 0)",
        "invariant violations (must be 0)",
        "committed",
        "budget",
        "ledger's price",
        "committed != ledger or > budget (must be 0)",
    )
    record(
        table(f"Fault drills (seed {args.seed}, {args.repeat} round(s) per fault)", rows, header)
    )
    summary(
        f"fault drills ({len(kinds)} kinds x {args.repeat} rounds, {grand['scenes']} scenes): "
        "lost, paid twice outside the named window, violations, money off",
        f"{grand['lost']}, {grand['dup_other']}, {grand['violations']}, {grand['money_off']} "
        f"({grand['dup_window']} paid twice inside the window)",
        "0, 0, 0, 0",
        grand["lost"] == grand["dup_other"] == grand["violations"] == grand["money_off"] == 0,
    )


if __name__ == "__main__":
    main()
