"""A poll refused to us is not a failed job, through the real SDKs against the stand-in and on
the real stack (moto server, Celery workers): a 401, 403 or 404 answered to the poll of a job
id the provider gave us says our credential may not read the job (rotated during a deploy,
wrong on one worker), not that the job failed; it runs on and is billed. The poll is noted,
counted and asked again; past `MVPIPE_MAX_POLL_ERRORS` the scene fails with its operation
kept, and a user's next run polls that job instead of paying for another. A refused *submit*
still fails at once: nothing was paid."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from mvpipe import api
from mvpipe.deps import get_context
from mvpipe.devstack.localstack import LocalStack
from mvpipe.errors import PermanentProviderError, PollRefused
from mvpipe.models import ProjectSpec, ProjectStatus, ProjectView, SceneSpec, SceneStatus
from mvpipe.pipeline.generate import SceneJob
from mvpipe.pipeline.steps import Next
from mvpipe.providers.base import VideoRequest
from mvpipe.providers.replicate import ReplicateVideoProvider
from mvpipe.providers.replicate_lipsync import ReplicateLipSyncProvider
from mvpipe.providers.veo import VeoVideoProvider
from mvpipe.store.clips import clip_key
from tests.conftest import Workers
from tests.helpers import assert_invariants
from tests.standins import (
    KEYS,
    REPLICATE_MODEL,
    ProviderStandIn,
    configured_standin,
    replicate_env,
    settings_for,
    stored_lip_sync_request,
)

StartWorkers = Callable[..., Workers]
MODEL = REPLICATE_MODEL
MAX_POLL_ERRORS = 3
PROVIDERS = ["replicate", "veo"]
#: the key each provider's calls carry (a stand-in's error message may echo it)
TOKEN = {"replicate": "REPLICATE_API_TOKEN", "veo": "GOOGLE_API_KEY"}


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[ProviderStandIn]:
    with configured_standin(monkeypatch, replicate_env("6")) as server:
        yield server


def polls(standin: ProviderStandIn, provider: str) -> int:
    return sum(1 for r in standin.requests if r.kind == f"{provider}.poll")


# -- classification: the real SDKs against the stand-in ----------------------------------------
PROVIDER_CLASSES: dict[str, type[ReplicateVideoProvider] | type[VeoVideoProvider]] = {
    "replicate": ReplicateVideoProvider,
    "veo": VeoVideoProvider,
}


@pytest.mark.parametrize("status", [401, 403, 404])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_poll_refused_to_us_is_a_poll_refusal_not_a_failure(
    standin: ProviderStandIn, provider: str, status: int
) -> None:
    # Given a job the provider accepted, whose poll is refused to our credential
    video = PROVIDER_CLASSES[provider](settings_for(standin))
    operation_id = video.submit(VideoRequest(str(uuid.uuid4()), 1, "a city", None, 6))
    standin.error_message = f"key {KEYS[TOKEN[provider]]} may not read this"
    standin.fail_next[f"{provider}.poll"] = [status]
    with pytest.raises(PollRefused) as caught:
        video.poll(operation_id)
    # Then it is a refusal of the poll itself (not a permanent error, which fails the scene,
    # nor `refused`, which gives the paid job's reservation back), it says what to check, and
    # it holds no secret
    message = str(caught.value)
    assert type(caught.value) is PollRefused and not caught.value.refused
    assert f"poll refused (HTTP {status})" in message and "credentials" in message, message
    assert KEYS[TOKEN[provider]] not in message
    # and the next poll goes on with the same job
    assert not video.poll(operation_id).finished
    assert standin.created[provider] == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_submit_refused_to_us_is_still_a_permanent_refusal(
    standin: ProviderStandIn, provider: str
) -> None:
    # Given a create answered 401 (a configuration error: no job was taken)
    standin.fail_next[f"{provider}.create"] = [401]
    with pytest.raises(PermanentProviderError) as caught:
        PROVIDER_CLASSES[provider](settings_for(standin)).submit(
            VideoRequest(str(uuid.uuid4()), 1, "a city", None, 6)
        )
    # Then it is permanent and a refusal (its reservation is given back)
    assert caught.value.refused
    assert standin.created[provider] == 0


@pytest.mark.integration
@pytest.mark.parametrize("status", [401, 404])
def test_a_lip_sync_poll_refused_to_us_is_a_poll_refusal(
    standin: ProviderStandIn, stack: LocalStack, status: int
) -> None:
    # Given a lip-sync job the provider accepted (its inputs fetched from presigned URLs)
    request = stored_lip_sync_request()
    lipsync = ReplicateLipSyncProvider(settings_for(standin))
    operation_id = lipsync.submit(request)
    # When its poll is refused to our credential
    standin.fail_next["replicate.poll"] = [status]
    with pytest.raises(PollRefused) as caught:
        lipsync.poll(operation_id)
    # Then the lip-sync stage's poll is a refusal too (the paid machine counts it), and the
    # next poll goes on with the same job
    assert f"replicate lip-sync: poll refused (HTTP {status})" in str(caught.value)
    assert not lipsync.poll(operation_id).finished
    assert standin.created["replicate"] == 1


# -- one step at a time: the note on the scene ---------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_refused_poll_is_noted_on_the_scene_which_keeps_its_job(
    standin: ProviderStandIn, stack: LocalStack, provider: str
) -> None:
    ctx = get_context()
    project_id = api.create_project(
        "Refused", "x", scenes=[{"prompt": "one", "duration_seconds": 6}], provider=provider
    )
    run_id = str(uuid.uuid4())
    assert ctx.projects.win_run(project_id, run_id, ProjectStatus.PROCESSING) == run_id
    # Given a job whose first poll is refused, with a message echoing the credential
    standin.error_message = f"key {KEYS[TOKEN[provider]]} may not read this"
    standin.fail_next[f"{provider}.poll"] = [401]
    # When the scene's step submits it and polls it
    step = SceneJob(ctx, project_id, 1, run_id, provider).step()
    # Then the scene still holds the job, processing, with a scrubbed note saying why
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and step.next == Next.POLL
    assert scene.status == SceneStatus.PROCESSING and scene.operation_id
    note = scene.last_error or ""
    assert "poll refused (HTTP 401)" in note and "the job is kept" in note, note
    assert KEYS[TOKEN[provider]] not in note
    # and the next polls, answered, finish the scene's generation on that one job
    for _ in range(20):
        if step.next != Next.POLL:
            break
        step = SceneJob(ctx, project_id, 1, run_id, provider).step(**step.carry)
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.original_clip_key, step
    assert standin.created[provider] == 1


# -- on workers --------------------------------------------------------------------------------
def start(start_workers: StartWorkers) -> None:
    start_workers(
        env={"MVPIPE_POLL_SECONDS": "0.1", "MVPIPE_MAX_POLL_ERRORS": str(MAX_POLL_ERRORS)},
        backoff_base="0.1",
        backoff_max="0.5",
    )


def create(provider: str) -> str:
    project_id = str(uuid.uuid4())
    spec = ProjectSpec(
        title="Refused",
        concept="x",
        provider=provider,
        requested_scene_count=1,
        scenes=(SceneSpec(prompt="a paid shot", duration_seconds=6),),
    )
    get_context().projects.create(project_id, spec)
    return project_id


def run(project_id: str) -> ProjectView:
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=60)
    assert_invariants(project_id)
    return view


def first_run(
    standin: ProviderStandIn, start_workers: StartWorkers, call: str, statuses: list[int]
) -> tuple[str, ProjectView]:
    """A project of one scene run once on workers, the stand-in answering `call` (such as
    "veo.poll") with `statuses` first: its id and its view."""
    standin.fail_next[call] = statuses
    start(start_workers)
    project_id = create(call.split(".")[0])
    return project_id, run(project_id)


@pytest.mark.integration
@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_poll_refused_once_is_asked_again_and_the_scene_completes_paid_once(
    standin: ProviderStandIn, start_workers: StartWorkers, provider: str
) -> None:
    # Given a job whose first poll is answered 401 (a credential rotated under the worker)
    _, view = first_run(standin, start_workers, f"{provider}.poll", [401])
    # Then the scene completes on the one paid job
    scene = view.scenes[0]
    assert scene.status == SceneStatus.COMPLETED, scene.last_error
    assert standin.created[provider] == 1 and scene.attempts == 1


@pytest.mark.integration
@pytest.mark.parametrize("provider", PROVIDERS)
def test_polls_always_refused_fail_after_the_limit_and_the_next_run_polls_the_kept_job(
    standin: ProviderStandIn, start_workers: StartWorkers, provider: str
) -> None:
    # Given a job whose every poll is refused (a credential wrong on the worker)
    project_id, view = first_run(standin, start_workers, f"{provider}.poll", [403] * 50)
    # Then the scene fails after MVPIPE_MAX_POLL_ERRORS counted polls (the submit's own first
    # poll is not counted), paid once, saying why and that the job is kept
    scene = view.scenes[0]
    assert scene.status == SceneStatus.FAILED and view.status == ProjectStatus.FAILED
    assert standin.created[provider] == 1 and scene.attempts == 1
    assert polls(standin, provider) == MAX_POLL_ERRORS + 1
    error = scene.last_error or ""
    assert "poll refused (HTTP 403)" in error and "may be paid" in error, error
    assert "kept" in error and f"({MAX_POLL_ERRORS} tries)" in error, error
    kept = scene.provider_operation_id
    assert kept is not None
    # When the credential is fixed and the user runs the project again
    standin.fail_next[f"{provider}.poll"] = []
    view = run(project_id)
    # Then the run polls the kept job and completes the scene with it: nothing paid again
    scene = view.scenes[0]
    assert scene.status == SceneStatus.COMPLETED, scene.last_error
    assert view.status == ProjectStatus.COMPLETED
    assert standin.created[provider] == 1 and scene.provider_operation_id == kept
    assert scene.original_video_clip_s3_key == clip_key(project_id, 1, kept)


@pytest.mark.integration
@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_submit_refused_401_fails_the_scene_at_once_paying_nothing(
    standin: ProviderStandIn, start_workers: StartWorkers, provider: str
) -> None:
    # Given a provider that refuses the create itself (a configuration error)
    _, view = first_run(standin, start_workers, f"{provider}.create", [401])
    # Then the scene fails at once, on its one submission, with nothing paid or kept
    scene = view.scenes[0]
    assert scene.status == SceneStatus.FAILED
    assert standin.created[provider] == 0 and scene.attempts == 1
    assert scene.provider_operation_id is None and scene.cost_usd == 0
    assert "401" in (scene.last_error or ""), scene.last_error
    assert polls(standin, provider) == 0
