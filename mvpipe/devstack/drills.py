"""Fault-drill helpers shared by the drill tests and `bench/drill.py` (and usable on game days).

`heal` does what an operator's tooling does after an incident: reconcile, and re-run a project
left pending, until its run is over. `restart_redis` restarts a local stack's Redis with its
data kept (AOF) or lost.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

from mvpipe import api
from mvpipe.devstack.localstack import LocalStack, launch_redis
from mvpipe.errors import Conflict, Timeout
from mvpipe.models import ProjectStatus, ProjectView
from mvpipe.pipeline.reconcile_report import ReconcileReport
from mvpipe.providers.local import LocalJobs


def heal(
    project_id: str,
    timeout: float = 180.0,
    *,
    rerun: bool = True,
    after_pass: Callable[[ReconcileReport], object] | None = None,
    pace: float = 1.0,
) -> ProjectView:
    """The project's view once its run is over, reconciling it meanwhile and (with `rerun`)
    running it again when left pending: what an operator's tooling does. `after_pass` is told
    each reconcile pass's report as it comes, for a drill that counts what the passes did
    (a run taken over); `pace` is the most a pass waits for the run before the next pass (a
    drill racing a staleness window passes often)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = api.reconcile(project_id)
        if after_pass is not None:
            after_pass(report)
        try:
            view = api.wait_project(project_id, timeout=pace, interval=min(0.2, pace))
        except Timeout:
            continue  # a run is active: let it work, reconcile again
        if view.status in (ProjectStatus.COMPLETED, ProjectStatus.FAILED) or not rerun:
            return view
        if view.status == ProjectStatus.PENDING:
            with contextlib.suppress(Conflict):
                api.run_project(project_id)
    raise Timeout(f"project {project_id} did not heal within {timeout:.0f}s")


def _entries(ledger: Path, project_id: str, stage: str) -> list[dict[str, object]]:
    """The project's ledger lines of `stage` (lines without a stage are generations)."""
    if not ledger.exists():
        return []
    entries = [json.loads(x) for x in ledger.read_text().splitlines() if x.strip()]
    return [
        e for e in entries if e["project_id"] == project_id and e.get("stage", "generate") == stage
    ]


def paid_generations(ledger: Path, project_id: str, stage: str = "generate") -> Counter[int]:
    """Accepted submissions of `stage` (`generate` or `lipsync`) per scene, from the local
    providers' ledger."""
    return Counter(int(str(e["sequence"])) for e in _entries(ledger, project_id, stage))


def cancelled_generations(ledger: Path, jobs: LocalJobs, project_id: str) -> Counter[int]:
    """Paid generations per scene that a cancel stopped in flight: each is one job a later
    run may pay for again."""
    entries = _entries(ledger, project_id, "generate")
    ops = {str(e["operation_id"]): int(str(e["sequence"])) for e in entries}
    return Counter(ops[op] for op in jobs.cancelled("jobs", list(ops)))


def double_payments(
    ledger: Path, jobs: LocalJobs, project_id: str, stage: str = "generate"
) -> tuple[int, int]:
    """Scenes whose `stage` was paid more than once, split by cause: (inside the named window,
    outside it).

    Inside: every job but the scene's last was never polled, so its id never reached the store
    (a crash between the provider accepting it and the one write of its id). Outside: an
    earlier job had been stored and polled and was paid for again anyway, which is a bug (or a
    deliberate regeneration)."""
    paid: dict[int, list[str]] = {}
    for entry in _entries(ledger, project_id, stage):
        paid.setdefault(int(str(entry["sequence"])), []).append(str(entry["operation_id"]))
    earlier = {seq: ops[:-1] for seq, ops in paid.items() if len(ops) > 1}
    used = jobs.polled([op for ops in earlier.values() for op in ops])
    outside = sum(1 for ops in earlier.values() if used.intersection(ops))
    return len(earlier) - outside, outside


def restart_redis(stack: LocalStack, *, keep_data: bool) -> float:
    """Stop Redis (flushed, or killed with its data deleted) and start it again on its port;
    returns the moment it was down (epoch seconds), for a drill to check what ran across it."""
    old = next(s for s in stack.services if s.name == "redis")
    workdir = old.log_path.parent
    if keep_data:
        old.stop()  # SIGTERM: redis flushes its append-only file
    else:
        old.kill()
        for path in sorted(workdir.glob("appendonly*"), reverse=True):
            if path.is_dir():
                for child in path.iterdir():
                    child.unlink()
            else:
                path.unlink()
    down_at = time.time()
    stack.replace(old, partial(launch_redis, workdir, port=old.port))
    return down_at
