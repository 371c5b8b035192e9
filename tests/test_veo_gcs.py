"""Veo with an output GCS URI: the real google-genai client asks Veo to write there, and the real
google-cloud-storage client fetches the video from the GCS stand-in (STORAGE_EMULATOR_HOST)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from mvpipe import api
from mvpipe.deps import get_context, reset_context
from mvpipe.devstack.localstack import LocalStack
from mvpipe.errors import (
    ConfigurationError,
    OutputUnavailable,
    PermanentProviderError,
    TransientProviderError,
)
from mvpipe.models import ProjectStatus
from mvpipe.pipeline.generate import SceneJob
from mvpipe.pipeline.steps import Next
from mvpipe.providers.base import JobState, JobStatus, VideoRequest
from mvpipe.providers.veo import VeoVideoProvider
from mvpipe.settings import MIB, get_settings
from tests.standins import CLIP, ProviderStandIn, output_of, running_standin, settings_for

OUTPUT = "gs://mv-output/veo/clips"


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[ProviderStandIn]:
    with running_standin(monkeypatch) as server:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
        server.veo_pending_polls = 0
        yield server


def veo(standin: ProviderStandIn, timeout: float = 10) -> VeoVideoProvider:
    settings = settings_for(standin, veo_output_gcs_uri=OUTPUT, provider_timeout_seconds=timeout)
    return VeoVideoProvider(settings)


def request() -> VideoRequest:
    return VideoRequest(str(uuid.uuid4()), 1, "a neon city at night", None, 8, with_audio=False)


def test_veo_writes_its_video_to_gcs_and_it_is_fetched_from_there(
    standin: ProviderStandIn,
) -> None:
    provider = veo(standin)
    operation_id = provider.submit(request())
    # Veo was asked to write under the configured prefix (REST `storageUri`)
    assert standin.veo_bodies[-1]["parameters"]["storageUri"] == OUTPUT
    # and its finished operation names the object instead of carrying the bytes
    status = provider.poll(operation_id)
    number = operation_id.rsplit("/", 1)[1]
    assert status.state == JobState.SUCCEEDED and status.video is None
    assert status.url == f"{OUTPUT}/{number}/sample_0.mp4"
    # which google-cloud-storage fetches on the JSON API's media path
    assert provider.download(status) == CLIP
    (fetched,) = [r for r in standin.requests if r.kind == "gcs"]
    assert (
        fetched.path == f"/download/storage/v1/b/mv-output/o/veo%2Fclips%2F{number}%2Fsample_0.mp4"
    )


def test_a_missing_gcs_output_is_unavailable_and_faults_are_transient(
    standin: ProviderStandIn,
) -> None:
    # a missing object fails no job by itself: the poll is asked again (then counted)
    provider = veo(standin)
    gone = JobStatus(JobState.SUCCEEDED, url=f"{OUTPUT}/none/sample_0.mp4")
    with pytest.raises(OutputUnavailable, match="404"):
        provider.download(gone)
    status = provider.poll(provider.submit(request()))
    for fault, timeout in (("slow", 0.5), ("reset", 10)):
        standin.faults["gcs"] = [fault]
        with pytest.raises(TransientProviderError) as caught:
            veo(standin, timeout).download(status)
        assert not caught.value.refused
    assert provider.download(status) == CLIP
    with pytest.raises(PermanentProviderError, match="not a gs://bucket/object URI"):
        provider.download(JobStatus(JobState.SUCCEEDED, url="gs://mv-output"))


def test_a_gcs_output_over_the_byte_cap_is_refused(standin: ProviderStandIn) -> None:
    standin.output = output_of(MIB + 1)
    status = veo(standin).poll(veo(standin).submit(request()))
    exact = settings_for(standin, veo_output_gcs_uri=OUTPUT, max_clip_bytes=MIB + 1)
    assert VeoVideoProvider(exact).download(status) == standin.output
    under = settings_for(standin, veo_output_gcs_uri=OUTPUT, max_clip_bytes=MIB)
    with pytest.raises(PermanentProviderError, match=r"paid.*MVPIPE_MAX_CLIP_BYTES") as caught:
        VeoVideoProvider(under).download(status)
    assert not isinstance(caught.value, OutputUnavailable)
    # its size read first: the larger object is never downloaded, the other read whole (no
    # range, so its checksum is checked) and only in the generation whose size was read
    assert [r.kind for r in standin.requests if r.kind.startswith("gcs")] == [
        "gcs.metadata",
        "gcs",
        "gcs.metadata",
    ]
    (download,) = [p for p in standin.paths if p.startswith("GET /download/")]
    assert f"ifGenerationMatch={standin.GCS_GENERATION}" in download.split("?")[1].split("&")
    assert [r.headers.get("range") for r in standin.requests if r.kind == "gcs"] == [None]


def test_a_gcs_output_read_past_its_deadline_is_transient(standin: ProviderStandIn) -> None:
    # Given a GCS object sent a KiB at a time (about a minute in all, each piece well inside
    # the read timeout) and a whole-download deadline of one second
    standin.output, standin.output_framing = output_of(MIB), "drip"
    status = veo(standin).poll(veo(standin).submit(request()))
    slow = settings_for(standin, veo_output_gcs_uri=OUTPUT, download_timeout_seconds=1)
    # Then the read stops at the deadline, an outage (transient), not a refusal
    with pytest.raises(TransientProviderError, match="MVPIPE_DOWNLOAD_TIMEOUT_SECONDS") as caught:
        VeoVideoProvider(slow).download(status)
    assert not isinstance(caught.value, OutputUnavailable)
    # and an answer in time is read whole
    standin.output_framing = "length"
    assert veo(standin).download(status) == standin.output


@pytest.mark.parametrize("value", ["s3://bucket/prefix", "gs://Upper/x", "gs://b", "gs://x y/z"])
def test_the_output_gcs_uri_setting_must_be_a_gs_uri(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("MVPIPE_VEO_OUTPUT_GCS_URI", value)
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigurationError, match="MVPIPE_VEO_OUTPUT_GCS_URI"):
            get_settings()
        monkeypatch.setenv("MVPIPE_VEO_OUTPUT_GCS_URI", OUTPUT)
        get_settings.cache_clear()
        assert get_settings().veo_output_gcs_uri == OUTPUT
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


@pytest.mark.integration
def test_a_veo_scene_with_gcs_output_ends_with_its_clip_in_s3(
    standin: ProviderStandIn, stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the pipeline configured for Veo writing to GCS
    for key, value in {
        "MVPIPE_GENAI_BASE_URL": standin.url,
        "MVPIPE_VEO_OUTPUT_GCS_URI": OUTPUT,
        "MVPIPE_POLL_SECONDS": "0.1",
    }.items():
        monkeypatch.setenv(key, value)
    reset_context()
    try:
        ctx = get_context()
        project_id = api.create_project("GCS", "x", scenes=[{"prompt": "one"}], provider="veo")
        run_id = str(uuid.uuid4())
        assert ctx.projects.win_run(project_id, run_id, ProjectStatus.PROCESSING) == run_id
        # When the scene's generate stage runs to its end
        step = SceneJob(ctx, project_id, 1, run_id, "veo").step()
        for _ in range(20):
            if step.next != Next.POLL:
                break
            step = SceneJob(ctx, project_id, 1, run_id, "veo").step(**step.carry)
        # Then the video fetched from GCS is the scene's original clip in S3
        scene = ctx.scenes.get(project_id, 1)
        assert scene is not None and scene.original_clip_key
        assert ctx.clips.read(scene.original_clip_key) == CLIP
        assert [r.kind for r in standin.requests].count("gcs") == 1
        assert standin.created["veo"] == 1
    finally:
        reset_context()
