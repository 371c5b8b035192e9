"""Transport faults through the real SDKs against the local stand-in: an answer slower than the
provider timeout, a connection reset, a 200 whose body is an HTML page (or JSON of the wrong
shape). Each is classified
(docs/DESIGN.md: transient → retried) and never taken for a refusal: a create that meets one may
have started a billed job (invariant 3), so its reservation stays and nothing assumes 'not sent'.
"""

from __future__ import annotations

import gzip
import traceback
import uuid
from collections.abc import Iterator

import httpx
import pytest

from mvpipe.devstack.localstack import LocalStack
from mvpipe.errors import (
    ConfigurationError,
    OutputUnavailable,
    PermanentProviderError,
    ProviderError,
    QuotaExceeded,
    TransientProviderError,
)
from mvpipe.providers.base import Brief, JobState, JobStatus, VideoRequest
from mvpipe.providers.classify import from_status
from mvpipe.providers.gemini import GeminiPlanner
from mvpipe.providers.outputs import MAX_REDIRECTS, classified, download
from mvpipe.providers.replicate import ReplicateVideoProvider
from mvpipe.providers.replicate_lipsync import ReplicateLipSyncProvider
from mvpipe.providers.veo import VeoVideoProvider
from mvpipe.settings import CLIP_BYTES_RANGE, MIB, Settings, get_settings
from tests.standins import (
    CLIP,
    KEYS,
    ProviderStandIn,
    output_of,
    running_standin,
    settings_for,
    stored_lip_sync_request,
)

FAULTS = ["slow", "reset", "garbage", "undecodable"]
#: the faults whose answer arrives but cannot be read
UNREADABLE = ("garbage", "undecodable")
#: answers sent a byte at a time: the body, or the whole answer, head too
TRICKLES = ["trickle", "trickle_head"]


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


def test_only_a_check_before_any_request_is_a_replicate_refusal(standin: ProviderStandIn) -> None:
    # The SDK's own argument checks raise ValueError before sending: nothing was created, the
    # reservation may go back. A reply it cannot read is a ValueError too, but comes after.
    provider = ReplicateVideoProvider(settings_for(standin))
    fields = provider.build_input(video())
    with pytest.raises(PermanentProviderError) as caught:
        provider.jobs.create("not-an-owner-and-name", fields)
    assert caught.value.refused
    assert standin.requests == []
    standin.faults["replicate.create"] = ["undecodable"]
    with pytest.raises(TransientProviderError) as unread:
        provider.jobs.create("owner/model:version1", fields)
    assert_unknown_outcome(unread.value)
    assert "could not be read" in str(unread.value)


def gave_up_at_its_deadline(standin: ProviderStandIn, exc: ProviderError) -> None:
    """A call held by a trickled answer ended at its deadline, long before the answer was
    through, as a timeout: transient, never a refusal (the reservation of a create is kept)."""
    assert standin.trickled_whole == 0
    assert type(exc) is TransientProviderError
    assert_unknown_outcome(exc)
    assert "Timeout" in str(exc)  # the wait cut to what was left, or begun past it


@pytest.mark.parametrize("fault", TRICKLES)
@pytest.mark.parametrize("provider_class", [VeoVideoProvider, ReplicateVideoProvider])
def test_a_create_whose_answer_trickles_ends_at_its_deadline(
    standin: ProviderStandIn, provider_class: type, fault: str
) -> None:
    # Given a create the provider carries out, whose answer comes a byte at a time, each far
    # inside the read timeout (20 s or more in all, past the lease a 1 s timeout allows)
    provider = provider_class(settings_for(standin, provider_timeout_seconds=1))
    standin.faults[f"{provider.name}.create"] = [fault]
    with pytest.raises(ProviderError) as caught:
        provider.submit(video())
    # Then the create ends at its deadline with its outcome unknown (its reservation kept,
    # the scene resumed as after any timeout), and the job it started is the only one
    gave_up_at_its_deadline(standin, caught.value)
    assert standin.created[provider.name] == 1


@pytest.mark.parametrize("fault", TRICKLES)
@pytest.mark.parametrize("kind", ["gemini", "veo.poll", "replicate.poll"])
def test_every_other_provider_call_ends_at_its_deadline(
    standin: ProviderStandIn, kind: str, fault: str
) -> None:
    # A plan and a poll hold a worker's slot, not money, but are bounded the same way
    bounded = settings_for(standin, provider_timeout_seconds=1)
    with pytest.raises(ProviderError) as caught:
        if kind == "gemini":
            standin.faults[kind] = [fault]
            GeminiPlanner(bounded).plan(Brief("p", "T", "c", 1))
        else:
            provider_class = VeoVideoProvider if kind == "veo.poll" else ReplicateVideoProvider
            operation_id = provider_class(settings_for(standin)).submit(video())
            standin.faults[kind] = [fault]
            provider_class(bounded).poll(operation_id)
    gave_up_at_its_deadline(standin, caught.value)


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
    assert isinstance(exc, TransientProviderError) == (fault not in UNREADABLE)
    assert "could not be read" in str(exc) or fault not in UNREADABLE
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


def finished(standin: ProviderStandIn) -> JobStatus:
    """A finished Replicate job whose output is the stand-in's `output` file."""
    standin.replicate_sequence = ["succeeded"]
    usual = ReplicateVideoProvider(settings_for(standin))
    return usual.poll(usual.submit(video()))


def downloads(standin: ProviderStandIn) -> int:
    return sum(1 for r in standin.requests if r.kind == "file")


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_an_output_download_refused_is_unavailable_and_one_over_the_cap_is_permanent(
    standin: ProviderStandIn, framing: str
) -> None:
    # Given an output of 1 MiB and a byte, declared or chunked (no length: counted as read)
    standin.output, standin.output_framing = output_of(MIB + 1), framing
    status = finished(standin)
    exact = ReplicateVideoProvider(settings_for(standin, max_clip_bytes=MIB + 1))
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
    assert exact.download(status) == standin.output
    under = ReplicateVideoProvider(settings_for(standin, max_clip_bytes=MIB))
    with pytest.raises(PermanentProviderError) as caught:
        under.download(status)
    # exactly permanent (the scene fails: not fetched again), naming the cap; never `refused`,
    # since the job is paid
    assert type(caught.value) is PermanentProviderError and not caught.value.refused
    assert str(caught.value) == (
        "replicate: the job is paid for but its output was refused: it is larger than "
        f"MVPIPE_MAX_CLIP_BYTES ({MIB} bytes)"
    )


def test_an_output_download_asks_for_the_bytes_as_stored(standin: ProviderStandIn) -> None:
    # The cap counts the bytes we store: a gzip answer would be decoded past it
    status = finished(standin)
    assert ReplicateVideoProvider(settings_for(standin)).download(status) == CLIP
    assert [r.headers.get("accept-encoding") for r in standin.requests if r.kind == "file"] == [
        "identity"
    ]


@pytest.mark.parametrize("body", ["gzip", "not gzip"])
def test_an_output_sent_encoded_all_the_same_is_unavailable(
    standin: ProviderStandIn, body: str
) -> None:
    # Given a server that gzips the output though identity was asked (a valid gzip of more
    # than the cap, or a body that only claims to be gzip)
    status = finished(standin)
    standin.output_encoding = "gzip"
    standin.output = gzip.compress(output_of(2 * MIB)) if body == "gzip" else b"not gzip"
    provider = ReplicateVideoProvider(settings_for(standin, max_clip_bytes=MIB))
    # Then it is refused unread, classified (counted by the poll loop), never decoded
    with pytest.raises(OutputUnavailable, match="Content-Encoding 'gzip'"):
        provider.download(status)


def test_redirects_are_followed_to_the_limit_without_reading_their_bodies(
    standin: ProviderStandIn,
) -> None:
    # Given an output reached through MAX_REDIRECTS redirects, relative and absolute, each
    # declaring a body it never sends (a client reading it would wait for its timeout)
    status = finished(standin)
    assert status.url is not None
    path = status.url.removeprefix(standin.url)
    standin.redirects = [path, status.url] * (MAX_REDIRECTS // 2) + [path]
    assert len(standin.redirects) == MAX_REDIRECTS
    provider = ReplicateVideoProvider(settings_for(standin, provider_timeout_seconds=20))
    # Then the output comes, every hop asking for the bytes as stored
    assert provider.download(status) == CLIP
    assert downloads(standin) == MAX_REDIRECTS + 1
    hops = [r for r in standin.requests if r.kind == "file"]
    assert {r.headers.get("accept-encoding") for r in hops} == {"identity"}


def test_one_redirect_too_many_is_unavailable(standin: ProviderStandIn) -> None:
    status = finished(standin)
    assert status.url is not None
    signed = f"{status.url}?X-Amz-Signature=s3cr3t-signature"
    standin.redirects = [signed] * (MAX_REDIRECTS + 1)
    with pytest.raises(OutputUnavailable, match=f"redirected more than {MAX_REDIRECTS}") as caught:
        ReplicateVideoProvider(settings_for(standin)).download(status)
    assert "s3cr3t" not in str(caught.value)
    assert downloads(standin) == MAX_REDIRECTS + 1  # the last redirect is not followed


@pytest.mark.parametrize(
    ("location", "kind"),
    [
        ("ftp://files.example/clip.mp4?X-Amz-Signature=s3cr3t-signature", OutputUnavailable),
        ("file:///etc/passwd?token=s3cr3t-token", OutputUnavailable),
        # a Location that does not parse: a protocol violation, as httpx reads it (transient)
        ("http://[::1/clip.mp4?X-Amz-Signature=s3cr3t-signature", TransientProviderError),
    ],
)
def test_a_redirect_elsewhere_than_http_is_refused_and_classified(
    standin: ProviderStandIn, location: str, kind: type[ProviderError]
) -> None:
    # Given a redirect to another scheme, or to a URL that does not parse
    status = finished(standin)
    standin.redirects = [location]
    with pytest.raises(ProviderError) as caught:
        ReplicateVideoProvider(settings_for(standin)).download(status)
    # Then it is not followed, the error is classified, the signed URL's secret kept out
    assert type(caught.value) is kind
    assert "s3cr3t" not in str(caught.value)
    assert downloads(standin) == 1


def test_a_veo_output_at_no_fetchable_location_is_refused_unsigned(
    standin: ProviderStandIn,
) -> None:
    signed = "s3://b/clip.mp4?X-Amz-Signature=s3cr3t-signature"
    done = JobStatus(JobState.SUCCEEDED, url=signed)
    with pytest.raises(PermanentProviderError, match="no location") as caught:
        VeoVideoProvider(settings_for(standin)).download(done)
    assert "s3cr3t" not in str(caught.value)


def test_a_download_past_its_deadline_is_transient(standin: ProviderStandIn) -> None:
    # Given a server sending the output a KiB at a time, each piece well inside the read
    # timeout (about a minute in all), and a whole-download deadline of one second
    standin.output, standin.output_framing = output_of(MIB), "drip"
    status = finished(standin)
    slow = settings_for(standin, provider_timeout_seconds=10, download_timeout_seconds=1)
    # Then the download stops at the deadline, an outage (transient), not a refusal
    with pytest.raises(TransientProviderError) as caught:
        ReplicateVideoProvider(slow).download(status)
    assert type(caught.value) is TransientProviderError and not caught.value.refused
    assert str(caught.value) == (
        "replicate: the output download took longer than MVPIPE_DOWNLOAD_TIMEOUT_SECONDS (1 s)"
    )


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (httpx.DecodingError, OutputUnavailable),
        (httpx.TooManyRedirects, OutputUnavailable),
        (httpx.InvalidURL, OutputUnavailable),
        (httpx.UnsupportedProtocol, OutputUnavailable),
        (httpx.RemoteProtocolError, TransientProviderError),
        (httpx.ReadTimeout, TransientProviderError),
    ],
)
def test_every_httpx_error_of_a_download_is_classified_and_scrubbed(
    error: type[Exception], kind: type[ProviderError]
) -> None:
    # A transport fault is an outage; any other httpx error is the answer's own (it would
    # recur), so it is counted by the poll loop rather than retried for ever
    found = classified("replicate", error("at https://o.example/x?X-Amz-Signature=s3cr3t"))
    assert type(found) is kind
    assert "s3cr3t" not in str(found) and "X-Amz-Signature=***" in str(found)


def test_a_failed_download_keeps_no_trace_of_its_signed_url() -> None:
    # Given an output URL that is a bearer credential while it lasts, whose host refuses
    signed = "http://127.0.0.1:9/out.mp4?X-Amz-Signature=s3cr3t"
    with pytest.raises(TransientProviderError) as caught:
        download("replicate", signed, timeout=5, deadline=10, max_bytes=MIB)
    # Then the error raised does not chain the client's own (which holds the request and its
    # URL), so no log handler or result backend formatting its traceback meets the signature
    error = caught.value
    assert error.__cause__ is None and error.__suppress_context__
    assert "s3cr3t" not in "".join(traceback.format_exception(error))


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """The environment, for settings read afresh: none cached before, none kept after."""
    get_settings.cache_clear()
    try:
        yield monkeypatch
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


@pytest.mark.parametrize("value", ["0", "-1", "lots", str(MIB - 1), str(CLIP_BYTES_RANGE[1] + 1)])
def test_the_clip_byte_cap_lies_between_1_mib_and_2_gib(
    environment: pytest.MonkeyPatch, value: str
) -> None:
    environment.setenv("MVPIPE_MAX_CLIP_BYTES", value)
    with pytest.raises(ConfigurationError, match="MVPIPE_MAX_CLIP_BYTES"):
        get_settings()
    for bound in CLIP_BYTES_RANGE:
        environment.setenv("MVPIPE_MAX_CLIP_BYTES", str(bound))
        get_settings.cache_clear()
        assert get_settings().max_clip_bytes == bound


@pytest.mark.parametrize("value", ["0.5", "3601", "3590"])
def test_the_download_deadline_is_bounded_and_below_the_visibility_timeout(
    environment: pytest.MonkeyPatch, value: str
) -> None:
    # 3590 s is within bounds but, with the provider timeout, outlasts the task's message
    environment.setenv("MVPIPE_DOWNLOAD_TIMEOUT_SECONDS", value)
    with pytest.raises(ConfigurationError, match="MVPIPE_DOWNLOAD_TIMEOUT_SECONDS"):
        get_settings()


@pytest.mark.integration
@pytest.mark.parametrize("fault", FAULTS)
def test_lip_sync_calls_that_meet_a_fault_are_classified(
    standin: ProviderStandIn, stack: LocalStack, fault: str
) -> None:
    request = stored_lip_sync_request()
    faulted = ReplicateLipSyncProvider(meeting(standin, fault))
    standin.faults["replicate.create"] = [fault]
    with pytest.raises(TransientProviderError) as caught:
        faulted.submit(request)
    assert_unknown_outcome(caught.value)
    operation_id = ReplicateLipSyncProvider(settings_for(standin)).submit(request)
    standin.faults["replicate.poll"] = [fault]
    with pytest.raises(ProviderError) as polled:
        faulted.poll(operation_id)
    assert isinstance(polled.value, TransientProviderError) == (fault not in UNREADABLE)
    assert standin.created["replicate"] == 2  # the lost answer's job exists too
