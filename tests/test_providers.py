"""Gemini, Veo and Replicate through their real SDK clients, pointed at a local stand-in of
their REST APIs (no network): planning, polling, error classification, resume, cancel."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

from mvpipe import api
from mvpipe.deps import get_context, reset_context
from mvpipe.devstack.localstack import LocalStack
from mvpipe.errors import (
    ConfigurationError,
    PermanentProviderError,
    ProviderError,
    QuotaExceeded,
    TransientProviderError,
)
from mvpipe.media.probe import probe_video
from mvpipe.media.synth import synthesize_song
from mvpipe.media.timeline import Timeline
from mvpipe.models import ProjectStatus, SceneStatus
from mvpipe.pipeline.generate import SceneJob
from mvpipe.pipeline.steps import Next
from mvpipe.pipeline.timeline import song_slots
from mvpipe.providers.base import Brief, JobState, SlotBrief, VideoRequest
from mvpipe.providers.gemini import GeminiPlanner
from mvpipe.providers.replicate import ReplicateVideoProvider
from mvpipe.providers.veo import VeoVideoProvider
from tests.conftest import Workers
from tests.helpers import assert_invariants
from tests.standins import KEYS, ProviderStandIn, running_standin, settings_for

StartWorkers = Callable[..., Workers]


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[ProviderStandIn]:
    with running_standin(monkeypatch) as server:
        yield server


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


def slot_brief(*, lip_sync: bool) -> Brief:
    slots = (
        SlotBrief(0.0, 2.5, "A", ("Neon rain",)),
        SlotBrief(2.5, 6.5, "A", ("On the glass",)),
        SlotBrief(6.5, 10.0, "B"),
    )
    concept = "Neon rain\nOn the glass"
    return Brief("p", "Neon", concept, 3, slots=slots, lip_sync=lip_sync)


def test_gemini_writes_one_scene_per_slot_and_reasks_a_wrong_count_once(
    standin: ProviderStandIn,
) -> None:
    # Given a model whose first answer has one scene for three slots
    standin.gemini_answers = [{"scenes": [{"prompt": "just one"}]}]
    specs = GeminiPlanner(settings_for(standin)).plan(slot_brief(lip_sync=True))
    # Then it was asked again, and its second answer is the plan: one scene per slot
    assert standin.calls["gemini"] == 2
    assert [s.prompt for s in specs] == ["slot shot 1", "slot shot 2", "slot shot 3"]
    assert [s.lip_sync for s in specs] == [False, True, False]
    first, second = standin.gemini_prompts
    assert "exactly 3 scenes" in first and "3 slots" in first and "one per slot" in first
    assert "1. 0.00-2.50 s, section A, lyrics: Neon rain" in first
    assert "3. 6.50-10.00 s, section B\n" in first
    assert "expected exactly 3 scenes (one per slot), got 1" in second


def test_gemini_lip_sync_flags_count_only_when_the_project_asks(
    standin: ProviderStandIn,
) -> None:
    specs = GeminiPlanner(settings_for(standin)).plan(slot_brief(lip_sync=False))
    assert len(specs) == 3 and not any(s.lip_sync for s in specs)  # the model said yes once
    assert "always false" in standin.gemini_prompts[0]


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


def test_a_replicate_reply_that_is_not_a_json_object_is_a_provider_error(
    standin: ProviderStandIn,
) -> None:
    provider = ReplicateVideoProvider(settings_for(standin))
    operation_id = provider.submit(request())
    standin.replicate_reply = ["not", "an", "object"]
    with pytest.raises(ProviderError, match="not an object") as caught:
        provider.poll(operation_id)
    # neither transient (polled forever) nor permanent: counted like other unreadable replies
    assert not isinstance(caught.value, (TransientProviderError, PermanentProviderError))
    assert provider.cancel(operation_id) is False  # not confirmed, and no AttributeError


def test_veo_safety_block_is_a_permanent_failure(standin: ProviderStandIn) -> None:
    provider = VeoVideoProvider(settings_for(standin))
    standin.veo_pending_polls, standin.veo_outcome = 0, "safety"
    status = provider.poll(provider.submit(request()))
    assert status.state == JobState.FAILED and "usage guidelines" in (status.error or "")
    assert not provider.can_cancel


# -- request bodies ---------------------------------------------------------------------------
def test_veo_asks_for_a_duration_it_makes_and_no_audio_for_a_song_scene(
    standin: ProviderStandIn,
) -> None:
    provider = VeoVideoProvider(settings_for(standin))
    # A song scene: the song replaces the sound, so no audio is asked (or paid) for
    provider.submit(replace(request(), duration_seconds=4, with_audio=False))
    # A scene without a song keeps the model's own sound
    provider.submit(replace(request(), duration_seconds=8))
    song, plain = (body["parameters"] for body in standin.veo_bodies)
    assert song["durationSeconds"] == 4 and song["generateAudio"] is False
    assert plain["durationSeconds"] == 8 and "generateAudio" not in plain
    assert [body["instances"][0]["prompt"] for body in standin.veo_bodies] == [
        "a neon city at night"
    ] * 2
    # A length Veo does not make (its price was reserved on it) is refused before any call,
    # never changed into another one that would be billed instead
    for seconds in (5, 12):
        with pytest.raises(PermanentProviderError, match=f"a {seconds} s clip") as caught:
            provider.submit(replace(request(), duration_seconds=seconds))
        assert caught.value.refused
    assert standin.created["veo"] == 2 == standin.calls["veo.create"]


def test_replicate_gets_prompt_negative_prompt_and_the_duration_input(
    standin: ProviderStandIn,
) -> None:
    provider = ReplicateVideoProvider(settings_for(standin, replicate_durations="5,10"))
    operation_id = provider.submit(replace(request(), duration_seconds=10))
    assert standin.predictions[operation_id]["input"] == {
        "prompt": "a neon city at night",
        "negative_prompt": "blur",
        "duration": 10,
    }
    # A model whose length input has another name gets it there
    standin.replicate_duration_input = "seconds"
    renamed = ReplicateVideoProvider(
        settings_for(standin, replicate_durations="5,10", replicate_duration_input="seconds")
    )
    assert standin.predictions[renamed.submit(replace(request(), duration_seconds=5))]["input"] == {
        "prompt": "a neon city at night",
        "negative_prompt": "blur",
        "seconds": 5,
    }
    # A length outside MVPIPE_REPLICATE_DURATIONS is refused before any call
    with pytest.raises(PermanentProviderError, match="a 6 s clip") as caught:
        renamed.submit(request())
    assert caught.value.refused
    assert standin.created["replicate"] == 2 == standin.calls["replicate.create"]


def test_each_api_gets_its_own_credentials_in_a_header(standin: ProviderStandIn) -> None:
    # Given both Google keys set (the SDK alone would prefer GOOGLE_API_KEY for Gemini)
    settings = settings_for(standin)
    GeminiPlanner(settings).plan(Brief("p", "T", "c", 1))
    veo = VeoVideoProvider(settings)
    veo.poll(veo.submit(request()))
    replicate = ReplicateVideoProvider(settings)
    operation_id = replicate.submit(request())
    replicate.poll(operation_id)
    replicate.cancel(operation_id)
    # Then Gemini got the Gemini key and nothing of the Vertex key; Veo the Vertex key
    by_kind: dict[str, list[dict[str, str]]] = {}
    for recorded in standin.requests:
        by_kind.setdefault(recorded.kind, []).append(recorded.headers)
    assert set(by_kind) == {
        "gemini", "veo.create", "veo.poll", "replicate.create", "replicate.poll",
        "replicate.cancel",
    }  # fmt: skip
    for headers in by_kind["gemini"]:
        assert headers["x-goog-api-key"] == KEYS["GEMINI_API_KEY"]
        assert not any(KEYS["GOOGLE_API_KEY"] in value for value in headers.values())
    for headers in by_kind["veo.create"] + by_kind["veo.poll"]:
        assert headers["x-goog-api-key"] == KEYS["GOOGLE_API_KEY"]
    # and every Replicate call (SDK create, plain poll and cancel) the Bearer token
    for kind in ("replicate.create", "replicate.poll", "replicate.cancel"):
        for headers in by_kind[kind]:
            assert headers["authorization"] == f"Bearer {KEYS['REPLICATE_API_TOKEN']}"
    assert not any(key in path for key in KEYS.values() for path in standin.paths)


@pytest.mark.parametrize(
    ("variable", "refused"),
    [
        ("GEMINI_API_KEY", "gemini"),
        ("GOOGLE_API_KEY", "veo.create"),
        ("REPLICATE_API_TOKEN", "replicate.create"),
    ],
)
def test_the_standins_refuse_wrong_credentials(
    standin: ProviderStandIn, monkeypatch: pytest.MonkeyPatch, variable: str, refused: str
) -> None:
    # A stand-in that took any key would prove nothing above: a wrong one is a 401, permanent
    monkeypatch.setenv(variable, "wrong-key-000000")
    settings = settings_for(standin)
    calls: dict[str, Callable[[], object]] = {
        "gemini": lambda: GeminiPlanner(settings).plan(Brief("p", "T", "c", 1)),
        "veo.create": lambda: VeoVideoProvider(settings).submit(request()),
        "replicate.create": lambda: ReplicateVideoProvider(settings).submit(request()),
    }
    with pytest.raises(PermanentProviderError, match="401") as caught:
        calls[refused]()
    assert caught.value.refused and "wrong-key" not in str(caught.value)
    assert standin.calls == {} and standin.created == {}
    # ... and Gemini given the Vertex key (what the SDK would pick by itself) is refused too
    monkeypatch.setenv("GEMINI_API_KEY", KEYS["GOOGLE_API_KEY"])
    with pytest.raises(PermanentProviderError, match="403"):
        GeminiPlanner(settings_for(standin)).plan(Brief("p", "T", "c", 1))


def test_the_standins_refuse_bodies_the_real_apis_would(standin: ProviderStandIn) -> None:
    # The checks above can fail: a stand-in that accepted anything would prove nothing
    standin.replicate_duration_input = "seconds"
    with pytest.raises(PermanentProviderError, match=r"input\.seconds must be an integer"):
        ReplicateVideoProvider(settings_for(standin)).submit(request())
    assert ProviderStandIn.veo_refusal(
        {"instances": [{"prompt": "x"}], "parameters": {"sampleCount": 1, "durationSeconds": 5}}
    )
    assert standin.created == {}


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
    # Two transient create errors on the way: retried with backoff, never paid twice; polls
    # and planning meet a 503, a reset connection and an HTML page: retried (or counted)
    standin.fail_next[f"{provider}.create"] = [429, 500]
    standin.fail_next[f"{provider}.poll"] = [503]
    standin.faults[f"{provider}.poll"] = ["reset", "garbage"]
    standin.faults["gemini"] = ["reset", "garbage"]
    start_workers(env=provider_env(standin), planner="gemini", provider=provider)
    project_id = api.create_project("Real", "Verse one. Chorus.", scene_count=3)
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=120)
    assert view.status == ProjectStatus.COMPLETED, [s.last_error for s in view.scenes]
    assert [s.prompt for s in view.scenes] == ["shot 1", "shot 2", "shot 3"]  # from Gemini
    assert standin.created[provider] == 3
    assert standin.calls[f"{provider}.create"] == 5
    assert standin.calls["gemini"] == 3 and standin.faults["gemini"] == []
    assert standin.faults[f"{provider}.poll"] == []  # both met, and the scenes still completed
    # no song: every Veo clip keeps the model's own sound
    assert not any("generateAudio" in body["parameters"] for body in standin.veo_bodies)
    clips = get_context().clips
    for scene in view.scenes:
        facts = probe_video(clips.read(scene.original_video_clip_s3_key or ""))
        assert facts.video_codec == "h264"
    assert_invariants(project_id)


@pytest.mark.integration
@pytest.mark.parametrize("wrong_answers", [1, 2])
def test_gemini_plans_a_song_project_or_fails_it_after_one_reask(
    standin: ProviderStandIn, start_workers: StartWorkers, wrong_answers: int
) -> None:
    # Given Gemini answering with a wrong number of scenes once (or twice)
    standin.gemini_answers = [{"scenes": [{"prompt": "one"}]}] * wrong_answers
    start_workers(env=provider_env(standin), planner="gemini", slot_max_seconds="4")
    song = synthesize_song(seconds=10.3, bpm=120.0, offset=0.25, sections=2)
    project_id = api.create_project("Song", "Neon rain.\nOn the glass.", song=song.wav)
    # When the project runs (a plain worker: it consumes mvpipe.media too)
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=120)
    # Then Gemini was asked for one scene per slot of the stored timeline, twice at most
    assert standin.calls["gemini"] == 2
    asked = [ProviderStandIn.gemini_count(text) for text in standin.gemini_prompts]
    ctx = get_context()
    timeline = Timeline.from_json(ctx.songs.read(view.timeline_s3_key or ""))
    slots = song_slots(ctx.settings, ctx.projects.get(project_id), timeline)
    assert asked == [len(slots), len(slots)] and len(slots) >= 3
    if wrong_answers == 1:
        assert view.status == ProjectStatus.COMPLETED, view.last_error
        expected = [f"slot shot {n}" for n in range(1, 1 + len(slots))]
        assert [s.prompt for s in view.scenes] == expected
        assert [(s.start_seconds, s.end_seconds) for s in view.scenes] == [
            (slot.start_seconds, slot.end_seconds) for slot in slots
        ]
        assert not any(s.lip_sync for s in view.scenes)  # the project did not ask for it
    else:
        # a wrong count twice: planning fails, says why, and writes no scene
        assert view.status == ProjectStatus.FAILED
        assert f"expected exactly {len(slots)} scenes" in (view.last_error or "")
        assert view.scenes == [] and view.scene_count == 0
    assert_invariants(project_id)


@pytest.mark.integration
def test_a_song_project_on_veo_asks_for_its_slot_lengths_and_no_audio(
    standin: ProviderStandIn, start_workers: StartWorkers
) -> None:
    # Given a song project on Veo (the stand-in refuses lengths other than 4, 6 or 8 s)
    start_workers(env=provider_env(standin), provider="veo", slot_max_seconds="4")
    song = synthesize_song(seconds=10.3, bpm=120.0, offset=0.25, sections=2)
    project_id = api.create_project("Song", "Neon rain.", song=song.wav)
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=120)
    # Then every scene's clip was asked at its own length, without audio (the song is the sound)
    assert view.status == ProjectStatus.COMPLETED, [s.last_error for s in view.scenes]
    asked = [body["parameters"] for body in standin.veo_bodies]
    assert len(asked) == len(view.scenes) >= 2
    assert sorted(p["durationSeconds"] for p in asked) == sorted(
        s.duration_seconds for s in view.scenes
    )
    assert all(p["generateAudio"] is False for p in asked)
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
    assert ctx.projects.win_run(project_id, run_id, ProjectStatus.PROCESSING) == run_id

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


@pytest.mark.integration
@pytest.mark.usefixtures("broker_cleared")
@pytest.mark.parametrize(
    ("fault", "created", "refunded"),
    [
        ("429", 0, True),
        ("close", 1, False),
        ("reset", 1, False),
        ("slow", 1, False),
        ("garbage", 1, False),
        ("bad_gateway", 1, False),
        ("500", 0, False),
        ("502", 0, False),
        ("503", 0, False),
        ("504", 0, False),
    ],
)
def test_a_refused_submit_gives_its_reservation_back_a_lost_answer_keeps_it(
    standin: ProviderStandIn,
    stack: LocalStack,
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
    created: int,
    refunded: bool,
) -> None:
    # Given a Replicate project (minimax/video-01: $0.50 a job) whose first create is either
    # refused (a 429), carried out with its answer lost (the connection closes or is reset, the
    # answer comes after the timeout, is an HTML page or a gateway's 502), or answered with a
    # 5xx that cannot tell whether the provider took the job
    for key, value in provider_env(standin).items():
        monkeypatch.setenv(key, value)
    if fault == "slow":  # past a short timeout fast; every other call keeps the usual one
        monkeypatch.setenv("MVPIPE_PROVIDER_TIMEOUT_SECONDS", "0.5")
    # room for any quota slot an earlier test's own steps left (this one's are cleared after it)
    monkeypatch.setenv("MVPIPE_PROVIDER_CONCURRENCY", "100")
    reset_context()
    ctx = get_context()
    price = 500_000
    project_id = api.create_project("Money", "x", scenes=[{"prompt": "one"}], provider="replicate")
    run_id = str(uuid.uuid4())
    assert ctx.projects.win_run(project_id, run_id, ProjectStatus.PROCESSING) == run_id
    if fault.isdigit():
        standin.fail_next["replicate.create"] = [int(fault)]
    else:
        standin.faults["replicate.create"] = [fault]

    def committed() -> tuple[int, int]:
        scene = ctx.scenes.get(project_id, 1)
        assert scene is not None
        return ctx.scenes.budgets.read(project_id).committed_micros, scene.cost_micros

    # When the submit fails, the reservation goes back only if the provider surely refused:
    # after a lost answer or a 5xx the job may run (and be billed), so its price stays
    # committed, on the project and on the scene alike (invariant 4)
    first = SceneJob(ctx, project_id, 1, run_id, "replicate").step()
    assert first.next == Next.RETRY_SUBMIT  # a transient error: the submit is retried
    assert standin.created.get("replicate", 0) == created
    kept = 0 if refunded else price
    assert committed() == (kept, kept)
    # and the project notes the money kept by a submit of unknown outcome (none after a 4xx)
    assert ctx.scenes.budgets.read(project_id).unknown_micros == kept
    monkeypatch.setenv("MVPIPE_PROVIDER_TIMEOUT_SECONDS", "10")
    reset_context()
    ctx = get_context()
    # Then the retry pays for a new job, and the committed sum covers every job the provider
    # accepted (and every one it may have), no more when it refused
    again = SceneJob(ctx, project_id, 1, run_id, "replicate").step()
    assert again.next == Next.POLL
    assert standin.created["replicate"] == created + 1
    reserved = price + kept
    assert committed() == (reserved, reserved)
    reset_context()


@pytest.mark.integration
@pytest.mark.parametrize("status", [503, 502])
def test_a_budget_held_by_a_submit_of_unknown_outcome_says_so_and_raising_it_continues(
    standin: ProviderStandIn, start_workers: StartWorkers, status: int
) -> None:
    # Given a Replicate project (minimax/video-01: $0.50 a job) on a budget of one job, whose
    # first create is answered with a 5xx and no job made: the provider may have taken it, so
    # its price stays committed while the submit is retried
    standin.fail_next["replicate.create"] = [status]
    start_workers(env=provider_env(standin), provider="replicate")
    scenes = [{"prompt": "one"}]
    project_id = api.create_project(
        "Money", "x", scenes=scenes, provider="replicate", budget_usd=0.5
    )

    # When it runs
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=120)

    # Then the retry does not fit: the scene fails over budget, and its error says the money
    # is held by a submit whose outcome is unknown and that raising the budget continues
    assert view.status == ProjectStatus.FAILED
    assert view.scenes[0].last_error == (
        "over budget: needs $0.50, $0.00 left of $0.50; $0.50 of the $0.50 committed is held by"
        " submits whose outcome is unknown (a 5xx or a timeout: the provider may not bill"
        " them); raise the budget and run again to continue"
    )
    assert standin.calls["replicate.create"] == 1 and standin.created == {}
    state = get_context().projects.load(project_id)
    assert state.project.committed_cost_micros == sum(s.cost_micros for s in state.scenes)
    assert state.project.committed_cost_micros == 500_000

    # When the budget is raised and the project runs again
    api.set_budget(project_id, 1.0)
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=120)

    # Then it completes, the one job the provider made paid for once more
    assert view.status == ProjectStatus.COMPLETED, [s.last_error for s in view.scenes]
    assert standin.created == {"replicate": 1}
    state = get_context().projects.load(project_id)
    assert state.project.committed_cost_micros == sum(s.cost_micros for s in state.scenes)
    assert state.project.committed_cost_micros == 1_000_000
    assert_invariants(project_id)
