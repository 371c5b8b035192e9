"""The embedded `local` lip-sync provider: behaves like a remote lip-sync API.

Like the local video provider it gives operation ids, finishes a job `MVPIPE_LOCAL_LATENCY`
seconds after its submit (`MVPIPE_LOCAL_LIPSYNC_LATENCY` when set), refuses more than
`MVPIPE_LOCAL_MAX_CONCURRENT` jobs at once (its own count), injects
`MVPIPE_LOCAL_LIPSYNC_FAULTS`, keeps its jobs in the local provider's SQLite file (its own
table), and appends a ledger line with `"stage": "lipsync"` per accepted job. It fetches both
input URLs over HTTP when it accepts a job, as a remote service would, and its result is the
clip with a mouth and a level meter driven by the audio (`mvpipe.media.meter`).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid

from mvpipe.errors import PermanentProviderError, QuotaExceeded, TransientProviderError
from mvpipe.media.meter import draw_on_clip
from mvpipe.providers.base import JobStatus, LipSyncRequest
from mvpipe.providers.faults import FaultPlan
from mvpipe.providers.local import LocalJobs, append_ledger
from mvpipe.settings import Settings

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lipsync_jobs (
    operation_id TEXT PRIMARY KEY, project_id TEXT NOT NULL, sequence INTEGER NOT NULL,
    video BLOB NOT NULL, audio BLOB NOT NULL, submitted_at REAL NOT NULL,
    finishes_at REAL NOT NULL, outcome TEXT NOT NULL, error TEXT, cancelled INTEGER DEFAULT 0);
"""
#: What the provider will fetch per input (a slot's clip and audio are far smaller).
MAX_INPUT_BYTES = 64 * 1024 * 1024


class LocalLipSyncProvider:
    name = "local"
    can_cancel = True

    def __init__(self, settings: Settings) -> None:
        latency = settings.local_lipsync_latency
        self.latency = settings.local_latency if latency is None else latency
        self.max_concurrent = settings.local_max_concurrent
        self.timeout = settings.provider_timeout_seconds
        self.faults = FaultPlan.parse(settings.local_lipsync_faults, "MVPIPE_LOCAL_LIPSYNC_FAULTS")
        self.ledger = settings.local_ledger
        self.jobs = LocalJobs(settings.local_state_path)
        with self.jobs.transaction() as db:
            db.execute(_SCHEMA)

    def submit(self, request: LipSyncRequest) -> str:
        project_id, sequence = request.project_id, request.sequence
        call = self.jobs.count_call(project_id, sequence, "lipsync-submit")
        if self.faults.transient_fault(project_id, sequence, "lipsync-submit", call):
            # a 429: a refusal that surely made no job, as a remote provider's (a 5xx would
            # leave the outcome unknown and keep the reservation)
            raise QuotaExceeded("local lip-sync: simulated 429 on submit", refused=True)
        video = self._fetch(request.video_url, "video")
        audio = self._fetch(request.audio_url, "audio")
        now = time.time()
        with self.jobs.transaction() as db:
            LocalJobs.check_room(db, "lipsync_jobs", self.max_concurrent, now, "local lip-sync")
            accepted = LocalJobs.next_call(db, project_id, sequence, "lipsync-accepted")
            failed = self.faults.permanent_fault(project_id, sequence, accepted)
            operation_id = f"local-lipsync-{uuid.uuid4()}"
            db.execute(
                "INSERT INTO lipsync_jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                (
                    operation_id,
                    project_id,
                    sequence,
                    video,
                    audio,
                    now,
                    now + self.latency,
                    "failed" if failed else "succeeded",
                    "local lip-sync: simulated permanent failure (no face found)"
                    if failed
                    else None,
                ),
            )
            append_ledger(self.ledger, project_id, sequence, operation_id, "lipsync")
        return operation_id

    def poll(self, operation_id: str) -> JobStatus:
        job = self.jobs.poll(
            "lipsync_jobs", "video, audio", operation_id, "lipsync-poll", "local lip-sync"
        )
        project_id, sequence, call = job.project_id, job.sequence, job.call
        if self.faults.transient_fault(project_id, sequence, "lipsync-poll", call):
            raise TransientProviderError("local lip-sync: simulated 500 on poll")
        video, audio = job.inputs
        return job.status(lambda: draw_on_clip(bytes(video), bytes(audio)))

    def download(self, status: JobStatus) -> bytes:
        if status.video is None:
            raise PermanentProviderError("local lip-sync: finished job has no video")
        return status.video

    def cancel(self, operation_id: str) -> bool:
        return self.jobs.cancel("lipsync_jobs", operation_id)

    def _fetch(self, url: str, what: str) -> bytes:
        """An input, fetched as a remote service would: a URL that does not answer is a
        transient refusal, one that answers with an error is a permanent one."""
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                data = bytes(response.read(MAX_INPUT_BYTES + 1))
        except urllib.error.HTTPError as exc:
            raise PermanentProviderError(
                f"local lip-sync: the {what} URL answered {exc.code}", refused=True
            ) from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise TransientProviderError(
                f"local lip-sync: could not fetch the {what}: {exc}", refused=True
            ) from None
        if len(data) > MAX_INPUT_BYTES or not data:
            # refused before any job was made: the reservation goes back
            raise PermanentProviderError(
                f"local lip-sync: the {what} is empty or too large", refused=True
            )
        return data
