"""Every failure a caller sees is an `MvpipeError` that says what to do (no raw redis, kombu,
botocore or RuntimeError), and a refused call writes nothing."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest

from mvpipe import api
from mvpipe.deps import Context, build_context, get_context
from mvpipe.devstack.localstack import LocalStack, launch_redis
from mvpipe.errors import (
    BrokerUnavailable,
    ConfigurationError,
    Conflict,
    MvpipeError,
    StoreUnavailable,
)
from mvpipe.models import ProjectStatus
from mvpipe.pipeline.finalize import finalize_run
from mvpipe.settings import get_settings
from mvpipe.store.pauses import retry_until
from mvpipe.store.projects import ProjectStore
from tests.helpers import without_aws_credentials

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_down(stack: LocalStack) -> Iterator[None]:
    """The broker's Redis stopped (its data kept), and started again afterwards."""
    old = next(s for s in stack.services if s.name == "redis")
    old.stop()
    try:
        yield
    finally:
        stack.replace(old, partial(launch_redis, old.log_path.parent, port=old.port))


def test_run_and_cancel_without_redis_are_typed_and_write_nothing(
    stack: LocalStack, request: pytest.FixtureRequest
) -> None:
    ctx = get_context()
    project_id = api.create_project("Down", "No broker.", scene_count=2)
    request.getfixturevalue("redis_down")
    with pytest.raises(BrokerUnavailable, match="MVPIPE_BROKER_URL"):
        api.run_project(project_id)
    project = ctx.projects.get(project_id)
    assert project.active_run_id is None and project.status == ProjectStatus.PENDING
    # A cancel must mark the run cancelled (so its queued work exits) before releasing it.
    run_id = str(uuid.uuid4())
    assert ctx.projects.win_run(project_id, run_id, ProjectStatus.PROCESSING) == run_id
    with pytest.raises(BrokerUnavailable, match="MVPIPE_BROKER_URL"):
        api.cancel_project(project_id)
    assert ctx.projects.get(project_id).active_run_id == run_id


#: A store call's retries through an outage, short: these tests meet outages that never end.
BRIEF_RETRIES = {"store_retry_seconds": 0.5}


def test_missing_aws_credentials_are_a_configuration_error_at_once(
    stack: LocalStack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a process with no AWS credentials anywhere botocore looks
    settings = get_settings().model_copy(update={"store_retry_seconds": 5.0})
    with patch.dict(os.environ, without_aws_credentials(os.environ, tmp_path), clear=True):
        ctx = build_context(settings)
        sent: list[str] = []  # each request that left the client
        ctx.clips.client.meta.events.register("before-send.s3", lambda **_: sent.append("s3"))
        key = "projects/p/clip.mp4"
        calls = [
            ("S3", lambda: ctx.clips.put(key, b"clip")),
            ("S3", lambda: ctx.clips.read(key)),
            ("S3", lambda: ctx.clips.exists(key)),
            ("S3", lambda: ctx.clips.list("projects/")),
            ("S3", lambda: ctx.clips.presigned_url(key)),
            ("S3", ctx.clips.ensure),
            ("DynamoDB", ctx.ensure_storage),
            ("DynamoDB", lambda: ctx.projects.get(str(uuid.uuid4()))),
        ]
        with caplog.at_level(logging.WARNING, logger="mvpipe.store"):
            for store, call in calls:
                # When a store's call meets them, then it is a setting to fix, named (not an
                # S3 that refused or is unavailable), raised at once: no try is made again
                with pytest.raises(ConfigurationError) as refused:
                    call()
                said = str(refused.value)
                assert said.startswith(f"AWS credentials missing for {store}: "), said
                assert "Unable to locate credentials" in said, said
        ctx.close()
    assert not [r.getMessage() for r in caplog.records if "store call failed" in r.getMessage()]
    assert sent == []  # and no request left
    # And a key without its secret, or a profile not there, met building the store's
    # clients: the same error, naming the key's missing part or the profile
    for extra, named in (
        ({"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE"}, "AWS_SECRET"),
        ({"AWS_PROFILE": "nowhere"}, "nowhere"),
    ):
        env = without_aws_credentials(os.environ, tmp_path) | extra
        with patch.dict(os.environ, env, clear=True), pytest.raises(ConfigurationError) as refused:
            build_context(settings)
        said = str(refused.value)
        assert said.startswith("AWS credentials missing for the store: "), said
        assert named in said, said


def test_storage_out_of_reach_is_typed_and_says_what_to_do(stack: LocalStack) -> None:
    # Nothing listens on port 9 (discard): boto's connection error must not reach the caller.
    update = {"s3_endpoint": "http://127.0.0.1:9", **BRIEF_RETRIES}
    settings = get_settings().model_copy(update=update)
    with pytest.raises(StoreUnavailable, match="MVPIPE_S3_ENDPOINT"):
        build_context(settings).ensure_storage()


class S3Answers:
    """A stand-in S3 that has no bucket (HEAD: 404) and answers each PUT (a bucket's creation,
    an object's upload) with `status` and the error `code`, as S3 does when busy (503 SlowDown)
    or refusing (403); with `errors` set, only that many, and 200 after them."""

    def __init__(self) -> None:
        self.status, self.code = 503, "SlowDown"
        self.errors: int | None = None
        self.creates = 0
        answers = self

        class Handler(BaseHTTPRequestHandler):
            # As S3 speaks: an upload's "Expect: 100-continue" is answered at once (botocore
            # waits a second for it before it sends the body to an HTTP/1.0 server).
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_PUT(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                answers.creates += 1
                if answers.errors is not None and answers.creates > answers.errors:
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = f"<Error><Code>{answers.code}</Code><Message>no</Message></Error>".encode()
                self.send_response(answers.status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def s3_answers() -> Iterator[S3Answers]:
    answers = S3Answers()
    # Polled every 50 ms, not the default 0.5 s: `shutdown` waits for the next poll.
    thread = threading.Thread(
        target=answers.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield answers
    finally:
        answers.server.shutdown()
        answers.server.server_close()


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (503, "SlowDown", StoreUnavailable),
        (500, "InternalError", StoreUnavailable),
        (403, "AccessDenied", ConfigurationError),
        (400, "InvalidBucketName", ConfigurationError),
    ],
)
def test_a_busy_store_at_start_is_an_outage_and_a_refusal_a_configuration_error(
    stack: LocalStack, s3_answers: S3Answers, status: int, code: str, kind: type[Exception]
) -> None:
    # Given an S3 that answers the bucket's creation with a 5xx (busy, failing) or a 4xx (no)
    s3_answers.status, s3_answers.code = status, code
    settings = get_settings().model_copy(update={"s3_endpoint": s3_answers.url, **BRIEF_RETRIES})
    # When a process first opens its storage
    with pytest.raises(MvpipeError) as caught:
        build_context(settings).ensure_storage()
    # Then "later" is an outage (a task retries it; finalize does not count it as a bug), "no"
    # a setting or credential to fix; both say which bucket, and what S3 answered
    assert type(caught.value) is kind, caught.value
    assert settings.bucket in str(caught.value) and code in str(caught.value)
    assert s3_answers.creates >= 1


def test_a_throttling_s3_is_retried_by_the_store_for_store_retry_seconds_then_an_outage(
    stack: LocalStack, s3_answers: S3Answers, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an S3 that answers every upload "slow down"
    settings = get_settings().model_copy(update={"s3_endpoint": s3_answers.url})
    clips = build_context(settings.model_copy(update=BRIEF_RETRIES)).clips
    # When an upload meets it
    caught = caplog.at_level(logging.WARNING, logger="mvpipe.store.clips")
    with caught, pytest.raises(StoreUnavailable, match="SlowDown"):
        clips.put("projects/p/clip.mp4", b"clip")
    # Then it is an outage once `store_retry_seconds` ran out (the task's outage retry waits
    # the rest), and each request S3 saw was one of the store's own tries: botocore retries
    # none with its own backoff (up to ~31 s a call, which no setting bounded)
    tries = [r for r in caplog.records if r.getMessage().startswith("store call failed (S3")]
    assert s3_answers.creates == len(tries) + 1, (s3_answers.creates, len(tries))
    # And an S3 that answers again within the time (here twice "slow down", then yes) is no
    # outage: the upload lands on the store's third try
    s3_answers.creates, s3_answers.errors = 0, 2
    build_context(settings).clips.put("projects/p/clip.mp4", b"clip")
    assert s3_answers.creates == 3


def test_a_bounded_s3_call_starts_no_try_after_its_bound(
    stack: LocalStack, s3_answers: S3Answers
) -> None:
    # Given an S3 that answers every upload "slow down" at once, and a path bounded by a lease
    # (`retry_until`, as the claim and the record set it)
    update = {"s3_endpoint": s3_answers.url, "store_retry_seconds": 3.0}
    ctx = build_context(get_settings().model_copy(update=update))
    sent: list[float] = []  # when each try left the client (botocore's last event before it)
    ctx.clips.client.meta.events.register("before-send.s3", lambda **_: sent.append(time.time()))
    bound = time.time() + 1.0
    # When an upload meets it inside the bound (unbounded, its retries would go on for 3 s)
    with pytest.raises(StoreUnavailable, match="SlowDown"), retry_until(bound):
        ctx.clips.put("projects/p/clip.mp4", b"clip")
    # Then it retried within the bound and started no try after it: a try leaves a few
    # milliseconds after the check before it, a pause past the bound is 50-800 ms
    assert s3_answers.creates == len(sent) >= 2, (s3_answers.creates, sent)
    assert max(sent) < bound + 0.05, (max(sent) - bound, sent)


def test_a_bucket_outside_us_east_1_is_created(stack: LocalStack) -> None:
    # S3 refuses a bucket created outside us-east-1 without a location constraint.
    bucket = f"mvpipe-test-eu-{uuid.uuid4().hex[:8]}"
    settings = get_settings().model_copy(update={"bucket": bucket, "aws_region": "eu-west-1"})
    s3 = build_context(settings).clips.client
    try:
        build_context(settings).ensure_storage()
        assert s3.get_bucket_location(Bucket=bucket)["LocationConstraint"] == "eu-west-1"
    finally:
        with contextlib.suppress(s3.exceptions.NoSuchBucket):
            s3.delete_bucket(Bucket=bucket)


class NeverSettles(ProjectStore):
    def settle(self, project_id: str, **kwargs: Any) -> bool:
        return False  # METADATA moves on between every read and write


def test_a_finalize_that_never_settles_is_a_typed_conflict(stack: LocalStack) -> None:
    ctx: Context = get_context()
    project_id = api.create_project("Moving", "Never still.", scenes=[{"prompt": "a"}])
    moving = dataclasses.replace(ctx, projects=NeverSettles(ctx.table))
    assert ctx.projects.settle(
        project_id,
        observed_run=None,
        counters=ctx.projects.load(project_id).counters,
        status=ProjectStatus.FAILED,  # wrong on purpose: finalize has something to write
        release=False,
    )
    with pytest.raises(Conflict, match="try again"):
        finalize_run(moving, project_id, None, None)
