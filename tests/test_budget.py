"""Cost and budget on the real stack: a budget that concurrent workers cannot overspend, raising
it continues the run, and the estimate is what a run then commits (docs/DESIGN.md invariants 4,
9)."""

from __future__ import annotations

import json
import math
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mvpipe import api
from mvpipe.cli.costs import APPROXIMATE
from mvpipe.deps import get_context
from mvpipe.models import ProjectStatus, SceneStatus
from mvpipe.providers.faults import FaultPlan
from tests.cli_batch import mvpipe_batch
from tests.conftest import Workers
from tests.helpers import assert_invariants, ledger, wait_for
from tests.songs import make_song

pytestmark = pytest.mark.integration

StartWorkers = Callable[..., Workers]

#: A dollar per second of local video: a 4 s scene costs $1.
PRICES = json.dumps({"local": 0.25})


def watch_committed(project_id: str, timeout: float = 180) -> int:
    """Wait for the run to end, reading the committed sum all along; returns its maximum."""
    ctx = get_context()
    deadline = time.monotonic() + timeout
    highest = 0
    while True:
        project = ctx.projects.get(project_id)
        highest = max(highest, project.committed_cost_micros)
        if project.active_run_id is None:
            return highest
        assert time.monotonic() < deadline, "the run did not end"
        time.sleep(0.05)


def test_forty_scenes_on_a_budget_for_twenty_five(start_workers: StartWorkers) -> None:
    # Given 2 worker processes, a quota of 20 jobs, and 40 scenes at $1 each on a $25 budget
    workers = start_workers(
        concurrency=2, prices=PRICES, provider_concurrency="20", local_max_concurrent="20"
    )
    scenes = [{"prompt": f"scene {n}", "duration_seconds": 4} for n in range(1, 41)]
    project_id = api.create_project("Budget", "Twenty-five fit.", scenes=scenes, budget_usd=25)
    assert api.estimate_cost(project_id) == 40.0

    # When it runs
    api.run_project(project_id)
    highest = watch_committed(project_id)

    # Then exactly 25 jobs were accepted, 25 dollars committed (never more), 15 scenes failed
    # over budget, saying what they need and what is left
    view = api.get_project(project_id)
    assert len(ledger(workers.ledger, project_id)) == 25
    assert view.committed_cost_usd == 25.0 and highest == 25_000_000
    failed = [s for s in view.scenes if s.status == SceneStatus.FAILED]
    assert len(failed) == 15
    assert {s.last_error for s in failed} == {"over budget: needs $1.00, $0.00 left of $25.00"}
    assert all(s.cost_usd == 0 and s.attempts == 0 for s in failed)
    assert view.status == ProjectStatus.FAILED
    assert api.estimate_cost(project_id) == 15.0
    assert_invariants(project_id)

    # When the budget is raised and the project runs again
    api.set_budget(project_id, 40)
    api.run_project(project_id)
    highest = watch_committed(project_id)

    # Then the rest is paid for, once each
    view = api.get_project(project_id)
    assert view.status == ProjectStatus.COMPLETED, view.last_error
    paid = ledger(workers.ledger, project_id)
    assert len(paid) == 40 and len({e["sequence"] for e in paid}) == 40
    assert view.committed_cost_usd == 40.0 and highest == 40_000_000
    assert api.estimate_cost(project_id) == 0.0
    assert_invariants(project_id)


def test_the_estimate_is_what_a_run_commits_and_a_regeneration_costs(
    start_workers: StartWorkers, tmp_path: Path
) -> None:
    workers = start_workers(prices=PRICES)
    project_id = api.create_project("Estimate", "Three scenes.", scene_count=3)
    estimate = api.estimate_cost(project_id)  # unplanned: 3 scenes of the default length
    assert estimate == 6.0

    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=120)
    assert view.status == ProjectStatus.COMPLETED, view.last_error
    assert view.committed_cost_usd == estimate
    assert sum(s.cost_usd for s in view.scenes) == estimate
    assert view.budget_usd is None  # without a budget, spending is still recorded
    assert api.estimate_cost(project_id) == 0.0

    again = api.estimate_cost(project_id, 2)
    assert again == 2.0
    api.regenerate_scene(project_id, 2)
    view = api.wait_project(project_id, timeout=120)
    assert view.status == ProjectStatus.COMPLETED, view.last_error
    assert view.committed_cost_usd == estimate + again
    assert view.scenes[1].cost_usd == 2 * again  # paid twice over its life
    assert len(ledger(workers.ledger, project_id)) == 4
    assert_invariants(project_id)

    # The paid-for video, downloaded, has the mode any new file of the user's gets
    assert downloaded_modes(project_id, tmp_path) == {0o022: 0o644, 0o077: 0o600, 0o002: 0o664}


def test_an_unplanned_estimate_is_made_exact_by_a_run_on_no_budget(
    start_workers: StartWorkers,
) -> None:
    # Given a project whose planner has still to decide its scenes: "about", saying how to
    # make it exact
    workers = start_workers(prices=PRICES)
    project_id = api.create_project("Free plan", "Planned for nothing.", scene_count=3)
    (said,) = mvpipe_batch(workers.env, ("estimate", project_id))
    assert said.returncode == 0 and said.stdout.startswith("about $6.00"), said.stdout
    assert APPROXIMATE in said.stderr, said.stderr
    # When it runs on a budget of 0, as that says
    api.set_budget(project_id, 0)
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=120)
    # Then it is planned, paid nothing, and its estimate is exact
    assert view.scene_count == 3 and view.committed_cost_usd == 0
    assert ledger(workers.ledger, project_id) == []
    assert all(s.last_error and s.last_error.startswith("over budget") for s in view.scenes)
    estimate = api.estimate_micros(project_id)
    assert estimate.exact and (estimate.micros, estimate.jobs) == (6_000_000, 3)


def downloaded_modes(project_id: str, into: Path) -> dict[int, int]:
    """The final video downloaded under each of a few umasks: its permission bits for each."""
    modes = {}
    for umask in (0o022, 0o077, 0o002):
        previous = os.umask(umask)
        try:
            target = api.download(project_id, into / f"umask-{umask:03o}.mp4")
        finally:
            os.umask(previous)
        modes[umask] = stat.S_IMODE(target.stat().st_mode)
    return modes


def test_a_song_project_analysed_at_creation_is_estimated_exactly_then_paid_for_exactly(
    start_workers: StartWorkers,
) -> None:
    media = start_workers(concurrency=1, queues="mvpipe.media", warm_media="1")
    # Slots of at most 3.8 s on a song that beats every half second: its length cut evenly into
    # the longest slots makes 8 of them; its beats decide the real ones
    workers = start_workers(
        queues="mvpipe.plan,mvpipe.video", prices=PRICES, slot_max_seconds="3.8"
    )
    song = make_song("mp3", 30.0)
    project_id = api.create_project("Song", "Neon rain\nOn the glass", song=song.data)

    # A worker analyses the song once the project is created, no run asked: then the estimate
    # is exact, on the beats' slots (not the even cut), and the CLI says so with no hint
    wait_for(
        lambda: api.get_project(project_id).timeline_s3_key, 120, "the song's analysis at creation"
    )
    exact = api.estimate_micros(project_id)
    assert exact.exact and not exact.awaiting_analysis
    assert exact.jobs > math.ceil(30.0 / 3.8) and exact.micros > 0
    # The commands, `status` last, in one batch: each its own process, the imports once
    bads = ("-1", "nan", "1e12", "ten")
    said, estimated, budgeted, *refusals, cli = mvpipe_batch(
        workers.env,
        ("estimate", project_id),
        ("estimate", project_id, "--json"),
        ("budget", project_id, str(exact.micros / 1e6)),
        *(("budget", project_id, bad) for bad in bads),
        ("status", project_id),
    )
    assert said.returncode == 0 and said.stdout.startswith("$"), said.stdout
    assert said.stderr == "", said.stderr
    assert estimated.returncode == 0 and estimated.stderr == "", estimated.stderr
    assert json.loads(estimated.stdout) == {
        "usd": exact.micros / 1e6,
        "jobs": exact.jobs,
        "exact": True,
    }
    assert budgeted.returncode == 0, budgeted.stderr
    assert f"of a ${exact.micros / 1e6:,.2f} budget" in budgeted.stdout
    for refused in refusals:
        assert refused.returncode == 2 and "budget must" in refused.stderr, refused.stderr
    assert cli.returncode == 0, cli.stderr
    assert f"cost      $0.00 committed of a ${exact.micros / 1e6:,.2f} budget" in cli.stdout

    # A budget of exactly the estimate pays for every scene, and the run planned on the
    # recorded timeline: the song was analysed once, at creation, and no run step analysed it
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=180)
    assert view.status == ProjectStatus.COMPLETED, view.last_error
    assert view.scene_count == exact.jobs
    assert round(view.committed_cost_usd * 1e6) == exact.micros
    assert exact.micros == sum(s.duration_seconds * 250_000 for s in view.scenes)
    assert len(ledger(workers.ledger, project_id)) == view.scene_count
    log = media.service.log_text()
    assert log.count(f"analysed song project={project_id} ") == 1
    assert "Task mvpipe.prepare_song[" in log and "Task mvpipe.analyse_song[" not in log
    assert_invariants(project_id)


def test_a_submit_that_fails_transiently_gives_its_reservation_back(
    start_workers: StartWorkers,
) -> None:
    # Given a provider refusing many submits with transient errors, and a budget that holds
    # exactly one accepted job per scene
    faults = "transient=0.4,seed=11"
    workers = start_workers(prices=PRICES, local_faults=faults, max_attempts="20", backoff_max="1")
    scenes = [{"prompt": f"scene {n}", "duration_seconds": 4} for n in range(1, 7)]
    # The faults are drawn per project id: one in ~21 would take all six first submits, so the
    # project is one whose draws refuse at least one (the same draws the provider makes)
    plan = FaultPlan.parse(faults)
    created = (
        api.create_project("Refunds", "Refused, then paid.", scenes=scenes, budget_usd=6)
        for _ in range(20)
    )
    project_id = next(
        p for p in created if any(plan.transient_fault(p, n, "submit", 1) for n in range(1, 7))
    )

    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=180)

    # Then every refused submit gave its dollar back: all six scenes fit the six dollars
    assert view.status == ProjectStatus.COMPLETED, [(s.sequence, s.last_error) for s in view.scenes]
    assert sum(s.attempts for s in view.scenes) > 6  # some submits were refused
    assert len(ledger(workers.ledger, project_id)) == 6
    assert view.committed_cost_usd == 6.0
    assert all(s.cost_usd == 1.0 for s in view.scenes)
    assert_invariants(project_id)
