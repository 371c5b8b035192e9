"""Drills for a regeneration asked while a submission is in flight: a user's cancel and
regenerate must not leave a paid job with nowhere to be recorded (docs/DESIGN.md invariant 3)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from mvpipe import api
from mvpipe.deps import get_context
from mvpipe.devstack.failpoints import held, release
from mvpipe.errors import Conflict
from mvpipe.models import ProjectStatus
from mvpipe.store.finals import final_prefix
from tests.conftest import Workers
from tests.drills.conftest import DRILL_SETTINGS, check_drill, heal
from tests.drills.test_unknown_outcomes import state_dir
from tests.helpers import assert_invariants, wait_broker_idle, wait_for

StartWorkers = Callable[..., Workers]

HOLD = "before_record"
#: The held point of an assembly: its clips chosen and hashed, nothing downloaded yet.
ASSEMBLY = "before_assembly"
#: Small clips: the drills below are about the final video's record, not its pixels.
SMALL = {**DRILL_SETTINGS, "output_size": "160x90", "output_fps": "12"}
TWO_SCENES = [{"prompt": "one", "duration_seconds": 2}, {"prompt": "two", "duration_seconds": 2}]


def cancelled_while_assembling(start_workers: StartWorkers) -> tuple[Workers, str]:
    """A run of two scenes whose assembly is held (every scene completed, its final key
    hashed), cancelled by the user there: (workers, project)."""
    workers = start_workers(failpoints=f"{ASSEMBLY}=hold", **SMALL)
    project_id = api.create_project("Assembling", "Cancelled.", scenes=TWO_SCENES)
    api.run_project(project_id)
    wait_for(lambda: held(state_dir(workers), ASSEMBLY), 120, "the assembly to be held")
    assert api.cancel_project(project_id).status == ProjectStatus.PENDING
    return workers, project_id


def assembled(workers: Workers, project_id: str) -> list[str]:
    """The outcomes of the project's assemblies so far, as the worker logged their results."""
    marker = f"'project_id': '{project_id}', 'run_id'"
    return [
        line.split("'outcome': '", 1)[1].split("'", 1)[0]
        for line in workers.service.log_text().splitlines()
        if "assemble_project" in line and marker in line and "'outcome': '" in line
    ]


def test_an_assembly_whose_run_was_cancelled_records_nothing_and_a_later_run_completes(
    start_workers: StartWorkers, redis_client: redis.Redis
) -> None:
    # Given a run cancelled while its assembly is held
    workers, project_id = cancelled_while_assembling(start_workers)
    # When the assembly goes on and every step left ends
    release(state_dir(workers), ASSEMBLY)
    wait_broker_idle(redis_client, 120, "the assembly to end")
    # Then its final video is not recorded: the run it was made for is no longer active
    assert assembled(workers, project_id) == ["run no longer active"]
    view = api.get_project(project_id)
    assert (view.status, view.final_video_s3_key) == (ProjectStatus.PENDING, None)
    assert_invariants(project_id)
    # And the user's next run completes with the one final video those scenes make (the
    # object the cancelled run left is reused, not built beside it)
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=120)
    assert view.status == ProjectStatus.COMPLETED, view
    assert [o.key for o in get_context().clips.list(final_prefix(project_id))] == [
        view.final_video_s3_key
    ]
    check_drill(project_id, workers)


def test_an_assembly_overtaken_by_a_regeneration_records_nothing_and_the_final_shows_it(
    start_workers: StartWorkers,
) -> None:
    # Given a run cancelled while its assembly is held, and a scene regenerated meanwhile
    workers, project_id = cancelled_while_assembling(start_workers)
    api.regenerate_scene(project_id, 2)
    # When the old assembly goes on, and the project heals
    release(state_dir(workers), ASSEMBLY)
    view = heal(project_id)
    # Then the final video recorded is the one the current scenes make (invariant 8), the old
    # assembly having recorded nothing
    assert view.status == ProjectStatus.COMPLETED, view
    outcomes = assembled(workers, project_id)
    assert outcomes.count("completed") == 1, outcomes
    stale = [o for o in outcomes if o not in ("completed", "nothing to assemble")]
    assert len(stale) == 1, outcomes
    assert stale[0] in ("run no longer active", "scenes changed during assembly"), outcomes
    paid = check_drill(project_id, workers, regenerated=True)
    assert paid == {1: 1, 2: 2}, paid


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
