"""Drills of tasks that give up: an error no retry cures ends in a state that says why, and
nothing (finalize, reconcile) waits for or restarts the work forever."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mvpipe import api
from mvpipe.models import ProjectStatus, SceneStatus
from tests.conftest import Workers
from tests.drills.conftest import DRILL_SETTINGS
from tests.helpers import assert_invariants, generations_per_scene

StartWorkers = Callable[..., Workers]

#: Retries a few milliseconds apart: a chain reaches its limit of unexpected errors quickly.
QUICK_RETRIES = {"backoff_base": "0.05", "backoff_max": "0.2"}


@pytest.mark.parametrize(
    ("point", "paid"),
    [("before_claim_write", 0), ("during_cut", 1)],  # a paid stage unclaimed; a free stage
)
def test_a_scene_that_always_crashes_fails_saying_why_and_stays_failed(
    start_workers: StartWorkers, point: str, paid: int
) -> None:
    # Given a bug at one point of a scene's step, met by every execution that reaches it
    workers = start_workers(failpoints=f"{point}=raise", **QUICK_RETRIES, **DRILL_SETTINGS)
    project_id = api.create_project("Bug", "It crashes every time.", scene_count=1)
    # When the run's chain has retried it as often as it may
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=120)
    # Then the scene failed with the (scrubbed) reason, and the run settled on it
    assert view.status == ProjectStatus.FAILED, view
    (scene,) = view.scenes
    assert scene.status == SceneStatus.FAILED
    assert scene.last_error == f"gave up: FailpointError: failpoint {point} raised"
    assert_invariants(project_id)
    # And reconcile restarts nothing: only a user's run pays or tries again
    for _ in range(2):
        report = api.reconcile(project_id, full_sweep=True)
        assert report.total == 0 and report.resumed_stages == 0, report
    after = api.get_project(project_id)
    assert after.scenes[0].status == SceneStatus.FAILED
    assert sum(generations_per_scene(workers.ledger, project_id).values()) == paid
    # Each crash was logged as one line, without a traceback
    log = workers.service.log_text()
    assert f"unexpected error in generate_scene {project_id}/1: FailpointError" in log
    assert "Traceback" not in log
