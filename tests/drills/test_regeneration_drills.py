"""Drills for a regeneration asked while a submission is in flight: a user's cancel and
regenerate must not leave a paid job with nowhere to be recorded (docs/DESIGN.md invariant 3)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mvpipe import api
from mvpipe.deps import get_context
from mvpipe.devstack.failpoints import held, release
from mvpipe.errors import Conflict
from tests.conftest import Workers
from tests.drills.conftest import DRILL_SETTINGS, check_drill, heal
from tests.drills.test_unknown_outcomes import state_dir
from tests.helpers import wait_for

StartWorkers = Callable[..., Workers]

HOLD = "before_record"


def test_a_regeneration_over_a_submission_in_flight_is_refused_and_the_job_kept(
    start_workers: StartWorkers,
) -> None:
    # Given a run whose scene's job the provider has accepted, its id not yet recorded
    workers = start_workers(failpoints=f"{HOLD}=hold", **{**DRILL_SETTINGS, "lease_seconds": "30"})
    ctx = get_context()
    project_id = api.create_project("Regenerated", "In flight.", scenes=[{"prompt": "one"}])
    api.run_project(project_id)
    wait_for(lambda: held(state_dir(workers), HOLD), 60, "the submission to be in flight")
    # When the user cancels, then regenerates that scene
    api.cancel_project(project_id)
    before = ctx.scenes.get(project_id, 1)
    assert before is not None and before.lease_token is not None
    with pytest.raises(Conflict, match=r"a submission is in flight\); try again shortly"):
        api.regenerate_scene(project_id, 1)
    # Then nothing was written: the lease is the submitter's, no run was started
    after = ctx.scenes.get(project_id, 1)
    assert after == before
    assert ctx.projects.get(project_id).active_run_id is None
    # And the accepted job's id is recorded under the submitter's lease, then the cancel is
    # carried out as the provider allows (the local one stops the job; Veo's would be kept)
    release(state_dir(workers), HOLD)
    log = workers.service.log_text
    wait_for(
        lambda: "operation cancelled at provider" in log() or "kept for the next run" in log(),
        60,
        "the in-flight job to be recorded, then cancelled or kept",
    )
    assert "operation not stored" not in log()
    # And once it is, the scene can be regenerated (one new job, as the user asks)
    api.regenerate_scene(project_id, 1)
    heal(project_id)
    paid = check_drill(project_id, workers, regenerated=True)
    assert paid[1] == 2, paid
