"""One scene's steps in this process, against the real redis-server and moto server, with a
provider double given to the context (the way a worker builds its providers): the paths real
providers reach only by misbehaving."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pytest
import redis
from celery.exceptions import Reject

from bench.countingproxy import DYNAMO_READS, CountingProxy
from mvpipe import hooks
from mvpipe.celery_app import app
from mvpipe.deps import Context, build_context, get_context, reset_context
from mvpipe.devstack.localstack import LocalStack
from mvpipe.errors import (
    BrokerUnavailable,
    Conflict,
    PermanentProviderError,
    StoreNotTried,
    StoreUnavailable,
    TransientProviderError,
)
from mvpipe.messaging.dispatch import CeleryDispatcher
from mvpipe.models import ProjectStatus, SceneStatus
from mvpipe.pipeline.cancel import cancel_project
from mvpipe.pipeline.generate import SceneJob
from mvpipe.pipeline.operation import PaidOperation
from mvpipe.pipeline.reconcile import reconcile
from mvpipe.pipeline.runs import regenerate, resume_freed, start_run
from mvpipe.pipeline.stage_provider import VideoGeneration
from mvpipe.pipeline.stages import GENERATE, LIPSYNC
from mvpipe.pipeline.steps import LeasePending, Next, RecordPending, Step
from mvpipe.providers.base import JobState, JobStatus, VideoRequest
from mvpipe.providers.limiter import QuotaLimiter, SlotDecision, job_member, slot_member
from mvpipe.providers.render import render_clip
from mvpipe.queues import MEDIA_QUEUE, VIDEO_QUEUE
from mvpipe.settings import get_settings
from mvpipe.states import SCENE_CHECK_POLLS
from mvpipe.store.claim_outcomes import Claim
from mvpipe.store.pauses import retry_until
from mvpipe.store.records import SceneRecord
from mvpipe.store.runboard import RunBoard
from mvpipe.store.scenes import SceneStore
from mvpipe.store.stage_fields import LIP_SYNCED, WORKING
from mvpipe.store.table import project_pk, scene_sk
from tests.helpers import new_project, wait_for, waiting_for_lip_sync
from tests.test_runs import RecordingDispatcher
from tests.test_store import claim

pytestmark = pytest.mark.integration

SECRET = "r8_not-a-real-token-0123456789"


class Misbehaving:
    """A video provider that accepts jobs and answers polls with what `answer` says."""

    name = "local"
    can_cancel = True

    def __init__(self) -> None:
        self.answer: BaseException | JobStatus = JobStatus(JobState.RUNNING)
        self.submit_error: BaseException | None = None
        self.submitted = 0
        self.cancelled: list[str] = []
        self.cancel_errors: dict[str, BaseException] = {}

    def submit(self, request: VideoRequest) -> str:
        if self.submit_error is not None:
            raise self.submit_error
        self.submitted += 1
        return f"op-{uuid.uuid4().hex}"

    def poll(self, operation_id: str) -> JobStatus:
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer

    def download(self, status: JobStatus) -> bytes:
        return status.video or b""

    def cancel(self, operation_id: str) -> bool:
        self.cancelled.append(operation_id)
        if operation_id in self.cancel_errors:
            raise self.cancel_errors[operation_id]
        return self.cancel_confirmed

    cancel_confirmed = True


@pytest.fixture
def provider() -> Misbehaving:
    return Misbehaving()


@pytest.fixture(scope="module")
def storage(stack: LocalStack) -> LocalStack:
    """The session's servers with the table and bucket made: a test that builds its own
    context must not rely on an earlier test having made them. Once a module: nothing deletes
    them, and making sure cost each test ~0.3 s."""
    build_context(get_settings()).ensure_storage()
    return stack


@pytest.fixture
def ctx(
    storage: LocalStack, provider: Misbehaving, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Context]:
    monkeypatch.setenv("REPLICATE_API_TOKEN", SECRET)
    yield provider_context(provider)


def provider_context(provider: Misbehaving, **update: Any) -> Context:
    """A context whose local provider is `provider`, on a quota of its own (settings changed
    by `update`)."""
    context = build_context(get_settings().model_copy(update=update))
    context.limiter = QuotaLimiter(context.redis, prefix=f"test:{uuid.uuid4()}")  # own quota
    context._providers["local"] = provider
    return context


def polling_scene(ctx: Context) -> tuple[str, str, str]:
    """A scene whose job was accepted and recorded: (project, run, operation)."""
    project_id, run_id = new_project(ctx, 1)
    token = uuid.uuid4().hex
    assert claim(ctx, project_id, run_id, token) == Claim.WON
    operation_id = f"op-{uuid.uuid4().hex}"
    assert (
        ctx.scenes.record_operation(
            project_id, 1, token=token, operation_id=operation_id, run_id=run_id
        )
        == Claim.WON
    )
    return project_id, run_id, operation_id


def job(ctx: Context, project_id: str, run_id: str) -> SceneJob:
    """A fresh execution, as a redelivered or re-queued message gets."""
    return SceneJob(ctx, project_id, 1, run_id, "local")


def test_a_poll_that_keeps_crashing_fails_the_scene_past_the_limit(
    ctx: Context, provider: Misbehaving
) -> None:
    project_id, run_id, operation_id = polling_scene(ctx)
    provider.answer = ValueError(f"200 with a non-JSON body: <html>token={SECRET}</html>")
    limit = ctx.settings.max_poll_errors
    for _ in range(limit):
        step = job(ctx, project_id, run_id).step(operation_id)
        assert step.next == Next.POLL and step.carry["operation_id"] == operation_id
    assert job(ctx, project_id, run_id).step(operation_id).next == Next.DONE
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.status == SceneStatus.FAILED
    assert "non-JSON body" in (scene.last_error or "") and SECRET not in (scene.last_error or "")


def test_a_poll_that_kills_its_worker_counts_too_and_an_answer_resets_the_count(
    ctx: Context, provider: Misbehaving
) -> None:
    project_id, run_id, operation_id = polling_scene(ctx)
    limit = ctx.settings.max_poll_errors
    provider.answer = SystemExit("worker killed mid-poll")
    for _ in range(limit - 1):
        with pytest.raises(SystemExit):
            job(ctx, project_id, run_id).step(operation_id)
    provider.answer = JobStatus(JobState.RUNNING)  # answered: the count starts again
    assert job(ctx, project_id, run_id).step(operation_id).next == Next.POLL
    provider.answer = SystemExit("worker killed mid-poll")
    for _ in range(limit):
        with pytest.raises(SystemExit):
            job(ctx, project_id, run_id).step(operation_id)
    assert job(ctx, project_id, run_id).step(operation_id).next == Next.DONE
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.status == SceneStatus.FAILED
    assert "without an answer" in (scene.last_error or "")


def test_no_submission_when_the_lease_has_no_room_left_for_submit_and_record(
    storage: LocalStack, provider: Misbehaving
) -> None:
    # The claim's own store retries can eat the lease; here the lease is that short from the
    # start (the settings check forbids it, the copy skips the check).
    settings = get_settings().model_copy(update={"lease_seconds": 1.0})
    tight = build_context(settings)
    tight._providers["local"] = provider
    project_id, run_id = new_project(tight, 1)
    before = tight.scenes.get(project_id, 1)
    step = SceneJob(tight, project_id, 1, run_id, "local").step()
    assert step.next == Next.RETRY_SUBMIT
    assert provider.submitted == 0
    # A claim begun past its budget is not tried (`StoreNotTried`): the scene is as it was,
    # not claimed and given back, and no step is left owing its give-back
    assert tight.scenes.get(project_id, 1) == before


def test_store_retries_on_the_submission_path_stop_at_the_lease(stack: LocalStack) -> None:
    settings = get_settings().model_copy(
        update={"store_timeout_seconds": 1.0, "store_retry_seconds": 3600.0}
    )
    table = build_context(settings).table
    moto = next(s for s in stack.services if s.name == "moto")
    outcome: list[BaseException | None] = []

    def read_within_a_lease() -> None:
        try:
            with retry_until(time.time() + 1):
                table.get("PROJECT#none", "METADATA")
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    moto.pause()
    try:
        reader = threading.Thread(target=read_within_a_lease)
        reader.start()
        reader.join(timeout=60)  # an hour of retries without the bound
        assert not reader.is_alive()
    finally:
        moto.resume()
    assert len(outcome) == 1 and isinstance(outcome[0], StoreUnavailable)


def test_one_store_call_is_one_request_so_the_lease_bound_holds(stack: LocalStack) -> None:
    # A DynamoDB endpoint that accepts connections and never answers: each request is one
    # connection that times out. Only the store's own retry (bounded by the lease) may resend;
    # retries hidden inside the client would each cost a whole timeout past the bound.
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    port = listener.getsockname()[1]
    settings = get_settings().model_copy(
        update={
            "dynamodb_endpoint": f"http://127.0.0.1:{port}",
            "store_timeout_seconds": 1.0,
            "store_retry_seconds": 3600.0,
        }
    )
    table = build_context(settings).table
    try:
        with pytest.raises(StoreUnavailable), retry_until(time.time() + 0.5):
            table.get("PROJECT#none", "METADATA")
    finally:
        stop.set()
        acceptor.join(timeout=10)
        listener.close()
        for conn in accepted:
            conn.close()
    assert len(accepted) == 1


def test_a_bounded_store_call_starts_no_try_after_its_bound(stack: LocalStack) -> None:
    # A DynamoDB endpoint that answers every request at once with a 500 (an outage): the
    # store's retries pause between tries, and a pause that ends past a lease-bounded path's
    # bound must end the call instead, or its last try answers past the lease and the marks
    # sized on it (`Settings.claim_mark_after`)

    class Down(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = b'{"__type": "com.amazonaws.dynamodb.v20120810#InternalServerError"}'
            self.send_response(500)
            self.send_header("Content-Type", "application/x-amz-json-1.0")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Down)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    serving.start()
    settings = get_settings().model_copy(
        update={
            "dynamodb_endpoint": f"http://127.0.0.1:{server.server_address[1]}",
            "store_retry_seconds": 3600.0,
        }
    )
    table = build_context(settings).table
    sent: list[float] = []  # when each try left the client (botocore's last event before it)
    table._connection().client.meta.events.register(
        "before-send.dynamodb", lambda **_: sent.append(time.time())
    )
    try:
        bound = time.time() + 1.0
        with pytest.raises(StoreUnavailable), retry_until(bound):
            table.get("PROJECT#none", "METADATA")
        tried = len(sent)
        # and one begun past its bound is not tried at all, which its caller can tell
        with pytest.raises(StoreNotTried), retry_until(time.time() - 1) as late:
            table.get("PROJECT#none", "METADATA")
    finally:
        server.shutdown()
        serving.join(timeout=10)
        server.server_close()
    assert tried >= 2, sent  # it did retry within its bound
    # A try leaves a few milliseconds after the check before it (request building); the old
    # code's last try came a whole pause (50-800 ms) after its last check
    assert max(sent) < bound + 0.05, (max(sent) - bound, sent)
    assert len(sent) == tried and not late.tried


def slot_holder(ctx: Context, member: str) -> bool:
    return ctx.redis.zscore(f"{ctx.limiter.prefix}:local:slots", member) is not None


def job_slot(ctx: Context, project_id: str, operation_id: str) -> bool:
    """Whether the stored job holds its own slot, and its scene's submission slot is gone
    (moved, never counted twice)."""
    moved = not slot_holder(ctx, slot_member(project_id, 1))
    return moved and slot_holder(ctx, job_member(project_id, 1, "generate", operation_id))


def waits(ctx: Context, member: str) -> bool:
    return any(member in line.waiters for line in ctx.limiter.snapshot("local").lines)


def test_a_duplicate_whose_claim_fails_leaves_the_owners_slot_alone(
    ctx: Context, provider: Misbehaving
) -> None:
    project_id, run_id = new_project(ctx, 1)
    ctx.board.touch_run(run_id, 60)
    seen_by_duplicate = ctx.scenes.get(project_id, 1)  # read before the owner claimed
    assert seen_by_duplicate is not None
    owner = job(ctx, project_id, run_id)
    step = owner.step()
    assert step.next == Next.POLL and provider.submitted == 1
    operation_id = step.carry["operation_id"]
    assert job_slot(ctx, project_id, operation_id)
    duplicate = job(ctx, project_id, run_id)
    assert duplicate.submit(seen_by_duplicate).next == Next.DONE  # its claim fails
    # the owner's job still counts against the quota, and the duplicate's own slot is freed
    assert job_slot(ctx, project_id, operation_id)
    assert ctx.limiter.slots_held("local") == {project_id: 1}
    assert provider.submitted == 1


def test_a_waiter_of_a_cancelled_run_leaves_the_line(ctx: Context) -> None:
    project_id, run_id = new_project(ctx, 1)
    waiter = job(ctx, project_id, run_id)
    limit = ctx.settings.concurrency_for("local")
    holders = [slot_member(f"holder-{uuid.uuid4().hex}", 1) for _ in range(limit)]
    for member in holders:
        assert ctx.limiter.acquire("local", member, limit=limit, ttl=60, line_ttl=60).granted
    try:
        assert waiter.step().next == Next.WAIT_SLOT
        assert waits(ctx, waiter.member)
        ctx.board.mark_cancelled(run_id)
        assert job(ctx, project_id, run_id).step().next == Next.DONE
        assert not waits(ctx, waiter.member)
    finally:
        for member in holders:
            ctx.limiter.release("local", member, limit=limit)


def test_unclassified_submit_errors_are_scrubbed_before_they_are_stored(
    ctx: Context, provider: Misbehaving
) -> None:
    project_id, run_id = new_project(ctx, 1)
    provider.submit_error = ValueError(f"unexpected reply from https://api?token={SECRET}")
    step = job(ctx, project_id, run_id).step()
    assert step.next == Next.RETRY_SUBMIT
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.status == SceneStatus.PENDING
    assert "ValueError: unexpected reply" in (scene.last_error or "")
    assert SECRET not in (scene.last_error or "")


def accepted_job(ctx: Context, *, lease_seconds: float) -> tuple[str, str, str, str]:
    """A scene whose job the provider accepted under a lease of `lease_seconds` (negative: long
    expired, as after a store outage), its id not recorded yet: (project, run, token, job)."""
    project_id, run_id = new_project(ctx, 1)
    token = uuid.uuid4().hex
    assert claim(ctx, project_id, run_id, token, now=time.time() + lease_seconds - 60) == Claim.WON
    return project_id, run_id, token, f"op-{uuid.uuid4().hex}"


def redo(ctx: Context, project_id: str, run_id: str, operation_id: str, token: str) -> Any:
    """The record's redo step, as the outage retry carries it."""
    return job(ctx, project_id, run_id).step(operation_id, token=token, attempt=1)


@pytest.fixture
def short_owed_mark(storage: LocalStack, provider: Misbehaving) -> Iterator[Context]:
    """The process's own context (what a task builds), its owed marks a few seconds long."""
    short = {"LIVENESS_SLACK_SECONDS": "0.5", "STORE_RETRY_SECONDS": "0.5"}
    # (a provider call's deadline within that liveness, as the settings require)
    short["PROVIDER_TIMEOUT_SECONDS"] = "1"
    with pytest.MonkeyPatch.context() as patched:
        for name, value in {**short, "STORE_TIMEOUT_SECONDS": "0.5"}.items():
            patched.setenv(f"MVPIPE_{name}", value)
        reset_context()
        context = get_context()
        context._providers["local"] = provider
        try:
            yield context
        finally:
            reset_context()
    reset_context()


class Published(Exception):
    """A retry published at last (what `refused_then_published` returns)."""


def refused_then_published(
    refused_until: float, operation_id: str, token: str
) -> Callable[[Any, Exception, dict[str, Any]], Exception]:
    """An `outage_retry` whose publish the broker refuses (Celery's `Reject`, the message
    deleted) until `refused_until`, and then sends the redo of the job `operation_id`."""

    def retry(task: Any, exc: Exception, kwargs: dict[str, Any]) -> Exception:
        if time.monotonic() < refused_until:
            raise Reject("OOM command not allowed when used memory > 'maxmemory'", requeue=False)
        assert kwargs["operation_id"] == operation_id and kwargs["token"] == token
        return Published()

    return retry


def refused_redo(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str, str, str, float]:
    """A job accepted under a lease that ran out (its record owed), and a broker that refuses
    its retry for longer than the scene's owed mark lasts: the job's ids, and when the
    refusal ends."""
    from mvpipe.tasks.base import MvpipeTask  # the app's configuration is read once the stack

    project_id, run_id, token, operation_id = accepted_job(ctx, lease_seconds=-30)
    refused_until = time.monotonic() + ctx.settings.owed_write_seconds("local") + 1
    monkeypatch.setattr(
        MvpipeTask, "outage_retry", refused_then_published(refused_until, operation_id, token)
    )
    return project_id, run_id, token, operation_id, refused_until


def redo_published(project_id: str, run_id: str, operation_id: str, token: str) -> None:
    """The job's redo run in its task: its retry is published at last (`Published`)."""
    from mvpipe.tasks.generate import generate_scene  # is up (its broker): imported here

    with pytest.raises(Published):
        generate_scene.run(
            project_id, 1, run_id, "local", operation_id=operation_id, token=token, attempt=1
        )


def test_an_owed_records_retry_the_broker_refuses_keeps_the_scenes_owed_mark(
    short_owed_mark: Context,
    provider: Misbehaving,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a job accepted under a lease that ran out, whose record's redo fails again (the
    # record owed again), and a broker that refuses the record's retry for longer than the
    # scene's owed mark lasts
    ctx = short_owed_mark
    project_id, run_id, token, operation_id, refused_until = refused_redo(ctx, monkeypatch)
    scenes = ctx.scenes
    ctx.scenes = UnreadableRecords(scenes)  # type: ignore[assignment]
    try:
        # When the redo runs in its task
        redo_published(project_id, run_id, operation_id, token)
    finally:
        ctx.scenes = scenes
    # Then its retry, published at last, finds the scene still marked owed (the mark the redo
    # set at its start had lapsed), and a reconcile pass frees no lease for a second claim
    assert time.monotonic() > refused_until
    assert ctx.board.scene_owed(project_id, 1)
    report = reconcile(ctx, RecordingDispatcher(), project_ids=[project_id], sweep_strays=False)
    assert report.expired_leases == 0, report
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.lease_token == token and scene.operation_id is None
    assert provider.submitted == 0


def test_a_redo_whose_own_marks_the_broker_refuses_is_not_dropped(
    short_owed_mark: Context,
    provider: Misbehaving,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a job accepted under a lease that ran out, its record owed, and a Redis that
    # refuses every write (at `maxmemory`) for longer than the scene's owed mark lasts: the
    # redo's own first mark fails, an outage before its record is even tried
    ctx = short_owed_mark
    project_id, run_id, token, operation_id, refused_until = refused_redo(ctx, monkeypatch)
    marks = ctx.board.touch_scene

    def refused_mark(*args: Any, **kwargs: Any) -> None:
        if time.monotonic() < refused_until:
            raise BrokerUnavailable.because(redis.ResponseError("OOM command not allowed"))
        marks(*args, **kwargs)

    monkeypatch.setattr(ctx.board, "touch_scene", refused_mark)
    # When the redo runs in its task, then its retry is published at last (not rejected,
    # which deletes the only message with the job's id), the scene marked owed again
    redo_published(project_id, run_id, operation_id, token)
    assert ctx.board.scene_owed(project_id, 1)
    assert provider.submitted == 0


def test_a_record_redone_in_a_store_outage_keeps_the_scene_marked_alive(
    storage: LocalStack, provider: Misbehaving
) -> None:
    settings = get_settings().model_copy(
        update={"store_timeout_seconds": 1.0, "store_retry_seconds": 2.0}
    )
    tight = build_context(settings)
    tight._providers["local"] = provider
    project_id, run_id, token, operation_id = accepted_job(tight, lease_seconds=-30)
    moto = next(s for s in storage.services if s.name == "moto")
    moto.pause()
    try:
        with pytest.raises(RecordPending) as pending:
            redo(tight, project_id, run_id, operation_id, token)
    finally:
        moto.resume()
    assert pending.value.carry["operation_id"] == operation_id
    # reconcile's lease repair skips a scene marked alive: no second paid submission
    assert tight.board.scene_polled(project_id, 1)


def test_a_record_redone_after_its_lease_was_freed_adopts_the_job(
    ctx: Context, provider: Misbehaving
) -> None:
    project_id, run_id, token, operation_id = accepted_job(ctx, lease_seconds=-30)
    assert ctx.scenes.expire_lease(project_id, 1, token=token, now=time.time())  # reconcile
    step = redo(ctx, project_id, run_id, operation_id, token)
    assert step.next == Next.POLL and step.carry["operation_id"] == operation_id
    assert provider.cancelled == []
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.operation_id == operation_id
    assert scene.status == SceneStatus.PROCESSING and scene.lease_token is None


def test_a_record_redone_after_another_claim_cancels_and_leaves_the_new_slot(
    ctx: Context, provider: Misbehaving
) -> None:
    project_id, run_id, token, operation_id = accepted_job(ctx, lease_seconds=-30)
    assert ctx.scenes.expire_lease(project_id, 1, token=token, now=time.time())
    member = slot_member(project_id, 1)
    assert ctx.limiter.acquire("local", member, limit=2, ttl=60, line_ttl=60).granted
    assert claim(ctx, project_id, run_id, uuid.uuid4().hex) == Claim.WON  # the new owner
    step = redo(ctx, project_id, run_id, operation_id, token)
    assert step.next == Next.DONE
    assert provider.cancelled == [operation_id]
    assert slot_holder(ctx, member)  # the new owner's slot
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.operation_id is None


def dead_redis() -> redis.Redis:
    """A client of a port nobody listens on: every call fails at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return redis.Redis(port=port, socket_connect_timeout=1)


def test_a_record_after_the_run_ended_keeps_the_job_when_redis_fails(
    ctx: Context, provider: Misbehaving
) -> None:
    project_id, _, token, operation_id = accepted_job(ctx, lease_seconds=60)
    member = slot_member(project_id, 1)
    assert ctx.limiter.acquire("local", member, limit=2, ttl=60, line_ttl=60).granted
    ctx.board = RunBoard(dead_redis())
    ended = SceneJob(ctx, project_id, 1, str(uuid.uuid4()), "local")  # not the active run
    step = ended.paid(GENERATE).record(operation_id, token, 1)
    assert step.next == Next.DONE and "kept" in step.outcome
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.operation_id == operation_id
    assert job_slot(ctx, project_id, operation_id)  # the kept job still runs: slot taken


def test_a_record_after_a_cancel_the_provider_cannot_confirm_keeps_job_and_slot(
    ctx: Context, provider: Misbehaving
) -> None:
    project_id, _, token, operation_id = accepted_job(ctx, lease_seconds=60)
    member = slot_member(project_id, 1)
    assert ctx.limiter.acquire("local", member, limit=2, ttl=60, line_ttl=60).granted
    cancelled_run = str(uuid.uuid4())  # not the project's active run any more
    ctx.board.mark_cancelled(cancelled_run)
    provider.cancel_confirmed = False
    step = job(ctx, project_id, cancelled_run).paid(GENERATE).record(operation_id, token, 1)
    assert step.next == Next.DONE and "kept" in step.outcome
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.operation_id == operation_id
    assert job_slot(ctx, project_id, operation_id)


class RacingScenes:
    """The real scene store, except that just before the first claim goes out `first` runs
    (another execution's whole step), and `record` errors can be injected."""

    def __init__(self, scenes: SceneStore, first: Callable[[], object]) -> None:
        self.scenes = scenes
        self.first: Callable[[], object] | None = first

    def claim(self, *args: Any, **kwargs: Any) -> Any:
        if self.first is not None:
            first, self.first = self.first, None
            first()
        return self.scenes.claim(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.scenes, name)


def test_a_duplicate_that_took_the_slot_first_and_lost_the_claim_leaves_it_to_the_owner(
    ctx: Context, provider: Misbehaving
) -> None:
    project_id, run_id = new_project(ctx, 1)
    ctx.board.touch_run(run_id, 60)
    owner = job(ctx, project_id, run_id)
    owned: list[Any] = []
    racing = build_context(ctx.settings)
    racing._providers["local"] = provider
    racing.limiter = ctx.limiter
    racing.scenes = RacingScenes(ctx.scenes, lambda: owned.append(owner.step()))  # type: ignore[assignment]
    duplicate = SceneJob(racing, project_id, 1, run_id, "local")
    # the duplicate's slot entry is fresh; the owner's acquire finds it, then wins the claim
    assert duplicate.step().next == Next.DONE
    assert owned[0].next == Next.POLL and provider.submitted == 1
    assert job_slot(ctx, project_id, owned[0].carry["operation_id"])
    assert ctx.limiter.slots_held("local") == {project_id: 1}


class UnreadableRecords:
    """The real scene store, except that recording an operation fails with a bug, not an
    outage."""

    def __init__(self, scenes: SceneStore) -> None:
        self.scenes = scenes

    def record_operation(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError("a bug in the record path")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.scenes, name)


def test_any_error_before_the_record_lands_leaves_it_owed_with_the_jobs_id(
    ctx: Context, provider: Misbehaving
) -> None:
    project_id, run_id = new_project(ctx, 1)
    ctx.scenes = UnreadableRecords(ctx.scenes)  # type: ignore[assignment]
    # The submitting step: the job's id travels on (RecordPending, redone however long it
    # takes), never into the task's bounded path for unexpected errors (a give-up, a second job)
    with pytest.raises(RecordPending) as first:
        job(ctx, project_id, run_id).step()
    carry = first.value.carry
    assert provider.submitted == 1 and carry["operation_id"] and carry["token"]
    assert isinstance(first.value.__cause__, ValueError)
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.status == SceneStatus.PROCESSING
    assert scene.last_error is not None and scene.last_error.endswith(
        "was accepted but its record failed (retried until it lands): "
        "ValueError: a bug in the record path"
    )
    assert ctx.board.scene_polled(project_id, 1)  # reconcile leaves it to the redo
    # Its redo alike: the same id and token carried again, nothing submitted
    with pytest.raises(RecordPending) as again:
        redo(ctx, project_id, run_id, carry["operation_id"], carry["token"])
    assert again.value.carry == carry and provider.submitted == 1


def test_a_running_job_is_polled_again_when_the_provider_says_it_is_due(
    ctx: Context, provider: Misbehaving
) -> None:
    project_id, run_id, operation_id = polling_scene(ctx)
    grid, longest = ctx.settings.poll_seconds_for("local"), ctx.settings.backoff_max
    provider.answer = JobStatus(JobState.RUNNING, eta_seconds=grid * 3)
    step = job(ctx, project_id, run_id).step(operation_id)
    assert step.next == Next.POLL and grid * 3 <= step.countdown <= grid * 3 + 0.1
    provider.answer = JobStatus(JobState.RUNNING, eta_seconds=longest * 10)  # never past the
    assert job(ctx, project_id, run_id).step(operation_id).countdown == longest  # liveness mark
    provider.answer = JobStatus(JobState.RUNNING)  # no estimate: the provider's fixed pace
    assert job(ctx, project_id, run_id).step(operation_id).countdown == grid


def test_the_submitting_step_polls_the_stored_job_at_once(
    ctx: Context, provider: Misbehaving
) -> None:
    project_id, run_id = new_project(ctx, 1)
    due = (ctx.settings.poll_seconds_for("local") + ctx.settings.backoff_max) / 2  # off-grid
    provider.answer = JobStatus(JobState.RUNNING, eta_seconds=due)
    step = job(ctx, project_id, run_id).step()
    assert provider.submitted == 1
    # the answer of a poll in this same step times the next one (no message before it)
    assert step.next == Next.POLL and due <= step.countdown <= due + 0.1
    assert ctx.board.scene_polled(project_id, 1)  # marked alive by the submit


class OutputInOutage(VideoGeneration):
    """The generate stage's provider, except that making the finished job's output meets our
    own store's outage `outages` times (as the lip-sync's output did when it read the scene)."""

    def __init__(self, provider: Misbehaving, ctx: Context, outages: int) -> None:
        super().__init__(provider, ctx.settings)  # type: ignore[arg-type]
        self.outages = outages

    def output(self, status: JobStatus, scene: SceneRecord) -> bytes:
        if self.outages > 0:
            self.outages -= 1
            raise StoreUnavailable("the state server did not answer")
        return super().output(status, scene)


def test_a_store_outage_while_making_the_output_is_not_a_poll_error(
    ctx: Context, provider: Misbehaving
) -> None:
    # Given a finished, paid job, and a store outage each time its output is made
    project_id, run_id, operation_id = polling_scene(ctx)
    provider.answer = JobStatus(JobState.SUCCEEDED, video=b"the paid clip")
    outages = ctx.settings.max_poll_errors + 2
    stage_provider = OutputInOutage(provider, ctx, outages)
    for _ in range(outages):
        machine = PaidOperation(job(ctx, project_id, run_id).x, GENERATE, stage_provider)
        # Then the outage goes to the task's outage retry, never counted as a provider error
        with pytest.raises(StoreUnavailable):
            machine.poll(operation_id, 0)
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.status == SceneStatus.PROCESSING
    # and once the store answers, the paid job's output is recorded
    machine = PaidOperation(job(ctx, project_id, run_id).x, GENERATE, stage_provider)
    assert machine.poll(operation_id, 0).next == Next.STAGE
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.status == SceneStatus.PROCESSING, scene.last_error
    assert ctx.clips.read(scene.original_clip_key or "") == b"the paid clip"


def test_a_lip_sync_waiting_for_a_quota_slot_keeps_its_scene_marked_alive(ctx: Context) -> None:
    # Given a scene between its cut and its lip-sync (`processing`), in a live run, and the
    # lip-sync pool full
    project_id = waiting_for_lip_sync(ctx)
    run_id = str(uuid.uuid4())
    assert ctx.projects.win_run(project_id, run_id, ProjectStatus.PROCESSING) == run_id
    s = ctx.settings
    pool = f"lipsync:{s.lipsync_provider}"
    for _ in range(s.lipsync_concurrency):
        assert ctx.limiter.acquire(
            pool,
            slot_member(str(uuid.uuid4()), 1),
            limit=s.lipsync_concurrency,
            ttl=60,
            line_ttl=60,
        ).granted
    # When its chain finds no slot
    step = SceneJob(ctx, project_id, 2, run_id, "local").step()
    assert step.next == Next.WAIT_SLOT
    # Then the scene is marked alive while it waits: reconcile starts no second chain for it
    assert ctx.board.scene_polled(project_id, 2)
    assert not ctx.board.claim_poll_chain(project_id, 2, 60)


class CountingLimiter(QuotaLimiter):
    """The real limiter, noting each pool's in-flight slots right after every slot request."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        super().__init__(client, prefix=prefix)
        self.in_flight: list[dict[str, int]] = []

    def acquire(
        self,
        provider: str,
        member: str,
        *,
        limit: int,
        ttl: float,
        line_ttl: float,
        park: str | None = None,
    ) -> SlotDecision:
        decision = super().acquire(
            provider, member, limit=limit, ttl=ttl, line_ttl=line_ttl, park=park
        )
        self.in_flight.append(self.slots_held(provider))
        return decision


def test_a_lip_sync_whose_song_is_gone_fails_without_taking_a_quota_slot(ctx: Context) -> None:
    # Given a scene between its cut and its lip-sync in a live run, its song gone from the
    # store, and a lip-sync pool with room
    project_id = waiting_for_lip_sync(ctx)
    run_id = str(uuid.uuid4())
    assert ctx.projects.win_run(project_id, run_id, ProjectStatus.PROCESSING) == run_id
    song_key = ctx.projects.get(project_id).song_key
    assert song_key is not None
    ctx.clips.delete(song_key)
    limiter = ctx.limiter = CountingLimiter(ctx.redis, ctx.limiter.prefix)
    pool = f"lipsync:{ctx.settings.lipsync_provider}"

    # When its chain runs the lip-sync
    step = SceneJob(ctx, project_id, 2, run_id, "local").step()

    # Then the scene fails saying its song is gone
    assert step.next == Next.DONE
    scene = ctx.scenes.get(project_id, 2)
    assert scene is not None and scene.status == SceneStatus.FAILED
    assert scene.last_error and f"({song_key})" in scene.last_error
    assert "gone from the store" in scene.last_error
    # and the song was read before any slot was taken: the pool's in-flight count never rose
    assert all(project_id not in held for held in limiter.in_flight), limiter.in_flight
    assert project_id not in limiter.slots_held(pool)
    snapshot = limiter.snapshot(pool)
    assert not [m for m in snapshot.held if project_id in m], snapshot
    assert not [line for line in snapshot.lines if line.project == project_id], snapshot


def accepted_lip_sync(ctx: Context, project_id: str, run_id: str) -> tuple[str, str, str]:
    """Scene 2's lip-sync job accepted under a long-expired lease, its id not recorded yet:
    (token, job, the working clip it was made from)."""
    token = uuid.uuid4().hex
    aged = time.time() - 90
    won = claim(
        ctx, project_id, run_id, token, 2, now=aged, stage=LIP_SYNCED, requires=WORKING.output
    )
    assert won == Claim.WON
    scene = ctx.scenes.get(project_id, 2)
    assert scene is not None and scene.working_clip_key is not None
    return token, f"op-{uuid.uuid4().hex}", scene.working_clip_key


def test_a_stale_lip_sync_record_never_adopts_its_job_onto_a_remade_input(ctx: Context) -> None:
    # Given a lip-sync job accepted, its lease freed (a store outage) before its id was stored
    project_id = waiting_for_lip_sync(ctx)
    run_id = str(uuid.uuid4())
    assert ctx.projects.win_run(project_id, run_id, ProjectStatus.PROCESSING) == run_id
    token, stale, made_from = accepted_lip_sync(ctx, project_id, run_id)
    assert ctx.scenes.expire_lease(project_id, 2, token=token, now=time.time(), stage=LIP_SYNCED)
    # and meanwhile the scene's working clip was made again (cancel, regenerate, a new cut)
    m = ctx.table.model
    remade = made_from.replace("-cut-", "-cut-again-")
    ctx.table.update(
        project_pk(project_id),
        scene_sk(2),
        [m.working_clip_key.set(remade), m.status.set(SceneStatus.PROCESSING)],
        None,
    )
    # When the stale record is redone, the old job is not adopted onto the new clip
    step = SceneJob(ctx, project_id, 2, run_id, "local").step(
        stale, token=token, attempt=1, stage="lipsync", made_from=made_from
    )
    assert step.next == Next.DONE
    scene = ctx.scenes.get(project_id, 2)
    assert scene is not None and scene.lip_sync_operation_id is None
    # while a job made from the current clip is adopted
    token, current, made_from = accepted_lip_sync(ctx, project_id, run_id)
    assert made_from == remade
    assert ctx.scenes.expire_lease(project_id, 2, token=token, now=time.time(), stage=LIP_SYNCED)
    step = SceneJob(ctx, project_id, 2, run_id, "local").step(
        current, token=token, attempt=1, stage="lipsync", made_from=made_from
    )
    assert step.next == Next.POLL
    scene = ctx.scenes.get(project_id, 2)
    assert scene is not None and scene.lip_sync_operation_id == current


def lip_sync_after_its_generation(ctx: Context) -> tuple[str, str, str]:
    """A lip-synced scene 2 whose generation is recorded (its operation kept on the scene) and
    cut (a real clip to sync), in a live run: (project, run, the generation's operation)."""
    project_id = waiting_for_lip_sync(ctx)
    run_id = str(uuid.uuid4())
    assert ctx.projects.win_run(project_id, run_id, ProjectStatus.PROCESSING) == run_id
    generation = f"op-{uuid.uuid4().hex}"
    m = ctx.table.model
    recorded = [
        m.operation_id.set(generation),
        m.original_clip_key.set(GENERATE.operation_output(project_id, 2, generation)),
    ]
    ctx.table.update(project_pk(project_id), scene_sk(2), recorded, None)
    working = ctx.scenes.get(project_id, 2)
    assert working is not None and working.working_clip_key is not None
    ctx.clips.put(working.working_clip_key, render_clip("the cut", 2.5))
    return project_id, run_id, generation


def test_a_late_generation_polls_mark_leaves_an_owed_lip_sync_to_its_submitter(
    ctx: Context, provider: Misbehaving
) -> None:
    # Given a scene whose generation was recorded and cut, in a live run
    project_id, run_id, generation = lip_sync_after_its_generation(ctx)
    # and its lip-sync job accepted under a lease that ran out, its record owed (the scene
    # marked by the redo, `keep_owed`)
    token, _, _ = accepted_lip_sync(ctx, project_id, run_id)
    SceneJob(ctx, project_id, 2, run_id, "local").keep_owed(LIPSYNC)
    # When a late duplicate of the generation's poll finds that job done: it marks the scene
    # (a poll's plain mark), its output is recorded already, and it goes on to the next stage
    provider.answer = JobStatus(JobState.SUCCEEDED, video=b"the paid clip")
    step = SceneJob(ctx, project_id, 2, run_id, "local").step(generation)
    # Then the lip-sync is left to its owed record: not claimed again, nothing paid (its plain
    # mark written over the owed one, the step claimed the lip-sync and submitted a second job)
    assert step.next == Next.DONE and step.outcome == "owned by another execution", step
    assert ctx.board.scene_owed(project_id, 2)
    scene = ctx.scenes.get(project_id, 2)
    assert scene is not None and scene.lease_token == token, scene
    assert scene.lip_sync_operation_id is None
    assert provider.submitted == 0


def test_a_cancel_the_provider_fails_keeps_that_job_and_cancels_the_others(
    ctx: Context, provider: Misbehaving
) -> None:
    # Given two scenes whose jobs run, and a provider whose cancel of the first one fails
    project_id, run_id = new_project(ctx, 2)
    operations = []
    for sequence in (1, 2):
        token = uuid.uuid4().hex
        assert claim(ctx, project_id, run_id, token, sequence=sequence) == Claim.WON
        operation_id = f"op-{uuid.uuid4().hex}"
        assert (
            ctx.scenes.record_operation(
                project_id, sequence, token=token, operation_id=operation_id, run_id=run_id
            )
            == Claim.WON
        )
        operations.append(operation_id)
    provider.cancel_errors = {operations[0]: TransientProviderError("503 from the provider")}
    # When the project is cancelled
    cancel_project(ctx, CeleryDispatcher(app), project_id)
    # Then the first job is kept (not confirmed stopped), the second cancelled, the project
    # settled with no run
    assert provider.cancelled == operations
    first, second = ctx.scenes.get(project_id, 1), ctx.scenes.get(project_id, 2)
    assert first is not None and first.operation_id == operations[0]
    assert second is not None and second.operation_id is None
    assert second.status == SceneStatus.PENDING
    project = ctx.projects.get(project_id)
    assert project.active_run_id is None and project.status == ProjectStatus.PENDING


def owed_then_cancelled(ctx: Context) -> tuple[str, str, str, str]:
    """A scene whose job was accepted, its lease expired with the record still owed (the
    record's redo keeps the scene's mark alive, `keep_owed`), and its run cancelled by the user:
    (project, the cancelled run, the lease's token, the job)."""
    project_id, run_id, token, operation_id = accepted_job(ctx, lease_seconds=-30)
    job(ctx, project_id, run_id).keep_owed(GENERATE)  # the mark the owed record's redo keeps
    cancel_project(ctx, RecordingDispatcher(), project_id)
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.status == SceneStatus.PROCESSING
    assert scene.lease_token == token and scene.operation_id is None  # left to its submitter
    assert ctx.projects.get(project_id).active_run_id is None
    return project_id, run_id, token, operation_id


def test_a_new_run_pays_no_second_job_while_a_cancelled_runs_record_is_owed(
    ctx: Context, provider: Misbehaving
) -> None:
    # Given a job accepted under an expired lease, its record owed, its run cancelled
    project_id, cancelled, token, operation_id = owed_then_cancelled(ctx)
    # When the user starts a new run and its step reaches the scene
    new = start_run(ctx, RecordingDispatcher(), project_id).run_id
    assert new is not None and new != cancelled
    step = job(ctx, project_id, new).step()
    # Then the scene is left to the owed record: nothing is claimed, nothing paid
    assert step.next == Next.DONE and step.outcome == "owned by another execution", step
    assert provider.submitted == 0
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.lease_token == token
    # And once the record's redo comes (a provider that cannot stop the job, as Veo), the job
    # is kept for the new run, which polls it: one job paid
    provider.cancel_confirmed = False
    kept = redo(ctx, project_id, cancelled, operation_id, token)
    assert kept.next == Next.DONE and kept.outcome == "operation kept for the next run", kept
    polled = job(ctx, project_id, new).step()
    assert polled.next == Next.POLL and polled.carry["operation_id"] == operation_id, polled
    assert provider.submitted == 0


def test_a_cancelled_runs_owed_record_whose_job_is_stopped_resumes_the_scene_in_the_new_run(
    ctx: Context, provider: Misbehaving
) -> None:
    # Given a cancelled run's owed record, and the user's new run whose step found the scene
    # held by it
    project_id, cancelled, token, operation_id = owed_then_cancelled(ctx)
    new = start_run(ctx, RecordingDispatcher(), project_id).run_id
    assert job(ctx, project_id, new).step().outcome == "owned by another execution"
    # When the record's redo comes and the provider stops the job
    stopped = redo(ctx, project_id, cancelled, operation_id, token)
    assert stopped.outcome == "operation cancelled with the run" and stopped.freed, stopped
    assert provider.cancelled == [operation_id]
    # Then the scene is resumed in the new run at once (it waited for the run's takeover), and
    # that run pays for the job the user's new run asks for
    dispatcher = RecordingDispatcher()
    assert resume_freed(ctx, dispatcher, project_id, 1, "local") == new
    assert dispatcher.sent == [("resume", (project_id, 1, new, "local"))]
    assert job(ctx, project_id, new).step().next == Next.POLL
    assert provider.submitted == 1


def test_a_queued_stages_mark_does_not_hold_the_scenes_own_resumed_chain(
    ctx: Context, provider: Misbehaving
) -> None:
    # Given a scene claimed under a lease that ran out, its submitter lost before its submit
    # (its claim's mark lapsed: nothing owed)
    project_id, run_id = new_project(ctx, 1)
    assert claim(ctx, project_id, run_id, uuid.uuid4().hex, now=time.time() - 90) == Claim.WON
    # When the scene's chain resumes on the media queue: it marks the scene as queued for the
    # stage and moves to the stage's queue
    moved = SceneJob(ctx, project_id, 1, run_id, "local", queue=MEDIA_QUEUE).step()
    assert moved.next == Next.STAGE and moved.queue == VIDEO_QUEUE, moved
    assert ctx.board.scene_polled(project_id, 1)
    # Then its step there is not held by its own queued mark: it claims and submits at once
    # (held, the chain ended as "owned" and the scene waited for the mark to lapse)
    step = SceneJob(ctx, project_id, 1, run_id, "local", queue=VIDEO_QUEUE).step()
    assert step.next == Next.POLL, step
    assert provider.submitted == 1


def test_a_regeneration_is_refused_while_a_cancelled_runs_record_is_owed(
    ctx: Context, provider: Misbehaving
) -> None:
    # Given a job accepted under an expired lease, its record owed, its run cancelled
    project_id = owed_then_cancelled(ctx)[0]
    before = ctx.scenes.get(project_id, 1)
    # When the user regenerates the scene, then it is refused: the record would have nowhere
    # to land, and the regeneration would pay for a second job
    dispatcher = RecordingDispatcher()
    with pytest.raises(Conflict, match="a paid job's record is still owed"):
        regenerate(ctx, dispatcher, project_id, 1)
    # And nothing was written or sent
    assert ctx.scenes.get(project_id, 1) == before
    assert ctx.projects.get(project_id).active_run_id is None and dispatcher.runs == []
    assert provider.submitted == 0


def priced(provider: Misbehaving, **update: Any) -> Context:
    """A context whose local jobs cost $0.25 a second (so a claim reserves money)."""
    settings = get_settings().model_copy(update={"prices": {"local": 0.25}, **update})
    context = build_context(settings)
    context._providers["local"] = provider
    return context


def reserved_claim(ctx: Context, project_id: str, run_id: str) -> tuple[str, int]:
    """A claim that landed with its reservation, as one whose reply was lost: (token, price)."""
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None
    price = GENERATE.price_micros(ctx.settings, "local", scene)
    token = uuid.uuid4().hex
    outcome = claim(ctx, project_id, run_id, token, price_micros=price)
    assert outcome == Claim.WON and price > 0
    return token, price


def test_a_claim_whose_reply_was_lost_gives_its_lease_and_money_back_once(
    provider: Misbehaving, storage: LocalStack
) -> None:
    ctx = priced(provider)
    project_id, run_id = new_project(ctx, 1)
    token, price = reserved_claim(ctx, project_id, run_id)
    release = {"refund_micros": price, "unused": True, "error": "store outage during claim"}
    for _ in range(2):  # the redo of a redo finds its own effect: one refund
        step = job(ctx, project_id, run_id).step(token=token, release=release)
        assert step.next == Next.RETRY_SUBMIT
        assert ctx.scenes.budgets.read(project_id).committed_micros == 0
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.status == SceneStatus.PENDING
    assert scene.lease_token is None and scene.attempts == 0 and scene.cost_micros == 0
    assert provider.submitted == 0


def test_a_claim_that_never_landed_refunds_nothing_of_another_owners_reservation(
    provider: Misbehaving, storage: LocalStack
) -> None:
    ctx = priced(provider)
    project_id, run_id = new_project(ctx, 1)
    owner, price = reserved_claim(ctx, project_id, run_id)  # another execution's lease
    release = {"refund_micros": price, "unused": True, "error": "store outage during claim"}
    job(ctx, project_id, run_id).step(token=uuid.uuid4().hex, release=release)
    assert ctx.scenes.budgets.read(project_id).committed_micros == price
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.lease_token == owner and scene.cost_micros == price


class LostReplies:
    """The scene store, but the reply of a write that ends a lease (release or fail) is lost
    after the write landed."""

    def __init__(self, scenes: SceneStore) -> None:
        self.scenes = scenes

    def release_lease(self, *args: Any, **kwargs: Any) -> bool:
        self.scenes.release_lease(*args, **kwargs)
        raise StoreUnavailable("the state server did not answer")

    def fail(self, *args: Any, **kwargs: Any) -> bool:
        self.scenes.fail(*args, **kwargs)
        raise StoreUnavailable("the state server did not answer")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.scenes, name)


class SlowClaims(LostReplies):
    """`LostReplies`, and a claim that lands within its budget but answers only once the
    budget has passed (as after slow store retries): no room is left to submit."""

    def __init__(self, scenes: SceneStore, submit_budget: float) -> None:
        super().__init__(scenes)
        self.submit_budget = submit_budget

    def claim(self, *args: Any, now: float, lease_seconds: float, **kwargs: Any) -> Any:
        claimed = self.scenes.claim(*args, now=now, lease_seconds=lease_seconds, **kwargs)
        budget = now + lease_seconds - self.submit_budget
        wait_for(lambda: time.time() > budget, 10, "the claim's budget to pass")
        return claimed


def test_a_release_whose_reply_was_lost_is_redone_without_a_second_refund(
    provider: Misbehaving, storage: LocalStack
) -> None:
    # The claim left no room in the lease to submit (as after slow store retries): the lease
    # is given back unused with its reservation, and that write's reply is lost.
    ctx, project_id, run_id, carry = claimed_then_pending(provider, SlowClaims)
    assert carry["release"]["refund_micros"] > 0 and carry["release"]["unused"]
    assert ctx.scenes.budgets.read(project_id).committed_micros == 0  # the release landed
    given_back_once(ctx, provider, project_id, run_id, carry)


def claimed_then_pending(
    provider: Misbehaving, wrap: Callable[[SceneStore, float], Any]
) -> tuple[Context, str, str, dict[str, Any]]:
    """A priced scene's step whose claim goes through `wrap`'s store and leaves no room to
    submit, ending in `LeasePending`: (context, project, run, the give-back it carries)."""
    ctx = priced(provider, lease_seconds=get_settings().submit_budget_seconds + 1.0)
    project_id, run_id = new_project(ctx, 1)
    scenes = ctx.scenes
    ctx.scenes = wrap(scenes, ctx.settings.submit_budget_seconds)
    try:
        with pytest.raises(LeasePending) as pending:
            job(ctx, project_id, run_id).step()
    finally:
        ctx.scenes = scenes
    return ctx, project_id, run_id, pending.value.carry


def given_back_once(
    ctx: Context, provider: Misbehaving, project_id: str, run_id: str, carry: dict[str, Any]
) -> None:
    """The redo of the give-back `carry` owes: the scene pending, no money held, no job."""
    step = job(ctx, project_id, run_id).step(token=carry["token"], release=carry["release"])
    assert step.next == Next.RETRY_SUBMIT
    assert ctx.scenes.budgets.read(project_id).committed_micros == 0  # not refunded twice
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.status == SceneStatus.PENDING and scene.attempts == 0
    assert scene.lease_token is None
    assert provider.submitted == 0


class LateReadAfterClaim:
    """The scene store, but after its claim lands the claim's path reads the scene once more,
    begun past the claim's budget (a reply after slow store retries): that read is not tried,
    though the claim before it landed."""

    def __init__(self, scenes: SceneStore, submit_budget: float) -> None:
        self.scenes = scenes
        self.submit_budget = submit_budget

    def __getattr__(self, name: str) -> Any:
        return getattr(self.scenes, name)

    def claim(self, project_id: str, scene: int, *args: Any, **kwargs: Any) -> Any:
        self.scenes.claim(project_id, scene, *args, **kwargs)
        budget = kwargs["now"] + kwargs["lease_seconds"] - self.submit_budget
        wait_for(lambda: time.time() > budget, 10, "the claim's budget to pass")
        return self.scenes.get(project_id, scene)  # StoreNotTried


def test_a_claim_that_landed_before_a_call_not_tried_is_given_back_with_its_reservation(
    provider: Misbehaving, storage: LocalStack
) -> None:
    # Only a claim that tried nothing may be read as "nothing written": here its write landed
    # (lease and reservation), and the call not tried came after it.
    ctx, project_id, run_id, carry = claimed_then_pending(provider, LateReadAfterClaim)
    held = ctx.scenes.budgets.read(project_id).committed_micros
    assert held > 0 and carry["release"]["refund_micros"] == held  # the claim's reservation
    given_back_once(ctx, provider, project_id, run_id, carry)


class SubmitPastTheLease(Misbehaving):
    """A provider whose submit answers only once a lease of `lease_seconds` begun before it
    has ended (a slow provider, a paused process)."""

    def __init__(self, lease_seconds: float) -> None:
        super().__init__()
        self.lease_seconds = lease_seconds

    def submit(self, request: VideoRequest) -> str:
        began = time.time()
        wait_for(lambda: time.time() > began + self.lease_seconds, 10, "the lease to end")
        return super().submit(request)


def test_a_record_begun_past_the_lease_still_makes_its_one_try(storage: LocalStack) -> None:
    # The job is submitted: its id stored now beats its id left to a countdown message. The
    # marks are sized for this one late try (`claim_mark_after`).
    update = {"provider_timeout_seconds": 0.5, "store_timeout_seconds": 0.5, "lease_seconds": 1.5}
    provider = SubmitPastTheLease(update["lease_seconds"])
    ctx = provider_context(provider, **update)
    project_id, run_id = new_project(ctx, 1)
    step = job(ctx, project_id, run_id).step()
    assert provider.submitted == 1
    assert step.next == Next.POLL
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.operation_id is not None
    assert scene.lease_expires_at is not None and scene.lease_expires_at < time.time()


def test_a_refused_submit_whose_fail_reply_was_lost_fails_the_scene_refunded_once(
    provider: Misbehaving, storage: LocalStack
) -> None:
    ctx = priced(provider)
    project_id, run_id = new_project(ctx, 1)
    provider.submit_error = PermanentProviderError("400 bad prompt", refused=True)
    scenes = ctx.scenes
    ctx.scenes = LostReplies(scenes)  # type: ignore[assignment]
    with pytest.raises(LeasePending) as pending:
        job(ctx, project_id, run_id).step()
    ctx.scenes = scenes
    carry = pending.value.carry
    assert carry["release"]["fail"] and carry["release"]["refund_micros"] > 0
    step = job(ctx, project_id, run_id).step(token=carry["token"], release=carry["release"])
    assert step.next == Next.DONE
    assert scenes.budgets.read(project_id).committed_micros == 0  # refunded once, not twice
    scene = scenes.get(project_id, 1)
    assert scene is not None and scene.status == SceneStatus.FAILED and scene.cost_micros == 0
    assert scene.last_error is not None and "400 bad prompt" in scene.last_error


def test_a_late_duplicate_poll_of_a_recorded_generation_leaves_the_lip_sync_lease_alone(
    ctx: Context, provider: Misbehaving
) -> None:
    # Given a lip-synced scene whose generation is recorded (its operation kept on the scene),
    # its cut made, and its lip-sync claimed by a live execution that is submitting right now
    project_id, run_id, generation = lip_sync_after_its_generation(ctx)
    owner = uuid.uuid4().hex
    won = claim(ctx, project_id, run_id, owner, 2, stage=LIP_SYNCED, requires=WORKING.output)
    assert won == Claim.WON
    # When a late duplicate of a poll of that generation runs (a redelivered message, or a
    # chain reconcile resumed while the first one sat in a backlog) and finds the job done
    provider.answer = JobStatus(JobState.SUCCEEDED, video=b"the paid clip")
    SceneJob(ctx, project_id, 2, run_id, "local").step(generation)
    # Then the lip-sync stays the owner's: its lease is not stripped, nobody claims it again
    scene = ctx.scenes.get(project_id, 2)
    assert scene is not None
    assert scene.lip_sync_operation_id is None, "a second lip-sync job was submitted"
    assert scene.lease_token == owner and scene.lip_sync_attempts == 1, scene.last_error
    assert scene.status == SceneStatus.PROCESSING, scene.last_error
    # and the owner's job is recorded as the scene's
    recorded = ctx.scenes.record_operation(
        project_id, 2, token=owner, operation_id="lip-op", run_id=run_id, stage=LIP_SYNCED
    )
    assert recorded == Claim.WON


def test_a_done_job_with_other_jobs_running_queues_its_cut_behind_their_polls(
    ctx: Context, provider: Misbehaving
) -> None:
    # Two jobs of the project run; the first one's timed poll finds it done. Its clip is
    # recorded at once, but its cut (free, local work) is queued behind (the broker's lower
    # priority), so the other job's poll, due meanwhile, does not wait for it.
    project_id, run_id, operation_id = polling_scene(ctx)
    other = slot_member(project_id, 2)
    ctx.limiter.acquire("local", other, limit=4, ttl=60, line_ttl=60)
    provider.answer = JobStatus(JobState.SUCCEEDED, video=render_clip("first", 1.0))
    step = job(ctx, project_id, run_id).step(operation_id)
    assert step.next == Next.STAGE and step.behind
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.original_clip_key is not None
    assert scene.working_clip_key is None  # the cut is queued, not done
    assert ctx.board.scene_polled(project_id, 1)  # marked alive while it waits in line

    # The last job running: nothing to let go first, so the cut runs in the same execution.
    ctx.limiter.release("local", other, limit=4)
    project_id, run_id, operation_id = polling_scene(ctx)
    step = job(ctx, project_id, run_id).step(operation_id)
    assert step.next == Next.DONE and step.outcome == "completed"
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.working_clip_key is not None


def test_a_give_up_keeps_a_stored_operation_and_a_live_lease_noting_why(ctx: Context) -> None:
    # a stored operation is paid work: the scene stays its, with the reason noted
    project_id, run_id, operation_id = polling_scene(ctx)
    assert job(ctx, project_id, run_id).give_up("gave up: KeyError: 'x'").next == Next.DONE
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.status == SceneStatus.PROCESSING
    assert scene.operation_id == operation_id and scene.last_error == "gave up: KeyError: 'x'"
    # a live lease may be submitting: not failed under it either
    project_id, run_id = new_project(ctx, 1)
    assert claim(ctx, project_id, run_id, uuid.uuid4().hex) == Claim.WON
    assert job(ctx, project_id, run_id).give_up("gave up: bug").next == Next.DONE
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.status == SceneStatus.PROCESSING
    assert scene.last_error == "gave up: bug"
    # nobody holds a pending scene: it fails, saying why
    project_id, run_id = new_project(ctx, 1)
    assert job(ctx, project_id, run_id).give_up("gave up: bug").outcome == "failed: gave up"
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.status == SceneStatus.FAILED
    assert scene.last_error == "gave up: bug"


class Metered(Misbehaving):
    """A provider that cannot cancel (like Veo) and counts the jobs it runs at once: each
    runs from its submit until a poll finds it in `finished`."""

    can_cancel = False

    def __init__(self) -> None:
        super().__init__()
        self.running: set[str] = set()
        self.finished: set[str] = set()
        self.most = 0

    def submit(self, request: VideoRequest) -> str:
        operation_id = super().submit(request)
        self.running.add(operation_id)
        self.most = max(self.most, len(self.running))
        return operation_id

    def poll(self, operation_id: str) -> JobStatus:
        if operation_id in self.finished:
            self.running.discard(operation_id)
            return JobStatus(JobState.SUCCEEDED, video=b"a finished clip")
        return JobStatus(JobState.RUNNING)


def metered_context() -> tuple[Context, Metered]:
    """A context whose local provider is `Metered` (it cannot cancel), on a quota of two and
    a limiter of its own."""
    metered = Metered()
    return provider_context(metered, provider_concurrency=2), metered


def started_job(ctx: Context, project_id: str, run_id: str) -> SceneJob:
    """Scene 1's step in `run_id`, the run marked alive."""
    ctx.board.touch_run(run_id, 60)
    return job(ctx, project_id, run_id)


def test_a_kept_job_and_its_scenes_regeneration_hold_two_slots_never_more_than_the_limit(
    storage: LocalStack,
) -> None:
    ctx, metered = metered_context()
    started = partial(started_job, ctx)
    # Given scene 1's job A running, its run cancelled (the provider cannot stop A: kept), and
    # reconcile's poll chain (no run) polling A
    project_id, first_run = new_project(ctx, 1)
    old = started(project_id, first_run).step()
    assert old.next == Next.POLL
    kept = old.carry["operation_id"]
    cancel_project(ctx, CeleryDispatcher(app), project_id)
    assert ctx.scenes.get(project_id, 1).operation_id == kept  # type: ignore[union-attr]
    assert SceneJob(ctx, project_id, 1, None, "local").step(kept).next == Next.POLL
    # When the user regenerates scene 1 (job B) while A still runs
    regeneration = str(uuid.uuid4())
    assert ctx.scenes.reset_for_regeneration(project_id, 1, run_id=regeneration) == Claim.WON
    assert started(project_id, regeneration).step().next == Next.POLL
    # Then A and B are two jobs in flight, so another project's scene waits for a slot
    other, other_run = new_project(ctx, 1)
    assert started(other, other_run).step().next == Next.WAIT_SLOT
    # and when A finishes, its poll frees A's slot alone: the waiter takes it, a third waits
    metered.finished.add(kept)
    assert SceneJob(ctx, project_id, 1, None, "local").step(kept).next == Next.DONE
    assert started(other, other_run).step().next == Next.POLL
    third, third_run = new_project(ctx, 1)
    assert started(third, third_run).step().next == Next.WAIT_SLOT
    # The provider never ran more than the limit at once
    assert len(metered.running) == 2 and metered.most == 2
    assert ctx.limiter.slots_held("local") == {project_id: 1, other: 1}


def test_a_kept_job_still_running_after_its_scenes_regeneration_ends_and_frees_its_slot(
    storage: LocalStack,
) -> None:
    ctx, _ = metered_context()
    started = partial(started_job, ctx)
    # Given scene 1's job A kept (its run cancelled, the provider cannot stop it), polled by
    # reconcile's chain, and the scene regenerated (job B) while A runs on
    project_id, first_run = new_project(ctx, 1)
    kept = started(project_id, first_run).step().carry["operation_id"]
    cancel_project(ctx, CeleryDispatcher(app), project_id)
    assert SceneJob(ctx, project_id, 1, None, "local").step(kept).next == Next.POLL
    regeneration = str(uuid.uuid4())
    assert ctx.scenes.reset_for_regeneration(project_id, 1, run_id=regeneration) == Claim.WON
    assert started(project_id, regeneration).step().next == Next.POLL
    assert slot_holder(ctx, job_member(project_id, 1, "generate", kept))
    # When A's chain polls it again, running still
    step = SceneJob(ctx, project_id, 1, None, "local").step(kept)
    # Then the chain ends (A's output could never be recorded) and A's slot is freed, so
    # another project's scene takes it; B's job and its slot are untouched
    assert step.next == Next.DONE and step.outcome.startswith("superseded"), step
    assert not slot_holder(ctx, job_member(project_id, 1, "generate", kept))
    other, other_run = new_project(ctx, 1)
    assert started(other, other_run).step().next == Next.POLL
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.status == SceneStatus.PROCESSING
    regenerated = scene.operation_id
    assert regenerated is not None and regenerated != kept
    assert slot_holder(ctx, job_member(project_id, 1, "generate", regenerated))


def test_a_job_past_its_time_the_provider_cannot_stop_fails_its_scene_keeping_the_job(
    ctx: Context, provider: Misbehaving
) -> None:
    # Given a recorded job still running, claimed longer ago than a job may run
    project_id, run_id, operation_id = polling_scene(ctx)
    limit = ctx.settings.max_job_seconds
    long_ago = datetime.fromtimestamp(time.time() - limit - 60, UTC).isoformat()
    m = ctx.table.model
    ctx.table.update(
        project_pk(project_id), scene_sk(1), [m.generation_started_at.set(long_ago)], None
    )
    provider.cancel_confirmed = False
    # When it is polled, running still
    step = job(ctx, project_id, run_id).step(operation_id)
    # Then its stage fails saying it was paid and could not be stopped, the job's id kept on
    # the scene and in the error, and its quota slot freed
    assert step.next == Next.DONE and provider.cancelled == [operation_id]
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.status == SceneStatus.FAILED
    assert scene.operation_id == operation_id
    assert f"ran over {limit:g} s (paid): the provider could not cancel it" in (
        scene.last_error or ""
    )
    assert operation_id in (scene.last_error or "")
    assert not slot_holder(ctx, job_member(project_id, 1, "generate", operation_id))


def test_a_job_within_its_time_is_polled_on_and_a_lip_sync_keeps_its_own_start(
    ctx: Context, provider: Misbehaving
) -> None:
    project_id, run_id, operation_id = polling_scene(ctx)
    assert job(ctx, project_id, run_id).step(operation_id).next == Next.POLL
    assert provider.cancelled == []
    generated = ctx.scenes.get(project_id, 1)
    assert generated is not None and generated.generation_started_at is not None
    # a lip-sync's claim records when its own job started, apart from the generation's
    lip_synced = waiting_for_lip_sync(ctx)
    lip_run = str(uuid.uuid4())
    assert ctx.projects.win_run(lip_synced, lip_run, ProjectStatus.PROCESSING) == lip_run
    accepted_lip_sync(ctx, lip_synced, lip_run)
    scene = ctx.scenes.get(lip_synced, 2)
    assert scene is not None and scene.lip_sync_started_at is not None
    assert scene.generation_started_at is None


@pytest.fixture
def counted(
    storage: LocalStack, provider: Misbehaving, proxy: CountingProxy
) -> tuple[Context, CountingProxy]:
    """A `provider_context` whose store calls pass through the counting `proxy`."""
    return provider_context(provider, dynamodb_endpoint=proxy.url), proxy


def polled_again(
    ctx: Context, proxy: CountingProxy, project_id: str, run_id: str, polled: Step
) -> tuple[Step, int]:
    """The poll `polled` queued, its kwargs as its message carries them (JSON): its step and
    the store reads it made."""
    assert polled.next == Next.POLL, polled
    carried = json.loads(json.dumps(polled.carry))
    proxy.reset()
    step = job(ctx, project_id, run_id).step(**carried)
    counts = proxy.snapshot()
    return step, sum(
        n for kind, n in counts.items() if kind.removeprefix("dynamodb.") in DYNAMO_READS
    )


def test_a_running_jobs_polls_read_its_scene_once_in_scene_check_polls_and_still_see_it_gone(
    counted: tuple[Context, CountingProxy], provider: Misbehaving
) -> None:
    ctx, proxy = counted
    # Given a job submitted and found running by its first poll
    project_id, run_id = new_project(ctx, 1)
    step = started_job(ctx, project_id, run_id).step()
    operation_id = step.carry["operation_id"]
    # When it is polled, running still, twice SCENE_CHECK_POLLS times
    reads = []
    for _ in range(2 * SCENE_CHECK_POLLS):
        step, read = polled_again(ctx, proxy, project_id, run_id, step)
        assert step.next == Next.POLL and step.carry["operation_id"] == operation_id
        reads.append(read)
    # Then only every SCENE_CHECK_POLLS-th poll read the scene (the start its polls carry is
    # within the limit)
    assert reads == ([0] * (SCENE_CHECK_POLLS - 1) + [1]) * 2
    # and when the scene is gone, the chain still ends within SCENE_CHECK_POLLS polls, the job
    # cancelled and its slot freed
    assert ctx.table.delete(project_pk(project_id), scene_sk(1))
    reads = []
    while step.next == Next.POLL and len(reads) <= SCENE_CHECK_POLLS:
        step, read = polled_again(ctx, proxy, project_id, run_id, step)
        reads.append(read)
    assert step.next == Next.DONE and step.outcome == "superseded: scene gone while its job ran"
    assert reads == [0] * (SCENE_CHECK_POLLS - 1) + [1]
    assert provider.cancelled == [operation_id]
    assert not slot_holder(ctx, job_member(project_id, 1, "generate", operation_id))


def test_a_poll_without_a_believable_start_reads_the_scene_once_and_carries_its_start(
    counted: tuple[Context, CountingProxy],
) -> None:
    ctx, proxy = counted
    # Given a recorded job still running, whose poll message carries no start (reconcile's, an
    # older worker's) or one too far in the future
    project_id, run_id, operation_id = polling_scene(ctx)
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.generation_started_at is not None
    recorded = datetime.fromisoformat(scene.generation_started_at).timestamp()
    for carried in (None, time.time() + 3600):
        carry = {"operation_id": operation_id, "job_started": carried}
        message = Step(Next.POLL, "polling", carry=carry)
        # When it is polled, running still
        step, read = polled_again(ctx, proxy, project_id, run_id, message)
        # Then that poll reads the scene, and carries its recorded start: the next one reads
        # nothing
        assert read == 1 and step.carry["job_started"] == recorded
        assert step.carry["unread_polls"] == 0
        assert polled_again(ctx, proxy, project_id, run_id, step)[1] == 0


def test_a_claim_slowed_past_the_liveness_keeps_its_quota_slot_to_the_record(
    storage: LocalStack, provider: Misbehaving
) -> None:
    # Given one slot of the quota (its clock the test's) and a scene about to take it
    now = [time.time()]
    ctx = provider_context(provider, provider_concurrency=1)
    pool = QuotaLimiter(ctx.redis, prefix=f"test:{uuid.uuid4()}", clock=lambda: now[0])
    ctx.limiter = pool
    project_id, run_id = new_project(ctx, 1)
    settings = ctx.settings
    other = slot_member(str(uuid.uuid4()), 1)
    asked: list[SlotDecision] = []

    def slow_store(point: str) -> None:
        # When the store is slow: the claim's write comes as late as its budget allows, past
        # a poll's liveness, and another project's scene asks for the slot meanwhile
        if point == "before_claim_write" and not asked:
            now[0] += settings.lease_seconds - settings.submit_budget_seconds
            assert now[0] - time.time() > settings.liveness_seconds("local")
            ttl = settings.liveness_seconds("local")
            asked.append(pool.acquire("local", other, limit=1, ttl=ttl, line_ttl=600))

    hooks.install(slow_store)
    try:
        step = job(ctx, project_id, run_id).step()
    finally:
        hooks.install(None)
    # Then the other scene waits, and the scene's job holds the one slot
    assert step.next == Next.POLL and provider.submitted == 1
    assert [decision.granted for decision in asked] == [False]
    operation_id = step.carry["operation_id"]
    assert pool.snapshot("local").held == (job_member(project_id, 1, "generate", operation_id),)
