"""Replicate lip-sync through the real SDK against the local stand-in, which fetches the
presigned S3 URLs it is given from the moto server, as Replicate fetches its inputs."""

from __future__ import annotations

import hashlib
import io
import uuid
import wave
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from mvpipe.deps import get_context
from mvpipe.devstack.localstack import LocalStack
from mvpipe.errors import ConfigurationError, PermanentProviderError
from mvpipe.media.probe import probe_video
from mvpipe.providers.base import JobState, LipSyncRequest
from mvpipe.providers.render import render_clip
from mvpipe.providers.replicate_lipsync import ReplicateLipSyncProvider
from mvpipe.settings import get_settings
from mvpipe.store.clips import ClipStore
from tests.standins import KEYS, ProviderStandIn, running_standin, settings_for


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[ProviderStandIn]:
    with running_standin(monkeypatch) as server:
        yield server


def slot_audio(seconds: float = 1.0, rate: int = 16_000) -> bytes:
    """A WAV of a slot's audio (a plain tone: what matters here is that its bytes arrive)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(int(seconds * rate) * 2))
    return buffer.getvalue()


def uploaded(clips: ClipStore, project_id: str) -> tuple[dict[str, bytes], dict[str, str]]:
    """A scene's working clip and its slot's audio in S3, and presigned GET URLs for them."""
    media = {"video": render_clip("working clip", 1.0), "audio": slot_audio()}
    keys = {
        "video": f"projects/{project_id}/scenes/001/op1-cut-abc.mp4",
        "audio": f"projects/{project_id}/scenes/001/slot-audio.wav",
    }
    clips.put(keys["video"], media["video"])
    clips.put(keys["audio"], media["audio"], content_type="audio/wav")
    return media, {name: clips.presigned_url(key, expires=300) for name, key in keys.items()}


@pytest.mark.integration
def test_the_model_fetches_the_working_clip_and_the_slot_audio(
    standin: ProviderStandIn, stack: LocalStack
) -> None:
    # Given a scene's working clip and its slot's audio in S3 (the moto server)
    clips = get_context().clips
    clips.ensure()
    project_id = str(uuid.uuid4())
    media, urls = uploaded(clips, project_id)
    provider = ReplicateLipSyncProvider(settings_for(standin, lipsync_input={"temperature": 0.5}))

    # When a lip-sync job is submitted with presigned URLs for them
    operation_id = provider.submit(
        LipSyncRequest(project_id, 1, video_url=urls["video"], audio_url=urls["audio"], seconds=1.0)
    )

    # Then the model was asked on its own path, with its inputs and the Bearer token...
    (create,) = [r for r in standin.requests if r.kind == "replicate.create"]
    assert create.path == "/v1/models/sync/lipsync-2/predictions"
    assert create.headers["authorization"] == f"Bearer {KEYS['REPLICATE_API_TOKEN']}"
    assert create.body["input"] == {
        "sync_mode": "cut_off",
        "temperature": 0.5,
        "video": urls["video"],
        "audio": urls["audio"],
    }
    # ...and fetched exactly the scene's working clip and the slot's audio from S3
    fetched = standin.lipsync_fetched[operation_id]
    for name, expected_type in (("video", "video/mp4"), ("audio", "audio/wav")):
        got = fetched[name]
        assert got.status == 200 and got.content_type == expected_type
        assert (got.size, got.sha256) == (
            len(media[name]),
            hashlib.sha256(media[name]).hexdigest(),
        )

    # When it succeeds, its output is fetched at once (Replicate deletes it after an hour)
    states = [provider.poll(operation_id) for _ in range(3)]
    assert [s.state for s in states] == [JobState.RUNNING, JobState.RUNNING, JobState.SUCCEEDED]
    facts = probe_video(provider.download(states[-1]))
    assert facts.video_codec == "h264" and facts.frames > 0
    assert standin.created["replicate"] == 1
    # A finished job can't be cancelled any more: only a confirmed stop counts
    assert provider.cancel(operation_id) is False


@pytest.mark.integration
def test_a_running_lip_sync_job_is_cancelled_only_when_replicate_confirms(
    standin: ProviderStandIn, stack: LocalStack
) -> None:
    clips = get_context().clips
    clips.ensure()
    _, urls = uploaded(clips, str(uuid.uuid4()))
    provider = ReplicateLipSyncProvider(settings_for(standin))
    standin.replicate_sequence = ["processing"]
    operation_id = provider.submit(LipSyncRequest("p", 1, urls["video"], urls["audio"], 1.0))
    assert provider.cancel(operation_id) is True
    assert provider.poll(operation_id).state == JobState.CANCELLED


@pytest.mark.integration
@pytest.mark.parametrize("wrong", ["missing object", "swapped"])
def test_inputs_the_model_cannot_fetch_are_refused_before_any_job(
    standin: ProviderStandIn, stack: LocalStack, wrong: str
) -> None:
    # The stand-in's checks can fail: a URL that does not serve the right media is a 422
    clips = get_context().clips
    clips.ensure()
    _, urls = uploaded(clips, str(uuid.uuid4()))
    if wrong == "missing object":
        video = clips.presigned_url(f"projects/{uuid.uuid4()}/scenes/001/none.mp4", expires=300)
        audio = urls["audio"]
    else:
        video, audio = urls["audio"], urls["video"]
    provider = ReplicateLipSyncProvider(settings_for(standin))
    with pytest.raises(
        PermanentProviderError, match=r"^replicate lip-sync: 422 .*input\.video"
    ) as caught:
        provider.submit(LipSyncRequest("p", 1, video, audio, 1.0))
    assert caught.value.refused
    assert standin.created == {}
    # the message names the object but never the URL's signature (a credential while it lasts)
    query = dict(part.split("=", 1) for part in urlsplit(video).query.split("&"))
    name = "X-Amz-Signature" if "X-Amz-Signature" in query else "Signature"  # SigV4 or V2
    message = str(caught.value)
    assert urlsplit(video).path in message and f"{name}=***" in message
    assert query[name] not in message


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[1, 2]", "MVPIPE_LIPSYNC_INPUT must be a JSON object"),
        ('{"video": "https://elsewhere"}', "MVPIPE_LIPSYNC_INPUT must not set video"),
        ("{not json", "lipsync_input"),
    ],
)
def test_extra_lip_sync_inputs_are_a_json_object_without_the_media(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("MVPIPE_LIPSYNC_INPUT", value)
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigurationError, match=message):
            get_settings()
        monkeypatch.setenv("MVPIPE_LIPSYNC_INPUT", '{"sync_mode": "silence"}')
        get_settings.cache_clear()
        assert get_settings().lipsync_input == {"sync_mode": "silence"}
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


@pytest.mark.parametrize("model", ["lipsync-2", "sync/lipsync-2:", "sync/lip sync", "a/b/c"])
def test_the_lip_sync_model_must_be_owner_name_or_owner_name_version(
    monkeypatch: pytest.MonkeyPatch, model: str
) -> None:
    monkeypatch.setenv("MVPIPE_LIPSYNC_MODEL", model)
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigurationError, match="MVPIPE_LIPSYNC_MODEL"):
            get_settings()
        monkeypatch.setenv("MVPIPE_LIPSYNC_MODEL", "bytedance/latentsync:9a8b7c")
        get_settings.cache_clear()
        assert get_settings().lipsync_model == "bytedance/latentsync:9a8b7c"
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
