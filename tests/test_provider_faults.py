"""Transport faults through the real SDKs against the local stand-in: an answer slower than the
provider timeout, a connection reset, a 200 whose body is an HTML page (or JSON of the wrong
shape). Each is classified
(docs/DESIGN.md: transient → retried) and never taken for a refusal: a create that meets one may
have started a billed job (invariant 3), so its reservation stays and nothing assumes 'not sent'.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from mvpipe.deps import get_context
from mvpipe.devstack.localstack import LocalStack
from mvpipe.errors import (
    ConfigurationError,
    OutputUnavailable,
    PermanentProviderError,
    ProviderError,
    QuotaExceeded,
    TransientProviderError,
)
from mvpipe.providers.base import Brief, LipSyncRequest, VideoRequest
from mvpipe.providers.classify import from_status
from mvpipe.providers.gemini import GeminiPlanner
from mvpipe.providers.replicate import ReplicateVideoProvider
from mvpipe.providers.replicate_lipsync import ReplicateLipSyncProvider
from mvpipe.providers.veo import VeoVideoProvider
from mvpipe.settings import Settings, get_settings
from tests.standins import CLIP, KEYS, ProviderStandIn, running_standin, settings_for

FAULTS = ["slow", "reset", "garbage"]


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[ProviderStandIn]:
    with running_standin(monkeypatch) as server:
        yield server


def meeting(standin: ProviderStandIn, fault: str) -> Settings:
    """Settings for the call that meets `fault`: a short timeout only for a held answer (to get
    past it fast); every other call keeps a generous one, so a loaded machine can't turn an
    answer into a timeout."""
    return settings_for(standin, provider_timeout_seconds=0.5 if fault == "slow" else 10)


def video() -> VideoRequest:
    return VideoRequest(str(uuid.uuid4()), 1, "a neon city at night", "blur", 6)


def assert_unknown_outcome(exc: ProviderError) -> None:
    """Never a refusal, and never a secret in the message."""
    assert not exc.refused
    assert not any(key in str(exc) for key in KEYS.values())


@pytest.mark.parametrize(
    ("status", "kind", "refused"),
    [
        (400, PermanentProviderError, True),
        (401, PermanentProviderError, True),
        (422, PermanentProviderError, True),
        (408, TransientProviderError, True),
        (429, QuotaExceeded, True),
        (500, TransientProviderError, False),
        (502, TransientProviderError, False),
        (503, TransientProviderError, False),
        (504, TransientProviderError, False),
        (None, TransientProviderError, False),
    ],
)
def test_only_a_4xx_answer_is_a_refusal(
    status: int | None, kind: type[ProviderError], refused: bool
) -> None:
    # A 4xx says the request was not taken; a 5xx may come from a gateway after the provider
    # accepted the job, so a create that gets one keeps its reservation (a refusal gives it
    # back). Every 5xx is still transient: the submit is retried.
    error = from_status("veo", status, "answer")
    assert type(error) is kind
    assert error.refused is refused


@pytest.mark.parametrize("fault", [*FAULTS, "mistyped", "bad_gateway"])
@pytest.mark.parametrize("provider_class", [VeoVideoProvider, ReplicateVideoProvider])
def test_a_create_that_meets_a_fault_is_transient_and_not_a_refusal(
    standin: ProviderStandIn, provider_class: type, fault: str
) -> None:
    # Given a create the provider carries out (the job exists) but whose answer is lost
    provider = provider_class(meeting(standin, fault))
    standin.faults[f"{provider.name}.create"] = [fault]
    with pytest.raises(TransientProviderError) as caught:
        provider.submit(video())
    # Then it is retried later (transient) with its reservation kept (not refused)
    assert_unknown_outcome(caught.value)
    assert standin.created[provider.name] == 1


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("provider_class", [VeoVideoProvider, ReplicateVideoProvider])
def test_a_poll_that_meets_a_fault_is_retried_or_counted_never_a_failure(
    standin: ProviderStandIn, provider_class: type, fault: str
) -> None:
    usual = provider_class(settings_for(standin))
    operation_id = usual.submit(video())
    standin.faults[f"{usual.name}.poll"] = [fault]
    with pytest.raises(ProviderError) as caught:
        provider_class(meeting(standin, fault)).poll(operation_id)
    exc = caught.value
    assert_unknown_outcome(exc)
    assert not isinstance(exc, PermanentProviderError)  # the scene is not failed for it
    # slow and reset: transient (polled again); an unreadable answer: counted by the poll loop,
    # which fails the scene after MVPIPE_MAX_POLL_ERRORS of them in a row
    assert isinstance(exc, TransientProviderError) == (fault != "garbage")
    assert "could not be read" in str(exc) or fault != "garbage"
    # and the next poll, answered, goes on with the same job
    assert not usual.poll(operation_id).finished
    assert standin.created[usual.name] == 1


@pytest.mark.parametrize("fault", [*FAULTS, "mistyped"])
def test_a_planning_call_that_meets_a_fault_is_transient(
    standin: ProviderStandIn, fault: str
) -> None:
    standin.faults["gemini"] = [fault]
    with pytest.raises(TransientProviderError) as caught:
        GeminiPlanner(meeting(standin, fault)).plan(Brief("p", "T", "c", 1))
    assert_unknown_outcome(caught.value)
    planned = GeminiPlanner(settings_for(standin)).plan(Brief("p", "T", "c", 1))
    assert [s.prompt for s in planned] == ["shot 1"]


@pytest.mark.parametrize("fault", ["slow", "reset"])
def test_an_output_download_that_meets_a_fault_is_transient(
    standin: ProviderStandIn, fault: str
) -> None:
    usual = ReplicateVideoProvider(settings_for(standin))
    standin.replicate_sequence = ["succeeded"]
    status = usual.poll(usual.submit(video()))
    standin.faults["file"] = [fault]
    with pytest.raises(TransientProviderError):
        ReplicateVideoProvider(meeting(standin, fault)).download(status)
    assert usual.download(status)[4:8] == b"ftyp"


def test_an_output_download_refused_is_unavailable_and_one_over_the_cap_is_permanent(
    standin: ProviderStandIn,
) -> None:
    standin.replicate_sequence = ["succeeded"]
    status = ReplicateVideoProvider(settings_for(standin)).poll(
        ReplicateVideoProvider(settings_for(standin)).submit(video())
    )
    exact = ReplicateVideoProvider(settings_for(standin, max_clip_bytes=len(CLIP)))
    # a refused fetch (an expired URL, a deleted output) is not the job's failure
    for code in (403, 404, 410):
        standin.fail_next["file"] = [code]
        with pytest.raises(OutputUnavailable, match=str(code)):
            exact.download(status)
    # a 5xx stays transient
    standin.fail_next["file"] = [503]
    with pytest.raises(TransientProviderError):
        exact.download(status)
    # an output of exactly the cap is read; one byte over is refused, never fetched again
    assert exact.download(status) == CLIP
    under = ReplicateVideoProvider(settings_for(standin, max_clip_bytes=len(CLIP) - 1))
    with pytest.raises(PermanentProviderError, match=r"paid.*MVPIPE_MAX_CLIP_BYTES") as caught:
        under.download(status)
    assert not isinstance(caught.value, OutputUnavailable)


@pytest.mark.parametrize("value", ["0", "-1", "lots"])
def test_the_clip_byte_cap_must_be_a_positive_size(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("MVPIPE_MAX_CLIP_BYTES", value)
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigurationError, match="MVPIPE_MAX_CLIP_BYTES"):
            get_settings()
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


@pytest.mark.integration
@pytest.mark.parametrize("fault", FAULTS)
def test_lip_sync_calls_that_meet_a_fault_are_classified(
    standin: ProviderStandIn, stack: LocalStack, fault: str
) -> None:
    clips = get_context().clips
    clips.ensure()
    key = f"projects/{uuid.uuid4()}/scenes/001/op-cut-x.mp4"
    clips.put(key, b"\0\0\0\x18ftypisom" + bytes(64))
    audio_key = key.replace(".mp4", ".wav")
    clips.put(audio_key, b"RIFF\0\0\0\0WAVEfmt " + bytes(64), content_type="audio/wav")
    request = LipSyncRequest(
        "p", 1, clips.presigned_url(key, 300), clips.presigned_url(audio_key, 300), 1.0
    )
    faulted = ReplicateLipSyncProvider(meeting(standin, fault))
    standin.faults["replicate.create"] = [fault]
    with pytest.raises(TransientProviderError) as caught:
        faulted.submit(request)
    assert_unknown_outcome(caught.value)
    operation_id = ReplicateLipSyncProvider(settings_for(standin)).submit(request)
    standin.faults["replicate.poll"] = [fault]
    with pytest.raises(ProviderError) as polled:
        faulted.poll(operation_id)
    assert isinstance(polled.value, TransientProviderError) == (fault != "garbage")
    assert standin.created["replicate"] == 2  # the lost answer's job exists too
