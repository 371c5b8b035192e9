"""Drills for the cut stage: two executions cutting one scene. (A worker SIGKILLed mid-cut is the
`during_cut` point of `test_crashes.test_worker_killed_at_a_critical_moment`.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import redis

from mvpipe import api
from mvpipe.celery_app import app
from mvpipe.deps import get_context
from mvpipe.devstack.failpoints import held, release
from mvpipe.messaging.dispatch import CeleryDispatcher
from mvpipe.models import ProjectStatus, SceneStatus
from mvpipe.queues import MEDIA_QUEUE, PLAN_QUEUE, VIDEO_QUEUE
from tests.conftest import Workers
from tests.drills.conftest import DRILL_SETTINGS, check_drill, heal
from tests.helpers import wait_for

StartWorkers = Callable[..., Workers]


def test_a_duplicate_cut_execution_races_the_first(start_workers: StartWorkers) -> None:
    # The first cut is held after cutting, before its upload and record; a second execution of
    # the same scene cuts and records meanwhile; then the first goes on: same key, same object,
    # and its record finds the state it meant to make (invariant 7).
    workers = start_workers(failpoints="during_cut=hold", **DRILL_SETTINGS)
    state_dir = Path(workers.env["MVPIPE_STATE_DIR"])
    ctx = get_context()
    project_id = api.create_project("Cut twice", "Two cutters.", scenes=[{"prompt": "one"}])
    api.run_project(project_id)
    wait_for(lambda: held(state_dir, "during_cut"), 60, "the first cut to be held")
    run_id = ctx.projects.get(project_id).active_run_id
    CeleryDispatcher(app).resume(project_id, 1, run_id, "local")
    scene = wait_for(
        lambda: (s := ctx.scenes.get(project_id, 1)) and s.status == SceneStatus.COMPLETED and s,
        60,
        "the duplicate cut to complete the scene",
    )
    key = scene.working_clip_key
    assert key is not None
    release(state_dir, "during_cut")
    wait_for(
        lambda: workers.service.log_text().count(f"cut recorded: {key}") == 2,
        60,
        "the held cut to finish and report success",
    )
    view = heal(project_id)
    assert view.scenes[0].working_video_clip_s3_key == key
    check_drill(project_id, workers)


def test_a_run_whose_last_scenes_wait_in_the_media_queue_is_not_taken_over(
    start_workers: StartWorkers, redis_client: redis.Redis
) -> None:
    # Given a run whose two scenes are queued for their cuts with no media worker, the queue's
    # wait allowed (MVPIPE_STAGE_QUEUE_SECONDS) far above the run's staleness
    settings = {**DRILL_SETTINGS, "stage_queue_seconds": "30"}
    main = start_workers(queues=f"{PLAN_QUEUE},{VIDEO_QUEUE}", **settings)
    ctx = get_context()
    project_id = api.create_project("Queued cuts", "A backlog.", scene_count=2)
    api.run_project(project_id)
    wait_for(lambda: media_messages(redis_client) == 2, 120, "both cuts queued")
    assert all(s.clip_key for s in ctx.projects.load(project_id).scenes)
    # When the run's own mark lapses (no step of it comes while its cuts wait)
    run_id = ctx.projects.get(project_id).active_run_id
    mark = ctx.board._key("live", "run", run_id)
    wait_for(lambda: redis_client.pttl(mark) == -2, 60, "the run's own mark to lapse")
    # Then reconcile leaves the run to its queued work: no takeover, no second chain
    assert api.reconcile(project_id).runs_taken_over == 0
    assert ctx.projects.get(project_id).active_run_id == run_id
    # And once a media worker takes the cuts, the run completes, each scene paid once
    start_workers(concurrency=1, queues=MEDIA_QUEUE, **settings)
    view = api.wait_project(project_id, timeout=120)
    assert view.status == ProjectStatus.COMPLETED, view
    check_drill(project_id, main)


def media_messages(client: redis.Redis) -> int:
    """Messages waiting on the media queue (its priority lists too)."""
    return sum(int(client.llen(key)) for key in client.scan_iter(f"{MEDIA_QUEUE}*"))
