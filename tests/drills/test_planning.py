"""Planning drills: two planners of one run, and a planner that always crashes."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator

import pytest

from mvpipe import api
from mvpipe.celery_app import app
from mvpipe.deps import build_context, get_context
from mvpipe.messaging.dispatch import CeleryDispatcher
from mvpipe.models import ProjectStatus, SceneSpec
from mvpipe.pipeline.plan import plan_run
from mvpipe.providers.base import Brief
from mvpipe.providers.local import LocalPlanner
from mvpipe.settings import get_settings
from tests.conftest import Workers
from tests.drills.conftest import DRILL_SETTINGS, check_drill, heal
from tests.helpers import wait_for
from tests.standins import ProviderStandIn

StartWorkers = Callable[..., Workers]


class HeldPlanner:
    """The local planner, holding its answer until the test lets it go (a stalled planner)."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.started = threading.Event()

    def plan(self, brief: Brief) -> list[SceneSpec]:
        self.started.set()
        assert self.release.wait(120), "the held planner was never released"
        return LocalPlanner().plan(brief)


def test_two_planners_of_one_run_never_reset_claimed_scenes(start_workers: StartWorkers) -> None:
    # Given a run whose root task is planning twice at once (a duplicate delivery, or a
    # takeover after a stall longer than the planning lock): one copy stalls in the planner...
    workers = start_workers(**{**DRILL_SETTINGS, "local_latency": "3"})
    ctx = get_context()
    project_id = api.create_project("Twin planners", "One.\nTwo.\nThree.", scene_count=3)
    run_id = str(uuid.uuid4())
    ctx.board.touch_run(run_id, 120)
    assert ctx.projects.win_run(project_id, run_id, ProjectStatus.GENERATING_SCENES) == run_id
    stalled = build_context(get_settings())
    release = threading.Event()
    planner = HeldPlanner(release)
    stalled._planners[stalled.settings.planner] = planner
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(plan_run(stalled, project_id, run_id)))
    thread.start()
    try:
        assert planner.started.wait(60)
        # ...while the other copy, on a real worker, plans and the scenes' jobs are paid for.
        CeleryDispatcher(app).start_run(project_id, run_id)
        wait_for(
            lambda: (
                all(s.provider_operation_id for s in api.get_project(project_id).scenes)
                and len(api.get_project(project_id).scenes) == 3
            ),
            60,
            "every scene to hold an operation",
        )
        before = {s.sequence: s.provider_operation_id for s in api.get_project(project_id).scenes}
    finally:
        # When the stalled planner comes back and writes its plan (whatever failed above:
        # the thread never outlives the test)...
        release.set()
        thread.join(60)
    assert not thread.is_alive()

    # Then it writes nothing: the claimed scenes keep their operations, and it starts no chord.
    assert outcome == [None]
    after = api.get_project(project_id)
    assert {s.sequence: s.provider_operation_id for s in after.scenes} == before
    done = api.wait_project(project_id, timeout=120)
    assert done.status == ProjectStatus.COMPLETED
    heal(project_id)
    check_drill(project_id, workers)


@pytest.fixture
def standin() -> Iterator[ProviderStandIn]:
    """The providers' stand-in server, stopped after the test however it ends."""
    server = ProviderStandIn().start()
    yield server
    server.stop()


def test_a_planner_that_keeps_failing_fails_the_planning_with_its_error(
    start_workers: StartWorkers, standin: ProviderStandIn
) -> None:
    # Given Gemini answering 503 to every call (the real SDK, against the local stand-in)
    standin.fail_next["gemini"] = [503] * 100
    env = {"GEMINI_API_KEY": "gemini-key-123456", "MVPIPE_GENAI_BASE_URL": standin.url}
    start_workers(env=env, planner="gemini", max_attempts="3", **DRILL_SETTINGS)
    project_id = api.create_project("Unplannable", "Busy planner.", scene_count=2)
    # When the project runs (and reconcile passes, taking stale runs over)
    api.run_project(project_id)
    view = heal(project_id, timeout=120)
    # Then planning gives up after its attempts, saying why, and no run is left
    assert view.status == ProjectStatus.FAILED and not view.scenes
    assert view.last_error and view.last_error.startswith("planning failed")
    assert "503" in view.last_error
    assert get_context().projects.get(project_id).active_run_id is None
    assert standin.calls["gemini"] <= 2 * 3
