"""Drills of media work whose every try kills its worker process (a song or clip whose decode
runs out of memory, a native crash): Celery delivers its message again each time, so without a
count it would run and die forever. Each ends within `MVPIPE_MAX_ATTEMPTS` lost tries, saying
why, and the project is left for a user's next run. A final video's build lost once with its
whole worker is taken over within the builder's own window, not the run's staleness."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from mvpipe import api
from mvpipe.deps import get_context
from mvpipe.devstack.failpoints import killed
from mvpipe.models import ProjectStatus, ProjectView, SceneStatus
from mvpipe.pipeline.reconcile_report import ReconcileReport
from tests.conftest import Workers
from tests.drills.conftest import DRILL_SETTINGS, check_drill, heal
from tests.drills.test_unknown_outcomes import state_dir
from tests.helpers import assert_invariants, song_project_unanalysed
from tests.songs import make_song
from tests.test_assemble import completed_song_project

StartWorkers = Callable[..., Workers]

#: Tries lost in a row before the work is given up on (`MVPIPE_MAX_ATTEMPTS`), fewer than the
#: failpoint's kills: without the count, the work would be killed that often and then succeed.
LIMIT = 3
KILLS = 10
#: A fresh pool process for each lost one: seconds each on two busy cores.
SETTLED_SECONDS = 240


def start_killing(
    start_workers: StartWorkers, point: str, kills: int = KILLS, **settings: Any
) -> Workers:
    """Workers whose processes die at `point`, its first `kills` reaches."""
    return start_workers(
        failpoints=f"{point}=kill:{kills}",
        max_attempts=str(LIMIT),
        **{**DRILL_SETTINGS, **settings},
    )


def test_a_song_whose_analysis_kills_its_worker_fails_the_planning_saying_so(
    start_workers: StartWorkers,
) -> None:
    # Given a song whose analysis kills the process running it, every time (no intake
    # analysis: only the run's analyses it)
    workers = start_killing(start_workers, "before_analysis")
    ctx = get_context()
    project_id = song_project_unanalysed(ctx, "Killer song", make_song("wav", 6.0).data)
    # When a run plans it
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=SETTLED_SECONDS)
    # Then the planning failed, saying why, after as many lost tries as planning may have
    assert view.status == ProjectStatus.FAILED, view
    why = f"the song's analysis lost its worker process {LIMIT} times"
    assert view.last_error == f"planning failed: {why}"
    assert killed(state_dir(workers), "before_analysis") == LIMIT
    assert "WorkerLostError" in workers.service.log_text()
    assert ctx.projects.get(project_id).timeline_key is None
    # And reconcile analyses nothing again
    assert api.reconcile(project_id, full_sweep=True).total == 0
    assert api.get_project(project_id).status == ProjectStatus.FAILED


def test_a_clip_whose_cut_kills_its_worker_fails_its_scene_saying_so(
    start_workers: StartWorkers,
) -> None:
    # Given a scene whose cut kills the process running it, every time
    workers = start_killing(start_workers, "during_cut")
    project_id = api.create_project("Killer clip", "Its cut dies.", scene_count=1)
    # When a run makes it
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=SETTLED_SECONDS)
    # Then the scene failed after as many lost cuts as a cut may lose, its paid original kept
    assert view.status == ProjectStatus.FAILED, view
    (scene,) = view.scenes
    assert scene.status == SceneStatus.FAILED
    assert scene.last_error is not None
    assert scene.last_error.startswith(
        f"the clip could not be cut: cutting it lost its worker process {LIMIT} times; "
    ), scene.last_error
    assert scene.original_video_clip_s3_key and not scene.working_video_clip_s3_key
    assert killed(state_dir(workers), "during_cut") == LIMIT
    assert_invariants(project_id)


def test_a_final_video_whose_assembly_kills_its_worker_releases_the_run_saying_so(
    start_workers: StartWorkers,
) -> None:
    # Given completed scenes whose final video's build kills the process running it, every
    # time (a dead builder's hold lapses within its window, at most the run's staleness: 2 s)
    workers = start_killing(start_workers, "during_assembly", run_stale_seconds="2")
    ctx = get_context()
    project_id = completed_song_project(ctx, song=False)
    # When a run assembles it
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=SETTLED_SECONDS)
    # Then the run was released saying why, after as many lost builds as may be tried
    assert view.status == ProjectStatus.PENDING, view
    why = f"the final video's assembly lost its worker process {LIMIT} times"
    assert view.last_error == f"assembly failed: {why}"
    assert view.final_video_s3_key is None
    assert killed(state_dir(workers), "during_assembly") == LIMIT
    assert_invariants(project_id)


def test_a_run_whose_finalize_kills_its_worker_ends_saying_so(
    start_workers: StartWorkers,
) -> None:
    # Given completed scenes whose run's finalize kills the process running it, every time
    workers = start_killing(start_workers, "during_finalize")
    project_id = completed_song_project(get_context(), song=False)
    # When a run finalizes them
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=SETTLED_SECONDS)
    # Then the run ended saying why, after as many lost finalizes as may be tried
    assert_finalize_given_up(view)
    assert killed(state_dir(workers), "during_finalize") == LIMIT
    assert "WorkerLostError" in workers.service.log_text()
    assert_invariants(project_id)


def assert_finalize_given_up(view: ProjectView) -> None:
    assert view.status == ProjectStatus.PENDING, view
    why = f"the run's finalize lost its worker process {LIMIT} times"
    assert view.last_error == f"finalize failed: {why}"
    assert view.final_video_s3_key is None


#: Celery's threads pool: a failpoint's kill ends the whole worker (every thread, its consumer),
#: as when its machine or container is killed; nothing delivers its messages again.
WHOLE_WORKER: dict[str, Any] = {"pool": "threads", "concurrency": 2}


class Replaced:
    """Workers whose whole process dies at `point`, its first `KILLS` reaches, each replaced
    once it is dead (what a supervisor does), looked at after each reconcile pass."""

    def __init__(
        self, start_workers: StartWorkers, point: str, kills: int = KILLS, **settings: str
    ) -> None:
        self.start_workers, self.point, self.kills = start_workers, point, kills
        self.settings = settings
        self.workers = self.start()
        self.takeovers = 0

    def start(self, **settings: str) -> Workers:
        return start_killing(
            self.start_workers, self.point, self.kills, **WHOLE_WORKER, **self.settings, **settings
        )

    def after_pass(self, report: ReconcileReport) -> None:
        self.takeovers += report.runs_taken_over
        if self.workers.service.proc.poll() is not None:
            self.workers = self.start(local_ledger=str(self.workers.ledger))

    def killed(self) -> int:
        return killed(state_dir(self.workers), self.point)


def song_unanalysed() -> str:
    return song_project_unanalysed(get_context(), "Killer song", make_song("wav", 6.0).data)


def one_scene() -> str:
    return api.create_project("Killer clip", "Its cut dies.", scene_count=1)


def completed() -> str:
    return completed_song_project(get_context(), song=False)


def planning_failed(view: ProjectView) -> None:
    assert view.status == ProjectStatus.FAILED, view
    why = f"the song's analysis lost its worker process {LIMIT} times"
    assert view.last_error == f"planning failed: {why}"


def cut_failed(view: ProjectView) -> None:
    assert view.status == ProjectStatus.FAILED, view
    (scene,) = view.scenes
    assert scene.status == SceneStatus.FAILED
    why = f"the clip could not be cut: cutting it lost its worker process {LIMIT} times; "
    assert scene.last_error is not None and scene.last_error.startswith(why), scene.last_error
    assert scene.original_video_clip_s3_key and not scene.working_video_clip_s3_key


def assembly_failed(view: ProjectView) -> None:
    assert view.status == ProjectStatus.PENDING, view
    why = f"the final video's assembly lost its worker process {LIMIT} times"
    assert view.last_error == f"assembly failed: {why}"
    assert view.final_video_s3_key is None


@pytest.mark.parametrize(
    ("point", "project", "ended"),
    [
        ("before_analysis", song_unanalysed, planning_failed),
        ("during_cut", one_scene, cut_failed),
        ("during_assembly", completed, assembly_failed),
        ("during_finalize", completed, assert_finalize_given_up),
    ],
    ids=["analysis", "cut", "assembly", "finalize"],
)
def test_work_that_kills_its_whole_worker_each_try_gives_up_after_the_limit(
    start_workers: StartWorkers,
    point: str,
    project: Callable[[], str],
    ended: Callable[[ProjectView], None],
) -> None:
    # Given work whose every try kills the whole worker running it (its machine, say), each
    # dead worker replaced: its messages are never delivered again, so the run goes stale and
    # reconcile takes it over (or resumes the scene whose cut stopped)
    workers = Replaced(start_workers, point)
    project_id = project()
    # When a run makes it, reconcile passing meanwhile
    api.run_project(project_id)
    view = heal(project_id, SETTLED_SECONDS, rerun=False, after_pass=workers.after_pass)
    # Then the work was given up on, saying why, after as many lost tries as may be lost
    ended(view)
    assert workers.killed() == LIMIT
    if point != "during_cut":  # a cut stopped is resumed for its run, not taken over
        assert workers.takeovers == LIMIT
    assert_invariants(project_id)


#: A run's staleness and its cuts' queue window far longer than a builder's own window: a run
#: whose builder is lost is taken over within that window, well before either.
LONG_WAITS = {"run_stale_seconds": "90", "stage_queue_seconds": "90"}
#: The builder's window (`MVPIPE_ASSEMBLY_ALIVE_SECONDS`), and how soon the drill's run must
#: be completed again: the run's generations, cuts, two builds and a takeover, well under 90 s.
BUILDER_WINDOW = "2"
HEALED_WITHIN = 50.0


def test_a_run_whose_builder_is_lost_with_its_whole_worker_is_taken_over_within_its_window(
    start_workers: StartWorkers,
) -> None:
    # Given a run of two scenes whose cuts waited in the media queue (the run marked waiting
    # for 90 s) and whose first build kills its whole worker (replaced once dead), with a
    # staleness of 90 s and a builder's window of 2 s
    workers = Replaced(
        start_workers, "during_assembly", 1, assembly_alive_seconds=BUILDER_WINDOW, **LONG_WAITS
    )
    project_id = api.create_project("Lost builder", "Its build dies.", scene_count=2)
    started = time.monotonic()
    # When the run makes it, reconcile passing meanwhile
    api.run_project(project_id)
    view = heal(project_id, HEALED_WITHIN, rerun=False, after_pass=workers.after_pass)
    # Then it was taken over once its builder's window lapsed, not its staleness or its cuts'
    # queue window later, and completed: each scene paid once, the final video recorded
    assert view.status == ProjectStatus.COMPLETED, view
    assert time.monotonic() - started < HEALED_WITHIN
    assert workers.killed() == 1
    assert workers.takeovers == 1
    assert view.final_video_s3_key is not None
    check_drill(project_id, workers.workers)
