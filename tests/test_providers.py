"""Gemini, Veo and Replicate through their real SDK clients, pointed at a local stand-in of
their REST APIs (no network): planning, polling, error classification, resume, cancel."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from mvpipe import api
from mvpipe.deps import get_context, reset_context
from mvpipe.errors import (
    ConfigurationError,
    PermanentProviderError,
    QuotaExceeded,
    TransientProviderError,
)
from mvpipe.localstack import LocalStack
from mvpipe.models import ProjectStatus, SceneStatus
from mvpipe.pipeline.generate import SceneJob
from mvpipe.pipeline.steps import Next
from mvpipe.providers.base import Brief, JobState, VideoRequest
from mvpipe.providers.gemini import GeminiPlanner
from mvpipe.providers.render import probe_clip
from mvpipe.providers.replicate import ReplicateVideoProvider
from mvpipe.providers.veo import VeoVideoProvider
from mvpipe.settings import Settings
from tests.conftest import Workers
from tests.helpers import assert_invariants
from tests.standins import ProviderStandIn

StartWorkers = Callable[..., Workers]
KEYS = {
    "GOOGLE_API_KEY": "vertex-key-123456",
    "GEMINI_API_KEY": "gemini-key-123456",
    "REPLICATE_API_TOKEN": "r8-token-123456",
}


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[ProviderStandIn]:
    server = ProviderStandIn().start()
    for key, value in KEYS.items():
        monkeypatch.setenv(key, value)
    yield server
    server.stop()


def settings_for(standin: ProviderStandIn, **extra: object) -> Settings:
    values: dict[str, object] = {
        "genai_base_url": standin.url,
        "replicate_base_url": standin.url,
        "provider_timeout_seconds": 5,
        **extra,
    }
    return Settings(**values)  # type: ignore[arg-type]


def request() -> VideoRequest:
    return VideoRequest(str(uuid.uuid4()), 1, "a neon city at night", "blur", 6)


# -- planning ---------------------------------------------------------------------------------
def test_gemini_plans_structured_scenes(standin: ProviderStandIn) -> None:
    specs = GeminiPlanner(settings_for(standin)).plan(Brief("p", "Title", "la la la", 3))
    assert [s.prompt for s in specs] == ["shot 1", "shot 2", "shot 3"]
    assert all(s.duration_seconds == 6 and s.negative_prompt == "blur" for s in specs)
    assert any(":generateContent" in p for p in standin.paths)
    assert not any(KEYS["GEMINI_API_KEY"] in p for p in standin.paths)  # key in a header only


def test_gemini_invalid_output_gets_one_reask(standin: ProviderStandIn) -> None:
    good = {"scenes": [{"prompt": "a", "duration_seconds": 5}, {"prompt": "b"}]}
    standin.gemini_answers = [{"scenes": [{"prompt": "only one"}]}, good]
    specs = GeminiPlanner(settings_for(standin)).plan(Brief("p", "T", "c", 2))
    assert [s.prompt for s in specs] == ["a", "b"] and standin.calls["gemini"] == 2

    bad = {"scenes": [{"prompt": "x", "duration_seconds": 99}]}
    standin.gemini_answers = [bad, bad]
    with pytest.raises(PermanentProviderError, match="duration_seconds"):
        GeminiPlanner(settings_for(standin)).plan(Brief("p", "T", "c", 1))
    assert standin.calls["gemini"] == 4  # exactly one re-ask, then a clear permanent error


def test_missing_keys_name_the_variable(
    standin: ProviderStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [*KEYS, "GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION"]:
        monkeypatch.delenv(key, raising=False)
    settings = settings_for(standin)
    with pytest.raises(ConfigurationError, match="GOOGLE_API_KEY"):
        VeoVideoProvider(settings).submit(request())
    with pytest.raises(ConfigurationError, match="REPLICATE_API_TOKEN"):
        ReplicateVideoProvider(settings).submit(request())
    with pytest.raises(ConfigurationError, match="GEMINI_API_KEY"):
        GeminiPlanner(settings).plan(Brief("p", "T", "c", 1))
    assert standin.created == {}


# -- classification ---------------------------------------------------------------------------
@pytest.mark.parametrize("provider_class", [VeoVideoProvider, ReplicateVideoProvider])
def test_errors_are_classified_and_scrubbed(standin: ProviderStandIn, provider_class: type) -> None:
    provider = provider_class(settings_for(standin))
    kind = f"{provider.name}.create"
    standin.fail_next[kind] = [429]
    with pytest.raises(QuotaExceeded):
        provider.submit(request())
    standin.fail_next[kind] = [503]
    with pytest.raises(TransientProviderError):
        provider.submit(request())
    standin.error_message = f"invalid argument (key {KEYS['GOOGLE_API_KEY']})"
    standin.fail_next[kind] = [400]
    with pytest.raises(PermanentProviderError) as caught:
        provider.submit(request())
    assert "invalid argument" in str(caught.value)
    assert KEYS["GOOGLE_API_KEY"] not in str(caught.value)
    assert standin.created.get(provider.name, 0) == 0


def test_replicate_statuses_map_onto_job_states(standin: ProviderStandIn) -> None:
    provider = ReplicateVideoProvider(settings_for(standin))
    standin.replicate_sequence = ["starting", "processing", "aborted"]
    operation_id = provider.submit(request())
    states = [provider.poll(operation_id).state for _ in range(3)]
    assert states == [JobState.RUNNING, JobState.RUNNING, JobState.CANCELLED]
    standin.replicate_sequence = ["failed"]
    standin.replicate_error = "CUDA out of memory"
    failed = provider.poll(provider.submit(request()))
    assert failed.state == JobState.FAILED and "CUDA out of memory" in (failed.error or "")
    standin.replicate_sequence = ["processing"]
    running = provider.submit(request())
    assert provider.cancel(running) and provider.poll(running).state == JobState.CANCELLED
    standin.replicate_sequence = ["succeeded"]
    finished = provider.submit(request())
    assert provider.poll(finished).state == JobState.SUCCEEDED
    assert provider.cancel(finished) is False  # too late: the job made its video


def test_veo_safety_block_is_a_permanent_failure(standin: ProviderStandIn) -> None:
    provider = VeoVideoProvider(settings_for(standin))
    standin.veo_pending_polls, standin.veo_outcome = 0, "safety"
    status = provider.poll(provider.submit(request()))
    assert status.state == JobState.FAILED and "usage guidelines" in (status.error or "")
    assert not provider.can_cancel


# -- through the pipeline ---------------------------------------------------------------------
def provider_env(standin: ProviderStandIn) -> dict[str, str]:
    return {
        **KEYS,
        "MVPIPE_GENAI_BASE_URL": standin.url,
        "MVPIPE_REPLICATE_BASE_URL": standin.url,
        "MVPIPE_POLL_SECONDS": "0.1",
    }


@pytest.mark.integration
@pytest.mark.parametrize("provider", ["veo", "replicate"])
def test_full_project_with_gemini_planning_and_real_provider(
    standin: ProviderStandIn, start_workers: StartWorkers, provider: str
) -> None:
    # Two transient create errors on the way: retried with backoff, never paid twice.
    standin.fail_next[f"{provider}.create"] = [429, 500]
    standin.fail_next[f"{provider}.poll"] = [503]
    start_workers(env=provider_env(standin), planner="gemini", provider=provider)
    project_id = api.create_project("Real", "Verse one. Chorus.", scene_count=3)
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=120)
    assert view.status == ProjectStatus.COMPLETED, [s.last_error for s in view.scenes]
    assert [s.prompt for s in view.scenes] == ["shot 1", "shot 2", "shot 3"]  # from Gemini
    assert standin.created[provider] == 3
    assert standin.calls[f"{provider}.create"] == 5
    clips = get_context().clips
    for scene in view.scenes:
        codec, _, _ = probe_clip(clips.read(scene.original_video_clip_s3_key or ""))
        assert codec == "h264"
    assert_invariants(project_id)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("provider", "outcome"), [("veo", "400"), ("veo", "safety"), ("replicate", "failed")]
)
def test_permanent_errors_end_the_scene_failed_with_the_message(
    standin: ProviderStandIn, start_workers: StartWorkers, provider: str, outcome: str
) -> None:
    if outcome == "400":
        standin.error_message = "Invalid argument: prompt too long"
        standin.fail_next["veo.create"] = [400]
        expected = "Invalid argument"
    elif outcome == "safety":
        standin.veo_outcome = "safety"
        expected = "safety"
    else:
        standin.replicate_sequence = ["starting", "failed"]
        standin.replicate_error = "NSFW content detected"
        expected = "NSFW"
    start_workers(env=provider_env(standin), provider=provider)
    project_id = api.create_project("Blocked", "x", scenes=[{"prompt": "forbidden"}])
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=60)
    assert view.status == ProjectStatus.FAILED
    scene = view.scenes[0]
    assert scene.status == SceneStatus.FAILED and expected in (scene.last_error or "")
    assert scene.attempts == 1  # never resubmitted
    assert_invariants(project_id)


@pytest.mark.integration
@pytest.mark.parametrize("provider", ["veo", "replicate"])
def test_a_crash_between_submit_and_completion_resumes_the_same_operation(
    standin: ProviderStandIn,
    stack: LocalStack,
    monkeypatch: pytest.MonkeyPatch,
    provider: str,
) -> None:
    for key, value in provider_env(standin).items():
        monkeypatch.setenv(key, value)
    reset_context()
    ctx = get_context()
    project_id = api.create_project("Crash", "x", scenes=[{"prompt": "one"}], provider=provider)
    run_id = str(uuid.uuid4())
    ctx.projects.win_run(project_id, run_id, ProjectStatus.PROCESSING)

    first = SceneJob(ctx, project_id, 1, run_id, provider).step()
    assert first.next == Next.POLL
    operation_id = first.carry["operation_id"]
    # The worker dies here. A redelivered message starts again without the operation id:
    steps = 0
    step = SceneJob(ctx, project_id, 1, run_id, provider).step()
    while step.next == Next.POLL and steps < 50:
        assert step.carry["operation_id"] == operation_id
        step = SceneJob(ctx, project_id, 1, run_id, provider).step(**step.carry)
        steps += 1
    assert step.outcome == "completed"
    assert standin.created[provider] == 1
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.operation_id == operation_id
    assert scene.status == SceneStatus.COMPLETED
    reset_context()
