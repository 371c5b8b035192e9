"""A finished, paid job whose output cannot be fetched, on the real stack (moto server, Celery
workers, Replicate's real SDK against the stand-in): a download refused (an expired signed URL,
an output already deleted) is not the job's failure. The poll is counted and asked again (which
helps a passing refusal); only after `MVPIPE_MAX_POLL_ERRORS` of them is the scene failed,
saying the job was paid. An output larger than `MVPIPE_MAX_CLIP_BYTES` is refused, never read
whole, whether its size is declared or only counted as it comes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from mvpipe import api
from mvpipe.deps import get_context
from mvpipe.devstack.localstack import LocalStack
from mvpipe.models import ProjectSpec, ProjectView, SceneSpec, SceneStatus
from mvpipe.settings import MIB
from mvpipe.store.clips import scene_prefix
from tests.conftest import Workers
from tests.helpers import assert_invariants
from tests.standins import (
    REPLICATE_MODEL,
    ProviderStandIn,
    configured_standin,
    output_of,
    replicate_env,
)

pytestmark = pytest.mark.integration

StartWorkers = Callable[..., Workers]
MODEL = REPLICATE_MODEL
MAX_POLL_ERRORS = 3


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch, stack: LocalStack) -> Iterator[ProviderStandIn]:
    with configured_standin(monkeypatch, replicate_env("5")) as server:
        yield server


def run_one_scene(start_workers: StartWorkers, **settings: str) -> ProjectView:
    """One Replicate scene run to its end on workers polling fast."""
    start_workers(
        env={"MVPIPE_POLL_SECONDS": "0.1", "MVPIPE_MAX_POLL_ERRORS": str(MAX_POLL_ERRORS)},
        **settings,
    )
    project_id = str(uuid.uuid4())
    spec = ProjectSpec(
        title="Fetch",
        concept="x",
        provider="replicate",
        requested_scene_count=1,
        scenes=(SceneSpec(prompt="a paid shot", duration_seconds=5),),
    )
    get_context().projects.create(project_id, spec)
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=120)
    assert_invariants(project_id)
    return view


def downloads(standin: ProviderStandIn) -> int:
    return sum(1 for r in standin.requests if r.kind == "file")


def test_an_output_refused_once_is_fetched_again_without_paying_again(
    standin: ProviderStandIn, start_workers: StartWorkers
) -> None:
    # Given a finished job whose output URL first answers 403 (a signed URL that expired)
    standin.fail_next["file"] = [403]
    view = run_one_scene(start_workers)
    # Then the poll is asked again, the output fetched the second time, and the scene
    # completes on the one paid job
    assert view.scenes[0].status == SceneStatus.COMPLETED, view.scenes[0].last_error
    assert standin.created["replicate"] == 1
    assert view.scenes[0].attempts == 1
    assert downloads(standin) == 2


def test_an_output_that_is_gone_fails_the_scene_saying_it_was_paid(
    standin: ProviderStandIn, start_workers: StartWorkers
) -> None:
    # Given a finished job whose output is gone for good (410 on every fetch)
    standin.fail_next["file"] = [410] * 50
    view = run_one_scene(start_workers)
    # Then the scene fails only after MVPIPE_MAX_POLL_ERRORS fetches, paid once, and says so
    scene = view.scenes[0]
    assert scene.status == SceneStatus.FAILED
    assert standin.created["replicate"] == 1 and scene.attempts == 1
    assert downloads(standin) == MAX_POLL_ERRORS
    error = scene.last_error or ""
    assert "paid" in error and "could not be fetched" in error and "410" in error, error


def test_an_output_refused_and_unavailable_by_turns_still_fails_after_the_limit(
    standin: ProviderStandIn, start_workers: StartWorkers
) -> None:
    # Given a finished job whose output URL answers 403, 503, 403, 503, ... (a 503 on the
    # download is transient, and must not wipe the count the 403s built up)
    standin.fail_next["file"] = [403, 503] * 10
    view = run_one_scene(start_workers, backoff_base="0.1", backoff_max="0.2")
    # Then the scene fails after MVPIPE_MAX_POLL_ERRORS fetches in a row, paid once (it
    # does not stay processing, holding its quota slot, until the script runs out)
    scene = view.scenes[0]
    assert scene.status == SceneStatus.FAILED, scene.status
    assert standin.created["replicate"] == 1 and scene.attempts == 1
    assert downloads(standin) == MAX_POLL_ERRORS
    assert "paid" in (scene.last_error or ""), scene.last_error


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_an_output_over_the_byte_cap_is_refused_and_the_scene_says_so(
    standin: ProviderStandIn, start_workers: StartWorkers, framing: str
) -> None:
    # Given an output a byte over the cap, its size declared or not (chunked: the bytes read
    # are counted)
    standin.output, standin.output_framing = output_of(MIB + 1), framing
    view = run_one_scene(start_workers, max_clip_bytes=str(MIB))
    # Then the output is refused once (not fetched again: it would be as large), the scene
    # fails saying the job was paid and why its output was refused, and nothing was stored
    scene = view.scenes[0]
    assert scene.status == SceneStatus.FAILED
    assert standin.created["replicate"] == 1 and downloads(standin) == 1
    error = scene.last_error or ""
    assert "paid" in error and "MVPIPE_MAX_CLIP_BYTES" in error and str(MIB) in error, error
    assert scene.original_video_clip_s3_key is None
    assert get_context().clips.list(scene_prefix(view.project_id, 1)) == []
