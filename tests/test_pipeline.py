"""The task graph end to end: real redis-server, moto server and Celery worker processes."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from kombu.transport.redis import Channel

from mvpipe import api
from mvpipe.deps import get_context
from mvpipe.devstack.failpoints import held, release
from mvpipe.devstack.localstack import LocalStack
from mvpipe.errors import InvalidInput, NotFound
from mvpipe.media.probe import probe_video
from mvpipe.models import ProjectStatus, SceneStatus
from mvpipe.providers.base import JobState
from mvpipe.providers.fairness import ProjectLine
from mvpipe.providers.faults import FaultPlan
from mvpipe.providers.limiter import slot_member
from mvpipe.providers.local import LocalJobs
from tests.conftest import Workers
from tests.helpers import (
    assert_invariants,
    generations_per_scene,
    ledger,
    provider_calls,
    wait_broker_idle,
    wait_for,
)

SEP = Channel.sep  # the Redis transport's priority lists: <queue><sep><priority>

pytestmark = pytest.mark.integration

StartWorkers = Callable[..., Workers]


def test_a_twelve_scene_project_completes_with_playable_clips(start_workers: StartWorkers) -> None:
    workers = start_workers()
    project_id = api.create_project("Neon Rain", "City lights.\nRain on glass.", scene_count=12)
    result = api.run_project(project_id)
    view = api.wait_project(project_id, timeout=180)
    assert view.status == ProjectStatus.COMPLETED
    assert (view.scene_count, view.completed_scenes, view.failed_scenes) == (12, 12, 0)
    assert result.get(timeout=30)["status"] == "completed"  # the run's AsyncResult is finalize's
    clips = get_context().clips
    for scene in view.scenes:
        assert scene.status == SceneStatus.COMPLETED
        assert scene.original_video_clip_s3_key is not None
        facts = probe_video(clips.read(scene.original_video_clip_s3_key))
        assert facts.video_codec == "h264" and facts.frames > 1 and facts.video_seconds > 0
    assert generations_per_scene(workers.ledger, project_id) == {n: 1 for n in range(1, 13)}
    assert_invariants(project_id)

    # Running it again pays for nothing and changes no clip.
    keys = [s.original_video_clip_s3_key for s in view.scenes]
    api.run_project(project_id).get(timeout=60)
    again = api.wait_project(project_id, timeout=60)
    assert [s.original_video_clip_s3_key for s in again.scenes] == keys
    assert len(ledger(workers.ledger, project_id)) == 12
    assert again.status == ProjectStatus.COMPLETED


def test_regenerate_makes_exactly_one_new_generation(start_workers: StartWorkers) -> None:
    workers = start_workers()
    project_id = api.create_project("Regen", "One.\nTwo.\nThree.", scene_count=3)
    api.run_project(project_id)
    before = api.wait_project(project_id, timeout=120)
    assert before.status == ProjectStatus.COMPLETED

    api.regenerate_scene(project_id, 2)
    after = api.wait_project(project_id, timeout=120)
    assert after.status == ProjectStatus.COMPLETED
    assert generations_per_scene(workers.ledger, project_id) == {1: 1, 2: 2, 3: 1}
    old = {s.sequence: s for s in before.scenes}
    new = {s.sequence: s for s in after.scenes}
    assert new[2].original_video_clip_s3_key != old[2].original_video_clip_s3_key
    for seq in (1, 3):
        assert new[seq].original_video_clip_s3_key == old[seq].original_video_clip_s3_key
        assert new[seq].completed_at == old[seq].completed_at
    assert_invariants(project_id)


def test_transient_faults_still_complete_every_scene_once(start_workers: StartWorkers) -> None:
    # The first seed from 11 whose plan refuses some scene's first submit: project ids are
    # random, and at rate 0.3 no fault among 10 first submits would come once in 35 runs
    scenes = range(1, 11)
    project_id = api.create_project("Flaky", "Storm.\nCalm.", scene_count=len(scenes))
    seed = next(
        seed
        for seed in itertools.count(11)
        if any(FaultPlan(transient=0.3, seed=seed).transient_fault(project_id, n, "submit", 1)
               for n in scenes)
    )  # fmt: skip
    # 10 submissions per scene: P(a scene exhausts them at rate 0.3) is 6e-6.
    workers = start_workers(local_faults=f"transient=0.3,seed={seed}", max_attempts="10")
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=180)
    assert view.status == ProjectStatus.COMPLETED
    assert generations_per_scene(workers.ledger, project_id) == {n: 1 for n in scenes}
    assert_invariants(project_id)
    # and the faults were met: more submits than jobs the provider accepted
    state = Path(workers.env["MVPIPE_LOCAL_STATE"])
    assert provider_calls(state, project_id, "accepted") == {n: 1 for n in scenes}
    assert sum(provider_calls(state, project_id, "submit").values()) > len(scenes)


def test_permanent_faults_fail_every_scene_and_finalize_runs(start_workers: StartWorkers) -> None:
    workers = start_workers(local_faults="permanent=1.0,seed=3")
    project_id = api.create_project("Doomed", "Nothing works.", scene_count=4)
    result = api.run_project(project_id)
    view = api.wait_project(project_id, timeout=120)
    assert view.status == ProjectStatus.FAILED
    assert view.failed_scenes == 4 and view.completed_scenes == 0
    assert view.last_error and "4 of 4" in view.last_error
    for scene in view.scenes:
        assert scene.status == SceneStatus.FAILED
        assert scene.last_error and "permanent" in scene.last_error
    final = result.get(timeout=30)  # finalize_project's own result: it ran and released the run
    assert final["released"] is True and final["status"] == "failed"
    assert len(ledger(workers.ledger, project_id)) == 4  # failed once each, never resubmitted
    assert_invariants(project_id)


def test_waiting_does_not_hold_worker_slots(start_workers: StartWorkers) -> None:
    """20 scenes of 2 s on 2 worker processes: a blocking design has at most 2 jobs in flight.

    The provider's own job store counts what overlaps: a third job submitted while the first
    runs (2 s, where a submit takes tens of milliseconds) shows that nothing blocked.
    """
    workers = start_workers(
        concurrency=2, local_latency="2", local_max_concurrent="20", provider_concurrency="20"
    )
    project_id = api.create_project("Wide", "Many scenes at once.", scene_count=20)
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=240)
    assert view.status == ProjectStatus.COMPLETED
    assert generations_per_scene(workers.ledger, project_id) == {n: 1 for n in range(1, 21)}
    assert LocalJobs(Path(workers.env["MVPIPE_LOCAL_STATE"])).peak_in_flight() > 2


def test_concurrent_run_calls_start_one_run(start_workers: StartWorkers) -> None:
    workers = start_workers()
    project_id = api.create_project("Twice", "Only once.", scene_count=6)
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda _: api.run_project(project_id).id, range(4)))
    assert len(set(runs)) == 1
    assert api.wait_project(project_id, timeout=120).status == ProjectStatus.COMPLETED
    assert generations_per_scene(workers.ledger, project_id) == {n: 1 for n in range(1, 7)}


def test_cancel_stops_paying_and_a_later_run_resumes(
    start_workers: StartWorkers, redis_client: redis.Redis
) -> None:
    # Two jobs of 3 s at a time: paying for all 8 takes at least 9 s, far longer than a cancel.
    workers = start_workers(local_latency="3", provider_concurrency="2")
    project_id = api.create_project("Cancelled", "Stop.\nGo.", scene_count=8)
    api.run_project(project_id)
    wait_for(lambda: ledger(workers.ledger, project_id), 60, "the first paid submission")
    view = api.cancel_project(project_id)
    assert view.status in (ProjectStatus.PENDING, ProjectStatus.COMPLETED)
    cancelled = api.wait_project(project_id, timeout=30)
    # Submissions in flight at the moment of cancel may still land; after that, nothing.
    wait_for(
        lambda: all(s.status != SceneStatus.PROCESSING for s in api.get_project(project_id).scenes),
        60,
        "in-flight scenes to settle after cancel",
    )
    paid = len(ledger(workers.ledger, project_id))
    assert paid < 8
    # Every step left (timed checks for a slot, the chord's finalize) runs and ends: nothing
    # more is paid by the time no message is left to run.
    wait_broker_idle(redis_client, 120, "every step left after cancel to end")
    assert len(ledger(workers.ledger, project_id)) == paid
    assert cancelled.status == ProjectStatus.PENDING and len(cancelled.scenes) == 8
    # (read once every step has ended: a claim in flight at the cancel is `processing` until
    # its submission lands and is stopped)
    settled = api.get_project(project_id)
    assert all(s.status in (SceneStatus.PENDING, SceneStatus.COMPLETED) for s in settled.scenes)
    assert_invariants(project_id)

    # The later run on a worker whose jobs are short (nothing runs now: the one above can go),
    # with the same provider state and ledger.
    before = generations_per_scene(workers.ledger, project_id)
    scenes = api.get_project(project_id).scenes
    kept = {s.sequence for s in scenes if s.status == SceneStatus.COMPLETED}
    workers.service.kill()
    start_workers(local_latency="0.5", provider_concurrency="2", local_ledger=str(workers.ledger))
    api.run_project(project_id)
    done = api.wait_project(project_id, timeout=120)
    assert done.status == ProjectStatus.COMPLETED
    assert_invariants(project_id)
    # The resumed run pays no scene that kept its clip, and every other one at most once more
    # (a job the cancel stopped was paid for; its scene needs a new one).
    after = generations_per_scene(workers.ledger, project_id)
    assert all(after[n] == before[n] for n in kept)
    assert all(1 <= after[n] <= before[n] + 1 for n in range(1, 9) if n not in kept)


def test_a_job_that_never_ends_is_stopped_and_its_scene_failed_saying_it_was_paid(
    start_workers: StartWorkers,
) -> None:
    # Given jobs that run far longer than the longest a job may run
    workers = start_workers(local_latency="600", max_job_seconds="1")
    project_id = api.create_project("Stuck", "It never ends.", scene_count=1)
    # When the project runs
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=120)
    # Then the job was stopped at the provider and the scene failed saying why, paid once,
    # its operation id kept; the run is released and the job's quota slot freed
    assert view.status == ProjectStatus.FAILED
    scene = view.scenes[0]
    operation_id = scene.provider_operation_id
    assert scene.status == SceneStatus.FAILED and operation_id is not None
    assert scene.last_error is not None
    assert "generate job ran over 1 s (paid): cancelled at the provider" in scene.last_error
    assert operation_id in scene.last_error
    ctx = get_context()
    assert ctx.video_provider("local").poll(operation_id).state == JobState.CANCELLED
    assert generations_per_scene(workers.ledger, project_id) == {1: 1}
    assert ctx.limiter.slots_held("local").get(project_id, 0) == 0
    assert_invariants(project_id)


def test_quota_caps_jobs_in_flight(start_workers: StartWorkers) -> None:
    workers = start_workers(local_latency="1", provider_concurrency="4", local_max_concurrent="8")
    project_id = api.create_project("Quota", "Four at a time.", scene_count=20)
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=240)
    assert view.status == ProjectStatus.COMPLETED and view.failed_scenes == 0
    peak = LocalJobs(Path(workers.env["MVPIPE_LOCAL_STATE"])).peak_in_flight()
    assert 1 <= peak <= 4
    assert all(s.attempts == 1 for s in view.scenes)  # waiting for a slot spends no attempt
    assert generations_per_scene(workers.ledger, project_id) == {n: 1 for n in range(1, 21)}
    # Waiters were started by the releases that freed their slots, not by their own timers
    # (those fall back after MVPIPE_BACKOFF_MAX, far longer than this project ran).
    assert "woke 1 waiting scene(s)" in workers.service.log_text()
    assert_invariants(project_id)


def test_a_freed_slot_wakes_its_waiter_before_the_releasers_next_stage_ends(
    start_workers: StartWorkers,
) -> None:
    # One slot, two scenes: the second waits, parked. The first's finished poll frees the slot
    # and goes on to its cut in the same execution, held there. The waiter must be woken by the
    # release itself, not once that cut is over: its own timed check comes 10 polls of 5 s
    # later (at most MVPIPE_BACKOFF_MAX), far past this wait.
    workers = start_workers(
        local_latency="0.5",
        provider_concurrency="1",
        poll_seconds="5",
        backoff_max="60",
        failpoints="during_cut=hold",
    )
    state_dir = Path(workers.env["MVPIPE_STATE_DIR"])
    project_id = api.create_project("Hand-over", "First.\nSecond.", scene_count=2)
    api.run_project(project_id)
    wait_for(lambda: held(state_dir, "during_cut"), 60, "the first scene's cut to be held")
    wait_for(
        lambda: len(generations_per_scene(workers.ledger, project_id)) == 2,
        30,
        "the waiter's job accepted while the releaser's cut is held",
    )
    assert held(state_dir, "during_cut")  # the releaser's next stage has not finished
    release(state_dir, "during_cut")
    view = api.wait_project(project_id, timeout=120)
    assert view.status == ProjectStatus.COMPLETED
    assert generations_per_scene(workers.ledger, project_id) == {1: 1, 2: 1}
    assert_invariants(project_id)


def large_then_small_parked(
    start_workers: StartWorkers, *, latency: int, slots: int, large_scenes: int, small_scenes: int
) -> tuple[Workers, str, str]:
    """One worker process and `slots` provider slots: a large project started first fills
    them, then a small project's scenes all wait parked in line. Returns (workers, large,
    small) at that moment."""
    workers = start_workers(
        concurrency=1,
        local_latency=str(latency),
        provider_concurrency=str(slots),
        poll_seconds="5",
        backoff_max="60",
    )
    ctx = get_context()
    large = api.create_project("Large", "Many.", scene_count=large_scenes)
    small = api.create_project("Small", "Few.", scene_count=small_scenes)
    api.run_project(large)
    wait_for(lambda: len(ledger(workers.ledger, large)) == slots, 60, "the large project's jobs")
    api.run_project(small)
    waiting = {slot_member(small, n) for n in range(1, small_scenes + 1)}
    wait_for(
        lambda: waiting <= ctx.limiter.snapshot("local").parked,
        60,
        "the small project's scenes parked in line",
    )
    return workers, large, small


def test_a_slot_freed_for_a_project_holding_fewer_starts_its_job_before_the_releasers_cut(
    start_workers: StartWorkers,
) -> None:
    # One worker process, two slots. A large project's two scenes hold them; a small project's
    # two scenes wait, parked. The first finished poll frees a slot for the small project while
    # the large one still holds more (its other job, plus the slot it freed): the newcomer's
    # submission must run before the releaser's cut (queued behind the wake-up), not inline in
    # the releasing execution. (The second release leaves the large project holding no more
    # than the small one: its cut need not wait, the next test's rule.)
    workers, large, small = large_then_small_parked(
        start_workers, latency=4, slots=2, large_scenes=2, small_scenes=2
    )
    for project_id in (large, small):
        assert api.wait_project(project_id, timeout=120).status == ProjectStatus.COMPLETED
    log = workers.service.log_text()
    freed = log.index(f"slot freed by {large}/")
    sequence = int(log[freed:].split("/", 2)[1].split(":")[0])
    started = min(log.index(f"lease won project={small} sequence={n} ") for n in (1, 2))
    assert started < log.index(f"cut recorded: projects/{large}/scenes/{sequence:03d}/")
    assert generations_per_scene(workers.ledger, small) == {1: 1, 2: 1}
    assert generations_per_scene(workers.ledger, large) == {1: 1, 2: 1}


def test_a_lighter_project_handing_its_slot_to_a_busier_one_cuts_before_the_woken_job(
    start_workers: StartWorkers,
) -> None:
    # One worker process, three slots. A large project holds them all and keeps scenes waiting;
    # a small project's only scene gets a freed slot. When its job finishes, its slot goes to a
    # large scene: the small project holds fewer slots than the large one even counting that
    # slot, so its cut goes on in the same execution, not queued behind the large scene's
    # wake-up (a small project's media work is not kept behind a large one's jobs).
    workers, large, small = large_then_small_parked(
        start_workers, latency=2, slots=3, large_scenes=12, small_scenes=1
    )
    for project_id in (small, large):
        assert api.wait_project(project_id, timeout=180).status == ProjectStatus.COMPLETED
    log = workers.service.log_text()
    handed = log.index(f"slot freed by {small}/1: woke 1 waiting scene(s)")
    assert log.index(f"cut recorded: projects/{small}/") < log.index(
        f"lease won project={large} ", handed
    )
    assert generations_per_scene(workers.ledger, small) == {1: 1}
    assert generations_per_scene(workers.ledger, large) == {n: 1 for n in range(1, 13)}
    assert_invariants(large)


def test_a_project_holding_as_many_as_the_woken_ones_cuts_before_the_woken_job(
    start_workers: StartWorkers,
) -> None:
    # One worker process, four slots. A large project fills them; a small project's two scenes
    # wait. The large project's wave frees two slots for the small scenes and two for its own,
    # so each then holds two. When a small job finishes, its slot goes to a large scene: the
    # small project held as many slots as the large one, its equal, so its cut goes on in the
    # same execution rather than behind the woken large scene (a tie deferred it before).
    workers, large, small = large_then_small_parked(
        start_workers, latency=2, slots=4, large_scenes=12, small_scenes=2
    )
    for project_id in (small, large):
        assert api.wait_project(project_id, timeout=180).status == ProjectStatus.COMPLETED
    log = workers.service.log_text()
    handed = log.index(f"slot freed by {small}/")
    sequence = int(log[handed:].split("/", 2)[1].split(":")[0])
    assert log.index(f"cut recorded: projects/{small}/scenes/{sequence:03d}/") < log.index(
        f"lease won project={large} ", handed
    )
    assert generations_per_scene(workers.ledger, small) == {1: 1, 2: 1}
    assert generations_per_scene(workers.ledger, large) == {n: 1 for n in range(1, 13)}
    assert_invariants(large)


def test_a_later_project_joins_the_line_before_a_large_ones_scenes_beyond_the_quota(
    start_workers: StartWorkers, redis_client: redis.Redis
) -> None:
    # Two slots. A large project's three first messages and then a small project's one are all
    # queued before any worker reads them (only the planner runs). The large project's scene
    # beyond the quota can only wait, so it goes behind the small project's first claim: the
    # small project joins the line (takes its ticket) before it. In first come, first served
    # order it would be read after it, a whole dispatch of waiters later (at a dispatch of
    # hundreds of scenes, after the first slots free: their frees then go to the large one).
    # One scene beyond the quota shows that order as well as more would; the 5 s jobs are the
    # margin for every scene beyond it to be parked while the first two run.
    settings = {
        "local_latency": "5",
        "provider_concurrency": "2",
        "poll_seconds": "5",
        "backoff_max": "60",
    }
    start_workers(concurrency=1, queues="mvpipe.plan", **settings)
    large = api.create_project("Large", "Many.", scene_count=3)
    small = api.create_project("Small", "One.", scene_count=1)
    api.run_project(large)
    queued = {pri: f"mvpipe.video{SEP}{pri}" if pri else "mvpipe.video" for pri in (0, 3)}

    def counts() -> tuple[int, int]:
        return redis_client.llen(queued[0]), redis_client.llen(queued[3])

    wait_for(lambda: counts() == (2, 1), 60, "the large project's first messages")
    api.run_project(small)
    wait_for(lambda: counts() == (3, 1), 60, "the small project's first message")
    workers = start_workers(concurrency=1, queues="mvpipe.video,mvpipe.media", **settings)
    ctx = get_context()
    waiting = {slot_member(large, 3), slot_member(small, 1)}

    def lines_once_parked() -> tuple[ProjectLine, ...]:
        snap = ctx.limiter.snapshot("local")
        return snap.lines if snap.parked == waiting else ()

    lines = wait_for(lines_once_parked, 60, "every scene beyond the quota parked")
    tickets = {line.project: line.ticket for line in lines}
    assert tickets[small] < tickets[large]
    for project_id in (large, small):
        assert api.wait_project(project_id, timeout=120).status == ProjectStatus.COMPLETED
    assert generations_per_scene(workers.ledger, large) == {n: 1 for n in range(1, 4)}
    assert generations_per_scene(workers.ledger, small) == {1: 1}


def test_runs_are_finalized_while_the_polling_worker_is_busy(
    start_workers: StartWorkers, tmp_path: Path
) -> None:
    # The local stack's layout: a worker on every queue beside a control worker that takes no
    # polls. A polling worker can be busy for a while (with late acks and prefetch 1, a wave of
    # its due polls keeps it from fetching anything else); a run's finalize must not wait for
    # it. The busy worker keeps at most the one message its pending fetch had already taken, so
    # of two completed projects finalized again while its only process is held in a cut, one
    # at least is finalized before the cut goes on.
    first = start_workers(concurrency=1, control=True)
    done = [api.create_project(f"Done {n}", "One.", scene_count=1) for n in range(2)]
    for project_id in done:
        api.run_project(project_id)
    for project_id in done:
        assert api.wait_project(project_id, timeout=120).status == ProjectStatus.COMPLETED
    first.service.stop()

    held_dir = tmp_path / "held"
    busy = start_workers(concurrency=1, failpoints="during_cut=hold", state_dir=str(held_dir))
    busy_id = api.create_project("Busy", "Two.", scene_count=1)
    api.run_project(busy_id)
    wait_for(lambda: held(held_dir, "during_cut"), 60, "the polling worker held in a cut")
    finalizes = [api.run_project(project_id) for project_id in done]
    wait_for(lambda: any(r.ready() for r in finalizes), 60, "a finalize beside the held cut")
    assert not api.get_project(busy_id).completed_scenes  # its cut was held all along
    release(held_dir, "during_cut")
    assert api.wait_project(busy_id, timeout=120).status == ProjectStatus.COMPLETED
    for result in finalizes:
        assert result.get(timeout=60)["status"] == ProjectStatus.COMPLETED
    assert generations_per_scene(busy.ledger, busy_id) == {1: 1}
    assert generations_per_scene(first.ledger, done[0]) == {1: 1}


def test_bad_input_to_every_api_function_is_typed_and_writes_nothing(stack: LocalStack) -> None:
    ctx = get_context()
    before = ctx.table.model.count()
    bad_ids = ["", "nope", "../../etc/passwd", str(uuid.uuid1()), "A" * 36, None, 42]
    for bad in bad_ids:
        for call in (
            api.get_project,
            api.run_project,
            api.cancel_project,
            lambda p: api.regenerate_scene(p, 1),
            lambda p: api.wait_project(p, timeout=0.1),
        ):
            with pytest.raises(InvalidInput):
                call(bad)  # type: ignore[arg-type]
    missing = str(uuid.uuid4())
    for call in (api.get_project, api.run_project, api.cancel_project):
        with pytest.raises(NotFound):
            call(missing)
    for seq in (0, 1000, -1, "1", True):
        with pytest.raises(InvalidInput):
            api.regenerate_scene(missing, seq)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        api.list_projects("bogus")
    assert ctx.table.model.count() == before
