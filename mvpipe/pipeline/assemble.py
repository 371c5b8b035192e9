"""The final cut: every scene's chosen clip in order, with the song, under its inputs hash.

A run whose scenes are all completed ends here (`mvpipe.assemble_project`, queue `mvpipe.media`).
The final video's key is a hash of its inputs, so an assembly that finds the object already
stored (a duplicate execution, a takeover after a crash, a rerun) reuses it and only records it.
The one write that records the key also sets `completed` and releases the run, conditioned on the
run still being active (invariant 8).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mvpipe import hooks
from mvpipe.deps import Context
from mvpipe.errors import BrokerUnavailable, InvalidInput
from mvpipe.media.assemble import assemble, cut_in, encode_song, inputs_hash
from mvpipe.media.cut import cut_clip
from mvpipe.media.encoding import OutputFormat
from mvpipe.models import ProjectStatus, SceneStatus
from mvpipe.pipeline.cut import output_format, slot_frames
from mvpipe.pipeline.lost_tries import LostTooOften, LostTries
from mvpipe.states import assembly_due
from mvpipe.store.finals import final_video_key
from mvpipe.store.records import ProjectRecord, ProjectState, SceneRecord
from mvpipe.store.songs import song_aac_key

log = logging.getLogger("mvpipe.assemble")


def chosen_clip(scene: SceneRecord) -> str | None:
    """The clip a scene contributes to the final video: lip-synced if it has one, else its cut."""
    return scene.lip_synced_clip_key or scene.working_clip_key


def final_key(state: ProjectState, fmt: OutputFormat) -> str | None:
    """The key of the final video the current scenes make; None while a scene has no clip."""
    keys = [chosen_clip(s) for s in state.scenes]
    if not keys or any(k is None for k in keys):
        return None
    digest = inputs_hash(state.project.song_key, [k for k in keys if k], fmt)
    return final_video_key(state.project.project_id, digest)


#: An assembly's outcome when another execution is building the same final video: it runs again
#: later and finds the object (or the run recorded).
BUILDING = "another assembly is building it"
#: An assembly's outcome when its builds kept losing their worker process: the run was released.
LOST = "assembly failed: its builds lost their worker process"


@dataclass(frozen=True)
class Assembly:
    """What one assembly execution did."""

    outcome: str
    #: the project's status as this execution saw it last
    status: ProjectStatus
    key: str | None = None
    #: the object for these inputs existed already: nothing was encoded or uploaded
    reused: bool = False


def assemble_run(
    ctx: Context,
    project_id: str,
    run_id: str,
    *,
    redelivered: bool = False,
    taken_over: str | None = None,
) -> Assembly:
    """Build (or reuse) the final video of `run_id`'s project and record it.

    Does nothing unless the run is still active and every scene is completed: a run replaced
    meanwhile is someone else's to finish, and a scene reset meanwhile (its clip vanished) is
    made again by the run that takes this one over once it stops being alive. `redelivered`:
    the build follows a message delivered again; `taken_over`: the run `run_id` took over
    (`LostTries`).
    """
    state = ctx.projects.load(project_id)
    project = state.project
    if project.active_run_id != run_id:
        if project.final_video_key is not None and project.status == ProjectStatus.COMPLETED:
            return Assembly("already recorded", project.status, project.final_video_key, True)
        return Assembly("run no longer active", project.status)
    if not assembly_due(state.counters, final_video=project.final_video_key is not None):
        return Assembly("nothing to assemble", project.status)
    # No mark of the run here: its builder keeps it (`_Hold.kept`), and a second assembly
    # waiting on that build must not lengthen it past the builder's window (were the builder
    # lost, the run would wait out its staleness again before a takeover).
    fmt = output_format(ctx.settings)
    key = final_key(state, fmt)
    if key is None:
        return Assembly("a completed scene has no clip to show", project.status)
    reused = ctx.clips.exists(key)
    if not reused:
        # One build of a final video at a time: a second finalize of the run (the chord's,
        # after reconcile's) would otherwise download, mux and upload every clip again beside
        # the first. The second waits and then finds the object; the hold ends with the run's
        # liveness if its builder dies.
        hold = _Hold(ctx, run_id, f"assemble:{key}")
        if not hold.taken():
            return Assembly(BUILDING, project.status, key)
        try:
            # Built by another between this one's look and its hold (it let go since)
            reused = ctx.clips.exists(key)
            tries = LostTries(
                ctx,
                f"assembly:{key}",
                run_id=run_id,
                redelivered=redelivered,
                taken_over=taken_over,
            )
            if not reused and not _counted_build(ctx, state, fmt, key, hold, tries):
                return Assembly(LOST, ProjectStatus.PENDING)
        finally:
            hold.let_go()
    # The scenes must still be the ones hashed (reconcile may have reset a vanished clip).
    latest = ctx.projects.load(project_id)
    if final_key(latest, fmt) != key or any(
        s.status != SceneStatus.COMPLETED for s in latest.scenes
    ):
        return Assembly("scenes changed during assembly", latest.project.status, key, reused)
    if not ctx.projects.record_final_video(project_id, run_id, key, latest.counters):
        return Assembly("run no longer active", latest.project.status, key, reused)
    log.info("final video project=%s run=%s key=%s reused=%s", project_id, run_id, key, reused)
    return Assembly("completed", ProjectStatus.COMPLETED, key, reused)


def _counted_build(
    ctx: Context, state: ProjectState, fmt: OutputFormat, key: str, hold: _Hold, tries: LostTries
) -> bool:
    """`_build`, this try counted first (`tries`); False when the run was given up on
    instead, the tries before it lost with their process as often as a run's work may be tried
    (a video whose decode kills its worker would otherwise be delivered again forever, each
    delivery keeping the run alive)."""
    try:
        tries.attempt(lambda: _build(ctx, state, fmt, key, hold), "the final video's assembly")
    except LostTooOften as exc:
        give_up(ctx, state.project.project_id, hold.run_id, str(exc))
        return False
    return True


def give_up(ctx: Context, project_id: str, run_id: str, error: str) -> bool:
    """The final video cannot be made from these clips: release the run, keep why in
    `lastError`. The project waits (`pending`) for a user's run or a regenerated scene."""
    state = ctx.projects.load(project_id)
    log.warning("assembly failed project=%s run=%s: %s", project_id, run_id, error)
    return ctx.projects.settle(
        project_id,
        observed_run=run_id,
        counters=state.counters,
        status=ProjectStatus.PENDING,
        release=True,
        last_error=f"assembly failed: {error}",
    )


class _Hold:
    """One execution's hold of a final video's build, and the run's liveness while it builds.

    Building, the run's only liveness is the builder's: the run's mark and the hold last
    `MVPIPE_ASSEMBLY_ALIVE_SECONDS` (at most the run's staleness), the run's waiting mark is
    dropped (nothing of the run waits in a queue any more), and a thread of the builder's
    process keeps both (`kept`). A builder lost with its process, or its whole worker (whose
    message nothing delivers again for the visibility timeout), leaves them to lapse within
    that window: reconcile takes the run over then, and the takeover's assembly finds the hold
    gone, instead of both waiting out the run's staleness (or its last cut's queue window,
    315 s at the defaults). The thread keeps them only while the build makes progress
    (`alive`) within the run's staleness, so a build stuck in a live process is given up to
    a takeover as late as before, never kept alive forever."""

    def __init__(self, ctx: Context, run_id: str, job: str) -> None:
        self.ctx, self.run_id, self.job = ctx, run_id, job
        self.token = uuid.uuid4().hex
        settings = ctx.settings
        self.stale = settings.run_stale_seconds
        self.seconds = min(settings.assembly_alive_seconds, self.stale)
        self._progressed = time.monotonic()

    def taken(self) -> bool:
        """Held for the run's staleness until the build begins (`kept` cuts it to the window
        its keeper renews): the looks and counts before the build are not kept by the thread,
        and a window's hold could lapse in a slow store call there, letting a second
        assembly build beside this one."""
        return self.ctx.board.hold(self.job, self.token, self.stale)

    def alive(self) -> None:
        """The build made progress: its keeper goes on keeping the run and the hold."""
        self._progressed = time.monotonic()

    @contextlib.contextmanager
    def kept(self) -> Iterator[None]:
        """While the block builds: the run's liveness is this window alone, kept by a thread.
        After it (built, or failed: a retry's countdown follows) the run's mark is its
        staleness again, as any step leaves it."""
        board = self.ctx.board
        self.alive()
        board.mark_run_alone(self.run_id, self.seconds)
        board.renew_hold(self.job, self.token, self.seconds)
        stop = threading.Event()
        keeper = threading.Thread(
            target=self._keep, args=(stop,), name=f"keep-{self.job}", daemon=True
        )
        keeper.start()
        try:
            yield
        finally:
            stop.set()
            keeper.join()
            try:
                board.touch_run(self.run_id, self.stale)
            except BrokerUnavailable as exc:  # the build's own outcome stands
                log.warning("could not mark run %s alive (%s)", self.run_id, exc)

    def _keep(self, stop: threading.Event) -> None:
        """Renew the run's mark and the hold four times a window, until `stop`, or until the
        build has made no progress for the run's staleness (then both lapse)."""
        board = self.ctx.board
        while not stop.wait(self.seconds / 4):
            if time.monotonic() - self._progressed >= self.stale:
                log.warning(
                    "assembly of run %s made no progress for %.0fs", self.run_id, self.stale
                )
                return
            try:
                board.touch_run(self.run_id, self.seconds)
                if not board.renew_hold(self.job, self.token, self.seconds):
                    log.warning(
                        "assembly of run %s lost its hold (a Redis stall longer than %.0fs): "
                        "another assembly may build the same final video",
                        self.run_id,
                        self.seconds,
                    )
            except BrokerUnavailable as exc:  # Redis away: the next beat tries again
                log.warning("could not keep run %s alive (%s)", self.run_id, exc)

    def let_go(self) -> None:
        """Best effort: a hold not let go ends with its expiry, and must not replace what the
        build did (a Redis outage here would turn a give-up into a retry)."""
        try:
            self.ctx.board.let_go(self.job, self.token)
        except BrokerUnavailable as exc:
            log.warning("could not let go of %s (%s): it expires by itself", self.job, exc)


def _build(ctx: Context, state: ProjectState, fmt: OutputFormat, key: str, hold: _Hold) -> None:
    """Download the clips (and the song as AAC), join them, upload under `key`."""
    project = state.project
    with hold.kept(), tempfile.TemporaryDirectory(prefix="mvpipe-assemble-") as tmp:
        workdir = Path(tmp)
        clips: list[Path] = []
        hooks.reached("before_assembly")
        for scene in state.scenes:
            hold.alive()
            path = workdir / f"scene-{scene.sequence:03d}.mp4"
            path.write_bytes(ctx.clips.read(chosen_clip(scene) or ""))
            if not cut_in(path, fmt):
                _cut_again(ctx, scene, path, fmt)
            clips.append(path)
        song = _song_as_aac(ctx, project, workdir) if project.song_key else None
        hold.alive()
        out = workdir / "final.mp4"
        report = assemble(
            clips, out, fmt=fmt, song=song, song_seconds=project.song_seconds if song else None
        )
        hooks.reached("during_assembly")
        hold.alive()
        ctx.clips.put(key, out.read_bytes())
    log.info(
        "assembled project=%s clips=%d frames=%d video=%.3fs audio=%s dropped=%d",
        project.project_id,
        report.clips,
        report.frames,
        report.video_seconds,
        "-" if report.audio_seconds is None else f"{report.audio_seconds:.3f}s",
        report.dropped_frames,
    )


def _cut_again(ctx: Context, scene: SceneRecord, path: Path, fmt: OutputFormat) -> None:
    """`scene`'s clip at `path`, made in another format (the output format or the encoder's
    parameters changed since its cut), cut again in `fmt` for this build: free, and no recorded
    clip changes, so no scene pays again for a format change. From the original, as the cut
    stage makes it (a cut of a cut loses quality); a lip-synced scene's from its lip-synced
    clip, the only copy of its paid job's output (and what the final video shows of it)."""
    source = path
    if scene.lip_synced_clip_key is None:
        source = path.with_name(f"{path.stem}-original.mp4")
        source.write_bytes(ctx.clips.read(scene.clip_key or ""))
    cut = path.with_name(f"{path.stem}-cut.mp4")
    try:
        report = cut_clip(source, cut, frames=slot_frames(scene, fmt.fps), fmt=fmt)
    except InvalidInput as exc:
        raise InvalidInput(
            f"scene {scene.sequence}'s clip, made in another format, could not be cut to"
            f" {fmt.size} at {fmt.fps} fps: {exc}"
        ) from None
    cut.replace(path)
    log.info(
        "cut again for the output format project=%s sequence=%d from=%s format=%s@%d held=%d",
        scene.project_id,
        scene.sequence,
        "original" if source is not path else "lip-synced clip",
        fmt.size,
        fmt.fps,
        report.held_frames,
    )


def _song_as_aac(ctx: Context, project: ProjectRecord, workdir: Path) -> Path:
    """The song as AAC, encoded once and kept beside the song (`{sha256[:16]}-aac.m4a`), so
    every later final video of the project copies its packets instead of encoding it."""
    song_key = project.song_key or ""
    aac_key = song_aac_key(project.project_id, song_key)
    path = workdir / "song-aac.m4a"
    if ctx.clips.exists(aac_key):
        path.write_bytes(ctx.songs.read(aac_key))
        return path
    source = workdir / f"song.{song_key.rsplit('.', 1)[-1]}"
    source.write_bytes(ctx.songs.read(song_key))
    encode_song(source, path)
    ctx.songs.put_song_aac(project.project_id, song_key, path.read_bytes())
    return path
