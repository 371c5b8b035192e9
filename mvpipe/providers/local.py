"""The embedded `local` provider: plans and renders offline, behaves like a remote video API.

Jobs live in a SQLite file (`MVPIPE_LOCAL_STATE`), not in worker memory and not in the broker, so
any worker resumes them and neither a worker crash nor a Redis restart loses one. Each accepted
submission is appended to `MVPIPE_LOCAL_LEDGER` (the count of paid generations).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mvpipe.durations import asked_seconds
from mvpipe.errors import (
    InvalidInput,
    PermanentProviderError,
    QuotaExceeded,
    TransientProviderError,
)
from mvpipe.models import MAX_PROMPT, SceneSpec
from mvpipe.providers.base import Brief, JobState, JobStatus, VideoRequest
from mvpipe.providers.faults import FaultPlan, roll
from mvpipe.providers.local_renders import Renders
from mvpipe.providers.render import render_clip
from mvpipe.settings import Settings

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    operation_id TEXT PRIMARY KEY, project_id TEXT NOT NULL, sequence INTEGER NOT NULL,
    prompt TEXT NOT NULL, duration REAL NOT NULL, submitted_at REAL NOT NULL,
    finishes_at REAL NOT NULL, outcome TEXT NOT NULL, error TEXT, cancelled INTEGER DEFAULT 0);
CREATE INDEX IF NOT EXISTS jobs_finishing ON jobs (finishes_at);
CREATE TABLE IF NOT EXISTS calls (
    project_id TEXT, sequence INTEGER, kind TEXT, n INTEGER,
    PRIMARY KEY (project_id, sequence, kind));
CREATE TABLE IF NOT EXISTS stats (name TEXT PRIMARY KEY, value REAL);
CREATE TABLE IF NOT EXISTS polled (operation_id TEXT PRIMARY KEY);
"""


#: The tables of jobs in the provider's store: video generations and lip-syncs.
JOB_TABLES = ("jobs", "lipsync_jobs")

#: Connections a forked process inherited: kept referenced, never used nor closed.
_INHERITED: list[sqlite3.Connection] = []


class LocalJobs:
    """The provider's own job store, shared by every process on the machine."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
        finally:
            db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One serialized read-modify-write across every process using the file."""
        db = self._connection()
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            try:
                if db.in_transaction:
                    db.execute("ROLLBACK")
            except sqlite3.Error:
                self._local.db = None  # unusable: the next transaction opens another
                db.close()
            raise

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, kept open between transactions: opening one per call read
        the schema each time and, closing the last one, checkpointed the WAL with an fsync
        (~0.8 ms of CPU a call, three calls a scene). Keyed by process: a forked child must
        not use its parent's."""
        cached: tuple[int, sqlite3.Connection] | None = getattr(self._local, "db", None)
        if cached is not None and cached[0] == os.getpid():
            return cached[1]
        if cached is not None:  # the parent's: SQLite must not even close it in the child
            _INHERITED.append(cached[1])
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        # WAL + NORMAL survives any process crash (only power loss could drop a commit),
        # without an fsync per call: this is a simulator, not the system of record.
        db.execute("PRAGMA synchronous=NORMAL")
        self._local.db = (os.getpid(), db)
        return db

    @staticmethod
    def next_call(db: sqlite3.Connection, project_id: str, sequence: int, kind: str) -> int:
        db.execute(
            "INSERT INTO calls VALUES (?, ?, ?, 1) ON CONFLICT DO UPDATE SET n = n + 1",
            (project_id, sequence, kind),
        )
        row = db.execute(
            "SELECT n FROM calls WHERE project_id=? AND sequence=? AND kind=?",
            (project_id, sequence, kind),
        ).fetchone()
        return int(row[0])

    def count_call(self, project_id: str, sequence: int, kind: str) -> int:
        """Count a call in a transaction of its own: a fault raised after it must not roll
        its count back."""
        with self.transaction() as db:
            return LocalJobs.next_call(db, project_id, sequence, kind)

    @staticmethod
    def check_room(db: sqlite3.Connection, table: str, limit: int, now: float, who: str) -> int:
        """The provider's own concurrency limit: a 429 once `limit` jobs of `table` run; else
        how many run."""
        if table not in JOB_TABLES:
            raise ValueError(f"not a job table: {table}")
        (running,) = db.execute(
            f"SELECT COUNT(*) FROM {table} WHERE cancelled = 0 AND finishes_at > ?", (now,)
        ).fetchone()
        if running >= limit:
            raise QuotaExceeded(f"{who}: 429 too many jobs in flight ({running})", refused=True)
        return int(running)

    def peak_in_flight(self) -> int:
        with self.transaction() as db:
            row = db.execute("SELECT value FROM stats WHERE name='peak'").fetchone()
        return int(row[0]) if row else 0

    def cancel(self, table: str, operation_id: str) -> bool:
        """Stop a job of `table` (`jobs`, `lipsync_jobs`): True only when this call stopped it
        before it produced its video (or it was stopped already): a finished job is paid for
        and its video must not be dropped."""
        if table not in JOB_TABLES:
            raise ValueError(f"not a job table: {table}")
        with self.transaction() as db:
            db.execute(
                f"UPDATE {table} SET cancelled = 1 WHERE operation_id = ? AND finishes_at > ?",
                (operation_id, time.time()),
            )
            row = db.execute(
                f"SELECT cancelled FROM {table} WHERE operation_id = ?", (operation_id,)
            ).fetchone()
        return row is not None and bool(row[0])

    def wanted(self, table: str, operation_id: str) -> bool:
        """Whether a job of `table` will still need its output: known, not cancelled, not
        failed."""
        if table not in JOB_TABLES:
            raise ValueError(f"not a job table: {table}")
        with self.transaction() as db:
            row = db.execute(
                f"SELECT cancelled, outcome FROM {table} WHERE operation_id = ?", (operation_id,)
            ).fetchone()
        return row is not None and not row[0] and row[1] != "failed"

    def cancelled(self, table: str, operation_ids: list[str]) -> set[str]:
        """Which of these jobs of `table` were stopped by a cancel before they finished."""
        if table not in JOB_TABLES:
            raise ValueError(f"not a job table: {table}")
        with self.transaction() as db:
            return {
                op
                for op in operation_ids
                if db.execute(
                    f"SELECT 1 FROM {table} WHERE operation_id = ? AND cancelled = 1", (op,)
                ).fetchone()
            }

    def polled(self, operation_ids: list[str]) -> set[str]:
        """Which of these jobs were ever polled: an id someone polls had reached the store."""
        with self.transaction() as db:
            return {
                op
                for op in operation_ids
                if db.execute("SELECT 1 FROM polled WHERE operation_id = ?", (op,)).fetchone()
            }

    def poll(self, table: str, inputs: str, operation_id: str, kind: str, who: str) -> PolledJob:
        """Read a job of `table` with its `inputs` columns, count the call as `kind` (what the
        fault plan keys on) and mark the job polled; an unknown id is a permanent error that
        names `who`."""
        if table not in JOB_TABLES:
            raise ValueError(f"not a job table: {table}")
        with self.transaction() as db:
            row = db.execute(
                f"SELECT project_id, sequence, finishes_at, outcome, error, cancelled, {inputs}"
                f" FROM {table} WHERE operation_id = ?",
                (operation_id,),
            ).fetchone()
            if row is None:
                raise PermanentProviderError(f"{who}: unknown operation {operation_id}")
            project_id, sequence, finishes_at, outcome, error, cancelled, *values = row
            call = LocalJobs.next_call(db, project_id, sequence, kind)
            db.execute("INSERT OR IGNORE INTO polled VALUES (?)", (operation_id,))
        return PolledJob(
            project_id, sequence, call, bool(cancelled), finishes_at, outcome, error, tuple(values)
        )


@dataclass(frozen=True)
class PolledJob:
    """One poll's read of a local job: its scene, the poll's call number, its outcome so far
    and the inputs it is made from."""

    project_id: str
    sequence: int
    call: int
    cancelled: bool
    finishes_at: float
    outcome: str
    error: str | None
    inputs: tuple[Any, ...]

    def status(self, video: Callable[[], bytes]) -> JobStatus:
        """The job's state as the poll answers it; `video` makes the output once it is done."""
        if self.cancelled:
            return JobStatus(JobState.CANCELLED, error="cancelled")
        now = time.time()
        if now < self.finishes_at:
            return JobStatus(JobState.RUNNING, eta_seconds=self.finishes_at - now)
        if self.outcome == "failed":
            return JobStatus(JobState.FAILED, error=self.error)
        return JobStatus(JobState.SUCCEEDED, video=video())


def append_ledger(
    ledger: Path | None, project_id: str, sequence: int, operation_id: str, stage: str
) -> None:
    """One line per accepted (paid) job of `stage` (`generate` or `lipsync`), safe across
    processes: the count of paid jobs."""
    if ledger is None:
        return
    line = json.dumps(
        {
            "project_id": project_id,
            "sequence": sequence,
            "operation_id": operation_id,
            "stage": stage,
            "at": time.time(),
        }
    )
    ledger.parent.mkdir(parents=True, exist_ok=True)
    with open(ledger, "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(line + "\n")
        handle.flush()
        fcntl.flock(handle, fcntl.LOCK_UN)


def job_latency(latency: float, jitter: float, draw: float) -> float:
    """One job's run time: `latency` spread by up to `jitter` of itself either way, at `draw`
    (in [-1, 1]: -1 the shortest, 1 the longest)."""
    if not 0 <= jitter <= 1 or not -1 <= draw <= 1:
        raise InvalidInput(f"no job latency for jitter {jitter} at draw {draw}")
    return latency * (1 + jitter * draw)


def latency_draw(seed: int, prompt: str, sequence: int, submission: int) -> float:
    """Where in [-1, 1] a job's latency falls: a pure function of the seed and the job (its
    scene's prompt and sequence, and which accepted submission of that scene it is), never of
    random ids, so a run with the same seed and the same prompts gives every job the same
    latency again, while different jobs get different ones."""
    return 2 * roll(seed, "latency", prompt, sequence, submission) - 1


class LocalVideoProvider:
    name = "local"
    can_cancel = True

    def __init__(self, settings: Settings) -> None:
        self.latency = settings.local_latency
        self.jitter = settings.local_latency_jitter
        self.seed = settings.local_latency_seed
        self.max_concurrent = settings.local_max_concurrent
        self.clip_seconds = settings.local_clip_seconds
        self.allowed = settings.durations_for(self.name)
        self.faults = FaultPlan.parse(settings.local_faults)
        self.ledger = settings.local_ledger
        self.jobs = LocalJobs(settings.local_state_path)
        path = settings.local_state_path
        self.renders = Renders(path.with_name(f"{path.name}-renders"))

    def submit(self, request: VideoRequest) -> str:
        # the same rule as a remote provider's: asked for exactly the length reserved on
        asked = asked_seconds(self.name, request.duration_seconds, self.allowed)
        call = self.jobs.count_call(request.project_id, request.sequence, "submit")
        if self.faults.transient_fault(request.project_id, request.sequence, "submit", call):
            # a 429, as a remote provider's refusal that surely made no job (a 5xx would leave
            # the outcome unknown and keep the reservation)
            raise QuotaExceeded("local provider: simulated 429 on submit", refused=True)
        # as long as asked, as a real provider's; a cap (tests, benchmarks) keeps it short
        seconds = min(float(asked), self.clip_seconds or float(asked))
        now = time.time()
        with self.jobs.transaction() as db:
            running = LocalJobs.check_room(db, "jobs", self.max_concurrent, now, "local provider")
            submission = LocalJobs.next_call(db, request.project_id, request.sequence, "accepted")
            failed = self.faults.permanent_fault(request.project_id, request.sequence, submission)
            operation_id = f"local-{uuid.uuid4()}"
            draw = latency_draw(self.seed, request.prompt, request.sequence, submission)
            latency = job_latency(self.latency, self.jitter, draw)
            db.execute(
                "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                (
                    operation_id,
                    request.project_id,
                    request.sequence,
                    request.prompt,
                    seconds,
                    now,
                    now + latency,
                    "failed" if failed else "succeeded",
                    "local provider: simulated permanent failure (content policy)"
                    if failed
                    else None,
                ),
            )
            db.execute(
                "INSERT INTO stats VALUES ('peak', ?)"
                " ON CONFLICT DO UPDATE SET value = MAX(value, ?)",
                (running + 1, running + 1),
            )
            append_ledger(
                self.ledger, request.project_id, request.sequence, operation_id, "generate"
            )
        if not failed:
            self.renders.schedule(
                operation_id,
                latency,
                lambda: render_clip(request.prompt, seconds),
                lambda: self.jobs.wanted("jobs", operation_id),
            )
        return operation_id

    def poll(self, operation_id: str) -> JobStatus:
        job = self.jobs.poll("jobs", "prompt, duration", operation_id, "poll", "local provider")
        project_id, sequence, call = job.project_id, job.sequence, job.call
        if self.faults.transient_fault(project_id, sequence, "poll", call):
            raise TransientProviderError("local provider: simulated 500 on poll")
        if self.faults.garbage_fault(project_id, sequence, call):
            json.loads("<html>simulated 200 whose body is not JSON</html>")  # raises, unclassified
        prompt, duration = job.inputs
        return job.status(
            lambda: self.renders.take(operation_id, lambda: render_clip(prompt, duration))
        )

    def download(self, status: JobStatus) -> bytes:
        if status.video is None:
            raise PermanentProviderError("local provider: finished job has no video")
        return status.video

    def cancel(self, operation_id: str) -> bool:
        stopped = self.jobs.cancel("jobs", operation_id)
        if stopped:  # a clip rendered ahead would never be taken
            self.renders.discard(operation_id)
        return stopped

    def peak_in_flight(self) -> int:
        return self.jobs.peak_in_flight()


class LocalPlanner:
    """Deterministic scenes from the concept: the same brief always gives the same plan.

    With a song, one scene per slot showing the lyric lines that fall in it; when the project
    asks for lip-sync, every third scene (the 2nd, 5th, ...) is a performance marked for it.
    """

    name = "local"
    #: Every this many scenes, one performance scene is marked for lip-sync.
    LIP_SYNC_EVERY = 3

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings

    def plan(self, brief: Brief) -> list[SceneSpec]:
        if brief.slots:
            return self._plan_slots(brief)
        fragments = [f.strip() for f in re.split(r"[\n.!?;]+", brief.concept) if f.strip()]
        fragments = fragments or [brief.concept.strip()]
        specs = []
        for index in range(brief.scene_count):
            fragment = fragments[index % len(fragments)]
            prompt = f"{brief.title} - scene {index + 1} of {brief.scene_count}: {fragment}"
            specs.append(
                SceneSpec(
                    prompt=prompt[:MAX_PROMPT],
                    negative_prompt="blurry, low quality, watermark",
                    duration_seconds=8,
                )
            )
        return specs

    def _plan_slots(self, brief: Brief) -> list[SceneSpec]:
        specs = []
        count = len(brief.slots)
        for index, slot in enumerate(brief.slots):
            words = " / ".join(slot.lyrics) or brief.concept.strip()
            performance = brief.lip_sync and index % self.LIP_SYNC_EVERY == 1
            shot = "the singer performs to camera" if performance else "scene"
            prompt = (
                f"{brief.title} - {shot} {index + 1} of {count}, section {slot.section}, "
                f"{slot.start_seconds:.2f}-{slot.end_seconds:.2f} s: {words}"
            )
            specs.append(
                SceneSpec(
                    prompt=prompt[:MAX_PROMPT],
                    negative_prompt="blurry, low quality, watermark",
                    lip_sync=performance,
                )
            )
        return specs
