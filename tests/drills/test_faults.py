"""Drills 4-8: provider faults, duplicate delivery, concurrent operations, bad input, load."""

from __future__ import annotations

import itertools
import random
import re
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from celery.exceptions import Reject
from celery.result import AsyncResult
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu import Connection

from mvpipe import api
from mvpipe.celery_app import app
from mvpipe.deps import get_context
from mvpipe.devstack.drills import cancelled_generations
from mvpipe.devstack.localstack import LocalStack
from mvpipe.errors import Conflict, InvalidInput
from mvpipe.messaging.dispatch import (
    ASSEMBLE_PROJECT,
    FINALIZE_PROJECT,
    GENERATE_SCENE,
    PLAN_SCENES,
    CeleryDispatcher,
)
from mvpipe.models import ProjectStatus, SceneStatus
from mvpipe.providers.faults import FaultPlan
from mvpipe.providers.local import LocalJobs
from tests.cli_batch import mvpipe_batch
from tests.conftest import Workers
from tests.drills.conftest import DRILL_SETTINGS, check_drill, hand_made_run, heal
from tests.helpers import assert_invariants, generations_per_scene, provider_calls, wait_for

StartWorkers = Callable[..., Workers]


#: The provider drill's fault rates; its seed is chosen for its project (`_fault_seed`).
TRANSIENT, PERMANENT = 0.3, 0.25


def test_provider_faults_transient_quota_and_permanent(start_workers: StartWorkers) -> None:
    # Given a project whose fault plan fails some scenes' jobs and refuses some submits (a
    # simulated 429: no job made), on a provider that takes 2 jobs at a time while mvpipe sends
    # up to 3 (a 429 too each time the third arrives while two run). Eight scenes: each kind
    # of fault is met whatever the size (the seed is chosen for it, and three slots against
    # the provider's two meet a full provider), and the provider's two at a time set the
    # run's floor (four waves of 2 s jobs; twelve scenes took six)
    scenes = range(1, 9)
    project_id = api.create_project("Faults", "Everything at once.", scene_count=len(scenes))
    seed = _fault_seed(project_id, scenes)
    plan = FaultPlan(transient=TRANSIENT, permanent=PERMANENT, seed=seed)
    workers = start_workers(
        **{
            **DRILL_SETTINGS,
            "local_faults": f"transient={TRANSIENT},permanent={PERMANENT},seed={seed}",
            "local_latency": "2",  # the third submit must find two jobs still running
            "local_max_concurrent": "2",
            "provider_concurrency": "3",
            # A scene waiting for the provider retries its submit every 1-2 s (the tests' 2 s
            # backoff cap, with its jitter): a slot the provider frees is taken within that,
            # and twice the attempts of a 4 s cap keep any scene from running out of them
            "max_attempts": "40",
        }
    )
    # When it runs
    api.run_project(project_id)
    view = heal(project_id)
    # Then each scene's one paid job made its clip, or failed where the plan says it fails
    assert_invariants(project_id)
    assert generations_per_scene(workers.ledger, project_id) == {n: 1 for n in scenes}
    doomed = {n for n in scenes if plan.permanent_fault(project_id, n, 1)}
    assert 0 < len(doomed) < len(scenes)
    failed = {s.sequence: s.last_error or "" for s in view.scenes if s.status == SceneStatus.FAILED}
    assert set(failed) == doomed, failed
    assert all("simulated permanent failure" in error for error in failed.values()), failed
    completed = {s.sequence for s in view.scenes if s.status == SceneStatus.COMPLETED}
    assert completed == set(scenes) - doomed
    assert view.status == ProjectStatus.FAILED
    # and on the way, submits met the plan's 429s and the full provider's: each submit call
    # was one of those or the job
    state = Path(workers.env["MVPIPE_LOCAL_STATE"])
    submits = provider_calls(state, project_id, "submit")
    assert provider_calls(state, project_id, "accepted") == {n: 1 for n in scenes}
    unavailable = sum(
        plan.transient_fault(project_id, n, "submit", call)
        for n, made in submits.items()
        for call in range(1, made + 1)
    )
    assert unavailable >= 1, submits
    # the full provider's 429s
    assert sum(submits.values()) - unavailable - len(scenes) >= 1, submits


def _fault_seed(project_id: str, scenes: range) -> int:
    """The first seed whose plan fails some of the project's scenes but not all (on their first
    job) and refuses some scene's first submit (the simulated 429): project ids are random, so
    no fixed seed would promise the drill meets every kind of fault."""
    for seed in itertools.count():
        plan = FaultPlan(transient=TRANSIENT, permanent=PERMANENT, seed=seed)
        doomed = sum(plan.permanent_fault(project_id, n, 1) for n in scenes)
        if 0 < doomed < len(scenes) and any(
            plan.transient_fault(project_id, n, "submit", 1) for n in scenes
        ):
            return seed
    raise AssertionError("unreachable")


def test_polls_answered_with_garbage_fail_their_scenes_not_loop(
    start_workers: StartWorkers,
) -> None:
    workers = start_workers(local_faults="garbage=1,seed=3", max_poll_errors="3", **DRILL_SETTINGS)
    project_id = api.create_project("Garbage", "Unreadable replies.", scene_count=2)
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=120)
    assert view.status == ProjectStatus.FAILED
    for scene in view.scenes:
        assert scene.status == SceneStatus.FAILED
        assert "3 times in a row" in (scene.last_error or "")
        assert "JSONDecodeError" in (scene.last_error or "")
    assert_invariants(project_id)
    assert generations_per_scene(workers.ledger, project_id) == {1: 1, 2: 1}


def test_duplicate_delivery_of_one_scene(start_workers: StartWorkers) -> None:
    workers = start_workers(**DRILL_SETTINGS)
    project_id, run_id = hand_made_run(get_context(), "Twice", "Same message.", 60)
    dispatcher = CeleryDispatcher(app)
    for _ in range(3):  # the same generate_scene message, delivered three times at once
        dispatcher.resume(project_id, 1, run_id, "local")
    _paid_once_and_healed(project_id, workers)


def test_broker_redelivery_of_one_scene_with_the_same_task_id(start_workers: StartWorkers) -> None:
    workers = start_workers(**DRILL_SETTINGS)
    project_id, run_id = hand_made_run(get_context(), "Redelivered", "Same id.", 60)
    task_id = str(uuid.uuid4())
    for _ in range(2):  # what a broker redelivering an unacked message does: one id, twice
        app.send_task(GENERATE_SCENE, args=[project_id, 1, run_id, "local"], task_id=task_id)
    _paid_once_and_healed(project_id, workers)


def _paid_once_and_healed(project_id: str, workers: Workers) -> None:
    ctx = get_context()
    wait_for(
        lambda: ctx.scenes.get(project_id, 1).status == SceneStatus.COMPLETED,  # type: ignore[union-attr]
        60,
        "the scene to complete",
    )
    assert generations_per_scene(workers.ledger, project_id) == {1: 1}
    heal(project_id)
    check_drill(project_id, workers)


def test_concurrent_run_regenerate_cancel_and_reconcile(start_workers: StartWorkers) -> None:
    workers = start_workers(**{**DRILL_SETTINGS, "local_latency": "0.5"})
    project_id = api.create_project("Storm", "Everyone at once.", scene_count=5)
    rng = random.Random(9)
    lock = threading.Lock()
    regenerated: Counter[int] = Counter()  # accepted regenerations: each may pay once more

    def regenerate() -> None:
        sequence = rng.randint(1, 5)
        api.regenerate_scene(project_id, sequence)
        with lock:
            regenerated[sequence] += 1

    actions: list[Callable[[], object]] = [
        lambda: api.run_project(project_id),
        regenerate,
        lambda: api.cancel_project(project_id),
        lambda: api.reconcile(project_id),
    ]
    errors: list[BaseException] = []

    def hammer(seed: int) -> None:
        local = random.Random(seed)
        for _ in range(12):
            try:
                local.choice(actions)()
            except Conflict:
                pass  # regenerate during an active run: expected and typed
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a hammer is still running"
    assert not errors, errors
    heal(project_id)
    paid = check_drill(project_id, workers, regenerated=True)
    # Nothing pays again without a user's action behind it: a regeneration of the scene, or a
    # cancel that stopped one of its jobs in flight (each may be paid for once more)
    jobs = LocalJobs(Path(workers.env["MVPIPE_LOCAL_STATE"]))
    stopped = cancelled_generations(workers.ledger, jobs, project_id)
    assert all(1 <= n <= 1 + regenerated[seq] + stopped[seq] for seq, n in paid.items()), (
        paid,
        regenerated,
        stopped,
    )


#: Characters a brief may not hold (newline and tab are allowed), bidi controls among them.
_FORBIDDEN = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)
_TRICKY_TEXT = st.sampled_from(
    ["ok", " ", "\n\t", "a\x00b", "line\nnext\ttab", "x\u2028y", "é", "a\u202eb", "\u2067x"]
)


def _valid_text(value: str, limit: int) -> bool:
    return 1 <= len(value) <= limit and bool(value.strip()) and not _FORBIDDEN.search(value)


def brief_is_valid(title: str, concept: str, scene_count: int | None, provider: str | None) -> bool:
    """docs/DESIGN.md's rules for a brief, written out apart from the code under test."""
    return (
        _valid_text(title, 200)
        and _valid_text(concept, 20_000)
        and (scene_count is None or 1 <= scene_count <= 999)
        and provider in (None, "local", "veo", "replicate")
    )


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
@given(
    title=st.one_of(st.text(max_size=300), _TRICKY_TEXT),
    concept=st.one_of(st.text(max_size=50), _TRICKY_TEXT, st.just("x" * 25_000)),
    scene_count=st.one_of(st.none(), st.integers(-5, 1200)),
    provider=st.sampled_from([None, "local", "veo", "", "LOCAL", "../local"]),
)
def test_bad_briefs_are_rejected_and_write_nothing(
    stack: LocalStack, title: str, concept: str, scene_count: int | None, provider: str | None
) -> None:
    table = get_context().table.model
    before = table.count()
    if not brief_is_valid(title, concept, scene_count, provider):
        with pytest.raises(InvalidInput):
            api.create_project(title, concept, scene_count=scene_count, provider=provider)
        assert table.count() == before
        return
    project_id = api.create_project(title, concept, scene_count=scene_count, provider=provider)
    view = api.get_project(project_id)  # accepted input really was valid, and stored as given
    assert view.title == title and view.concept == concept
    assert table.count() == before + 1


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    sequence=st.one_of(
        st.integers(-10, 0),
        st.integers(3, 2000),  # past the project's two scenes, or past 999
        st.text(max_size=5),
        st.none(),
        st.booleans(),
        st.floats(allow_nan=True),
    )
)
def test_bad_sequences_reach_the_sequence_check_and_write_nothing(
    stack: LocalStack, sequence: object
) -> None:
    ctx = get_context()
    project_id = _two_scene_project()
    before = ctx.table.query_project(project_id)
    with pytest.raises(InvalidInput, match="scene"):
        api.regenerate_scene(project_id, sequence)  # type: ignore[arg-type]
    after = ctx.table.query_project(project_id)
    assert [i.attribute_values for i in after] == [i.attribute_values for i in before]


def _two_scene_project() -> str:
    """A planned project (a valid id, so the call reaches the sequence check)."""
    return api.create_project("Seq", "Two.", scenes=[{"prompt": "a"}, {"prompt": "b"}])


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    project_id=st.one_of(
        st.text(max_size=60), st.sampled_from(["../../etc/passwd", "PROJECT#x", "%2e%2e/"])
    ),
)
def test_bad_ids_are_typed_errors(stack: LocalStack, project_id: str) -> None:
    # InvalidInput, not any MvpipeError: a bad id that skipped validation would reach the
    # store and come back as NotFound (an MvpipeError too)
    table = get_context().table.model
    before = table.count()
    for call in (
        lambda: api.get_project(project_id),
        lambda: api.run_project(project_id),
        lambda: api.cancel_project(project_id),
        lambda: api.regenerate_scene(project_id, 1),
    ):
        with pytest.raises(InvalidInput, match="invalid project id"):
            call()
    assert table.count() == before


def test_bad_ids_through_the_cli_and_malformed_messages(
    start_workers: StartWorkers, stack: LocalStack
) -> None:
    workers = start_workers(**DRILL_SETTINGS)
    bad_ids = ["../../etc", "x" * 5000, "\x1b[31mred", str(uuid.uuid1())]
    for result in mvpipe_batch(workers.env, *(("status", bad) for bad in bad_ids)):
        assert result.returncode == 2 and "Traceback" not in result.stderr
    # Malformed messages straight to the broker: each ends as a failed task that says why (a
    # `Reject` without requeue for a bad id, the call's own TypeError for a wrong arity), an
    # undecodable body is dropped with a log line naming it, and the worker lives on.
    rejected = [
        (app.send_task(GENERATE_SCENE, args=["../etc", "x", None, "local"]), Reject, "invalid"),
        (app.send_task(PLAN_SCENES, args=[{"not": "an id"}, None]), Reject, "invalid"),
        (app.send_task("mvpipe.analyse_song", args=["../etc", "run"]), Reject, "invalid"),
        (app.send_task(FINALIZE_PROJECT, args=[None, ["a list"], None, None]), Reject, "invalid"),
        (app.send_task(ASSEMBLE_PROJECT, args=[str(uuid.uuid4()), ""]), Reject, "run id"),
        (app.send_task(GENERATE_SCENE, args=[1, 2]), TypeError, "missing"),
    ]
    undecodable = str(uuid.uuid4())
    with Connection(stack.env["MVPIPE_BROKER_URL"]) as conn:
        conn.default_channel.basic_publish(
            conn.default_channel.prepare_message(
                b"{not json", content_type="application/json", content_encoding="utf-8",
                headers={"task": GENERATE_SCENE, "id": undecodable},
            ),
            exchange="mvpipe.video",
            routing_key="mvpipe.video",
        )  # fmt: skip
    for result, kind, why in rejected:
        wait_for(lambda r=result: r.state == "FAILURE", 60, f"{result.id} to fail")
        assert isinstance(result.result, kind) and why in str(result.result), result.result
    wait_for(
        lambda: re.search(f"Can't decode message body.*{undecodable}", workers.service.log_text()),
        60,
        "the undecodable message's log line",
    )
    assert AsyncResult(undecodable, app=app).state == "PENDING"  # nothing stored for it
    project_id = api.create_project("Alive", "Still consuming.", scene_count=2)
    api.run_project(project_id)
    heal(project_id, timeout=120)
    check_drill(project_id, workers)
    assert workers.service.proc.poll() is None


#: The load drill's size: 144 scenes, over three times the 40 provider slots, so most scenes
#: wait in line across 24 projects' lines and are woken by the releases that free their slots,
#: on 2 worker processes. What it checks (every run completes, every invariant holds, no scene
#: is paid twice) does not depend on a larger size; issue 6's 50 x 10 took 2.6 times as long
#: (46.9 s against 17.9 s alone on one machine), and `bench/load.py` runs 200 x 5.
LOAD_PROJECTS, LOAD_SCENES = 24, 6


def test_load_of_many_projects_at_once(start_workers: StartWorkers) -> None:
    """Many projects run at once on 2 worker processes, beyond the provider's quota: every one
    completes, none paid twice (`LOAD_PROJECTS` says why that size)."""
    workers = start_workers(
        concurrency=2,
        local_latency="0.5",
        local_max_concurrent="40",
        provider_concurrency="40",
        poll_seconds="0.3",
        # The scenes in line for a slot are woken by the release that frees theirs; their
        # own check (capped by the backoff) is only the fallback for a lost wake-up. At the
        # tests' 2 s cap those checks were half of the executions on 2 busy processes.
        backoff_max="30",
        # The load is the orchestration's: short rendered clips and a low output frame rate
        # keep each scene's media work (render, cut, assembly) at a fifth of the default's.
        local_clip_seconds="0.5",
        output_fps="4",
    )
    projects = [
        api.create_project(f"Load {n}", "Busy.", scene_count=LOAD_SCENES)
        for n in range(LOAD_PROJECTS)
    ]
    for project_id in projects:
        api.run_project(project_id)
    for project_id in projects:
        view = api.wait_project(project_id, timeout=600)
        assert view.status == ProjectStatus.COMPLETED
        check_drill(project_id, workers)
