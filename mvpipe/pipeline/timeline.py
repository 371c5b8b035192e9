"""A song project's timeline and slots.

The song is analysed once (the heaviest step in memory: it runs on queue `mvpipe.media`); the
timeline JSON is stored beside the song under the song's content hash, and METADATA points at it
(`timelineS3Key`) by one conditional write. Analysis is deterministic, so a repeated or duplicate
analysis writes the same object and finds the same key already recorded: nothing to undo.
Slots are cut from the stored timeline by the pure code in `mvpipe.media.slots`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass

from mvpipe.deps import Context
from mvpipe.errors import Conflict, InvalidInput
from mvpipe.media.slots import Slot, plan_slots
from mvpipe.media.timeline import Timeline
from mvpipe.models import MAX_SCENES
from mvpipe.providers.classify import describe
from mvpipe.settings import Settings
from mvpipe.store.clips import ObjectMissing
from mvpipe.store.records import ProjectRecord
from mvpipe.store.songs import song_key

log = logging.getLogger("mvpipe.timeline")

#: Analysis runs on mono audio at this rate (librosa's default: beats need no more).
ANALYSIS_SAMPLE_RATE = 22050


def load_timeline(ctx: Context, project: ProjectRecord) -> Timeline | None:
    """The project's stored timeline, or None when its song has not been analysed yet.
    `InvalidInput` when the recorded timeline's object is gone: planning fails with the reason
    (as `NotFound` it would read as a missing project, and the run would wait for a takeover)."""
    if project.timeline_key is None:
        return None
    try:
        return Timeline.from_json(ctx.songs.read(project.timeline_key))
    except ObjectMissing:
        raise InvalidInput(
            f"the song's timeline is gone from the store ({project.timeline_key})"
        ) from None


def ensure_timeline(ctx: Context, project: ProjectRecord) -> Timeline:
    """The stored timeline, or analyse the song, store the timeline beside it and record its key
    (idempotent: a duplicate analysis writes the same object and finds its key recorded)."""
    from mvpipe.media.analysis import analyse
    from mvpipe.media.audio import decode_mono

    stored = load_timeline(ctx, project)
    if stored is not None:
        return stored
    if project.song_key is None:
        raise InvalidInput(f"project {project.project_id} has no song to analyse")
    try:
        data = ctx.songs.read(project.song_key)
    except ObjectMissing:  # gone for good: planning fails with the reason, never loops
        raise InvalidInput(f"the song is gone from the store ({project.song_key})") from None
    sha256 = hashlib.sha256(data).hexdigest()
    ext = project.song_key.rsplit(".", 1)[-1]
    if song_key(project.project_id, sha256, ext) != project.song_key:
        raise InvalidInput("the stored song does not match the hash in its key (damaged object)")
    started = time.perf_counter()
    timeline = analyse(decode_mono(data, ANALYSIS_SAMPLE_RATE), ANALYSIS_SAMPLE_RATE)
    log.info(
        "analysed song project=%s seconds=%.1f tempo=%.1f beats=%d sections=%d in %.2f s",
        project.project_id,
        timeline.duration,
        timeline.tempo,
        len(timeline.beats),
        len(timeline.sections),
        time.perf_counter() - started,
    )
    key = ctx.songs.put_timeline(project.project_id, sha256, timeline.to_json().encode())
    if not ctx.projects.record_timeline(project.project_id, project.song_key, key):
        raise Conflict(f"project {project.project_id} records another timeline than {key}")
    return timeline


def awaits_analysis(sent_ago: float | None, wait_seconds: float) -> bool:
    """Pure: whether an analysis sent `sent_ago` seconds ago (None: none on its way) is still
    waited for: only within `wait_seconds` of its send, so that a message lost without its end
    marked holds a run's planning no longer than that."""
    return sent_ago is not None and sent_ago < wait_seconds


def analysis_on_its_way(ctx: Context, project_id: str) -> bool:
    """Whether the song analysis the project's creation sent is queued or running, and still
    waited for (`MVPIPE_ANALYSIS_WAIT_SECONDS`): its mark in Redis, on the quick client. Not
    when it was never sent, ended (a timeline recorded or not), lost its process, or Redis
    cannot say: logged, never raised (the caller goes on as if none were sent)."""
    return analysis_waited_for(ctx, project_id) is not None


def analysis_waited_for(ctx: Context, project_id: str) -> float | None:
    """How long ago the analysis the project's creation sent was sent, while it is on its way
    and still waited for (`analysis_on_its_way`); None when it is not."""
    try:
        sent_ago = ctx.quick_board.analysis_age(project_id)
    except Exception as exc:
        log.warning(
            "project %s: cannot tell whether its song is being analysed: %s",
            project_id,
            describe(exc),
        )
        return None
    return sent_ago if awaits_analysis(sent_ago, ctx.settings.analysis_wait_seconds) else None


#: How often a run waiting for its song's analysis looks whether it has ended, at first: a 3-minute
#: song's analysis takes about a second on a warm worker, and each look later than its end
#: delays the planning. A look costs a project read, a few Redis commands (the run's liveness,
#: the mark, the next look's message and its state) and sometimes a log line.
ANALYSIS_CHECK_SECONDS = 0.25
#: How long an analysis usually takes from its create's send to its end (a warm worker, little
#: queued before it): past that it is late (queued behind other media work, or its message
#: lost with its mark still pending), and the looks slow down.
ANALYSIS_USUAL_SECONDS = 15.0
#: Seconds added to the pause between looks per second the analysis is late...
LATE_SLOWDOWN = 0.1
#: ... up to this pause: a lost message (waited for up to `MVPIPE_ANALYSIS_WAIT_SECONDS`, 360 s
#: by default) costs ~150 looks instead of ~1,440 at 0.25 s.
ANALYSIS_CHECK_MAX_SECONDS = 5.0
#: A waiting run logs its wait when it starts, then at most once per this many seconds.
WAIT_LOG_SECONDS = 15


@dataclass(frozen=True)
class Look:
    """What one look at a song's analysis still on its way decides (`look_again`)."""

    #: seconds until the next look
    pause: float
    #: this look logs the wait
    logs: bool
    #: the analysis's age (whole seconds since its send) from which a later look logs again
    log_after: int


def look_again(sent_ago: float, log_after: int, *, run_stale_seconds: float) -> Look:
    """Pure: a waiting run's next look at an analysis sent `sent_ago` seconds ago and still on
    its way. It looks every `ANALYSIS_CHECK_SECONDS` while the analysis is not late
    (`ANALYSIS_USUAL_SECONDS`), then `LATE_SLOWDOWN` seconds more per second late, up to
    `ANALYSIS_CHECK_MAX_SECONDS`, and never slower than `run_stale_seconds / 4`: each look
    marks the run alive, and a run whose mark lapsed between two looks would be taken over
    while it waits. It logs once its age reaches `log_after` (0 at the wait's first look: the
    wait is logged when it starts), then not for `WAIT_LOG_SECONDS`. `InvalidInput` for an age
    that is negative or not finite, a negative `log_after`, or a staleness not above 0."""
    if not math.isfinite(run_stale_seconds) or run_stale_seconds <= 0:
        raise InvalidInput(
            f"a run's staleness must be a number of seconds above 0: {run_stale_seconds}"
        )
    if not math.isfinite(sent_ago) or sent_ago < 0:
        raise InvalidInput(
            f"an analysis's age must be a finite number of seconds from 0: {sent_ago}"
        )
    if isinstance(log_after, bool) or not isinstance(log_after, int) or log_after < 0:
        raise InvalidInput(f"log_after must be a whole number of seconds from 0: {log_after!r}")
    late = max(0.0, sent_ago - ANALYSIS_USUAL_SECONDS)
    longest = min(ANALYSIS_CHECK_MAX_SECONDS, run_stale_seconds / 4)
    pause = min(longest, ANALYSIS_CHECK_SECONDS + late * LATE_SLOWDOWN)
    logs = sent_ago >= log_after
    return Look(pause, logs, int(sent_ago) + WAIT_LOG_SECONDS if logs else log_after)


def song_slots(settings: Settings, project: ProjectRecord, timeline: Timeline) -> list[Slot]:
    """The project's slots: on the beats, each as long as the provider can fill, on the frame
    grid of the output, covering the song as measured when it was uploaded."""
    return plan_slots(
        timeline,
        song_seconds=project.song_seconds or timeline.duration,
        fps=settings.output_fps,
        min_seconds=settings.slot_min_seconds,
        max_seconds=settings.slot_max_seconds_for(project.provider),
        max_slots=MAX_SCENES,
    )
