"""The local lip-sync provider on its own: it fetches its inputs over real HTTP, runs jobs in
its own table of the local provider's SQLite file, and pays (ledger) once per accepted job."""

from __future__ import annotations

import http.server
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest

from mvpipe.errors import (
    InvalidInput,
    PermanentProviderError,
    QuotaExceeded,
    TransientProviderError,
)
from mvpipe.media.audio import to_wav
from mvpipe.providers import build_lipsync_provider
from mvpipe.providers.base import JobState, LipSyncRequest
from mvpipe.providers.local_lipsync import LocalLipSyncProvider
from mvpipe.providers.render import render_clip
from mvpipe.settings import Settings
from tests.helpers import wait_for


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """A real HTTP server of `tmp_path/www` (the role presigned S3 URLs play)."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "clip.mp4").write_bytes(render_clip("sing along", 1.0))
    t = np.arange(16000) / 16000
    (root / "slot.wav").write_bytes(to_wav((0.5 * np.sin(2 * np.pi * 220 * t)), 16000))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    # Polled every 50 ms, not the default 0.5 s: `shutdown` waits for the next poll.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def provider(tmp_path: Path, **overrides: object) -> LocalLipSyncProvider:
    values: dict[str, object] = {
        "local_state": tmp_path / "jobs.sqlite3",
        "local_ledger": tmp_path / "ledger.jsonl",
        "local_latency": 0.2,
        **overrides,
    }
    return LocalLipSyncProvider(Settings(**values))  # type: ignore[arg-type]


def request(base: str, sequence: int = 1, video: str = "clip.mp4") -> LipSyncRequest:
    return LipSyncRequest("p", sequence, f"{base}/{video}", f"{base}/slot.wav", 1.0)


def test_a_job_fetches_its_inputs_and_yields_the_clip_with_the_meter(
    tmp_path: Path, served: str
) -> None:
    local = provider(tmp_path)
    operation_id = local.submit(request(served))
    assert local.poll(operation_id).state == JobState.RUNNING
    status = wait_for(lambda: (s := local.poll(operation_id)).finished and s, 10, "the job")
    assert status.state == JobState.SUCCEEDED
    with av.open(io.BytesIO(local.download(status))) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(io.BytesIO(render_clip("sing along", 1.0))) as container:
        originals = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == len(originals)
    assert np.abs(frames[-1].astype(int) - originals[-1]).mean() > 1  # something was drawn
    lines = [json.loads(x) for x in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert [(x["operation_id"], x["stage"]) for x in lines] == [(operation_id, "lipsync")]
    # a finished job cannot be cancelled: its video is paid for
    assert local.cancel(operation_id) is False


def test_cancel_stops_a_running_job_before_its_video(tmp_path: Path, served: str) -> None:
    local = provider(tmp_path, local_latency=30)
    operation_id = local.submit(request(served))
    assert local.cancel(operation_id) is True
    assert local.poll(operation_id).state == JobState.CANCELLED
    assert local.cancel("local-lipsync-unknown") is False


def test_refusals_faults_and_the_concurrency_limit(tmp_path: Path, served: str) -> None:
    # An input URL that answers 404 is refused for good; one that does not answer, for now.
    local = provider(tmp_path, local_max_concurrent=1, local_latency=30)
    with pytest.raises(PermanentProviderError) as missing:
        local.submit(request(served, video="gone.mp4"))
    assert missing.value.refused
    # An empty input is refused for good before any job is made: the reservation goes back.
    (tmp_path / "www" / "empty.mp4").write_bytes(b"")
    with pytest.raises(PermanentProviderError, match="empty or too large") as empty:
        local.submit(request(served, video="empty.mp4"))
    assert empty.value.refused
    with pytest.raises(TransientProviderError) as unreachable:
        local.submit(LipSyncRequest("p", 1, "http://127.0.0.1:9/x", "http://127.0.0.1:9/y", 1))
    assert unreachable.value.refused
    local.submit(request(served, 1))
    with pytest.raises(QuotaExceeded):
        local.submit(request(served, 2))
    # Permanent faults end accepted (paid) jobs failed.
    failing = provider(tmp_path / "f", local_lipsync_faults="permanent=1.0", local_latency=0)
    operation_id = failing.submit(request(served))
    status = failing.poll(operation_id)
    assert status.state == JobState.FAILED and "no face" in (status.error or "")
    assert len((tmp_path / "f" / "ledger.jsonl").read_text().splitlines()) == 1


def test_lip_sync_providers_are_picked_by_name(tmp_path: Path) -> None:
    settings = Settings(local_state=tmp_path / "jobs.sqlite3")  # type: ignore[call-arg]
    assert isinstance(build_lipsync_provider("local", settings), LocalLipSyncProvider)
    with pytest.raises(InvalidInput):
        build_lipsync_provider("sync-o-matic", settings)
