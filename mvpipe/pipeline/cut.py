"""The cut stage: the original clip → exactly the scene's slot frames in the output format.

Free and deterministic: the working key is a hash of its inputs (the original's key, the slot's
frames, the output format), so a duplicate or re-run cut makes the same object, and its one
conditional write is conditioned on the original it cut from (invariant 1). A clip that cannot
be decoded fails the scene (permanent) and keeps the original; its `lastError` says that only
`mvpipe regenerate` (a new paid clip) gets past it, as a run cuts the same original again; so
does a clip whose cut keeps killing its worker process (`LostTries`: it would be delivered again
forever). An original whose object vanished is a lost output, as reconcile treats a completed
scene's: the scene goes back to `pending` without it, and the run it belongs to makes it again
(a retry would never find it).
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from mvpipe import hooks
from mvpipe.errors import InvalidInput
from mvpipe.frame_size import parse_size
from mvpipe.media.cut import cut_clip
from mvpipe.media.encoding import OutputFormat
from mvpipe.pipeline.execution import Execution
from mvpipe.pipeline.lost_tries import LostTooOften, LostTries
from mvpipe.pipeline.steps import Next, Step
from mvpipe.providers.classify import describe
from mvpipe.settings import Settings
from mvpipe.store.clips import ObjectMissing, working_key
from mvpipe.store.records import SceneRecord

if TYPE_CHECKING:
    from mvpipe.pipeline.stages import Stage


def output_format(settings: Settings) -> OutputFormat:
    width, height = parse_size(settings.output_size)
    return OutputFormat(width, height, settings.output_fps)


def slot_seconds(scene: SceneRecord) -> float:
    """The length of the scene's slot in the song (its clip's length when it has none)."""
    if scene.start_seconds is None or scene.end_seconds is None:
        return float(scene.duration_seconds)
    return scene.end_seconds - scene.start_seconds


def slot_frames(scene: SceneRecord, fps: int) -> int:
    """The frames of the scene's slot on the output grid (each boundary rounded on its own, so
    consecutive slots tile the song exactly); a scene without a slot (no song) fills its clip
    length from 0."""
    if scene.start_seconds is not None and scene.end_seconds is not None:
        return max(1, round(scene.end_seconds * fps) - round(scene.start_seconds * fps))
    return max(1, scene.duration_seconds * fps)


def cut_inputs_hash(original_key: str, frames: int, fmt: OutputFormat) -> str:
    """What the cut depends on: its source, its length and the format (encoder included)."""
    text = f"{original_key}|{frames}|{fmt.as_key()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cut_key(scene: SceneRecord, original_key: str, settings: Settings) -> str:
    fmt = output_format(settings)
    frames = slot_frames(scene, fmt.fps)
    return working_key(
        scene.project_id, scene.sequence, original_key, cut_inputs_hash(original_key, frames, fmt)
    )


def later_outputs(stage: Stage, scene: SceneRecord) -> tuple[tuple[str, str], ...] | None:
    """Every output the scene needs after `stage`, as (field, key), when all are recorded
    (None when one is missing, or none is needed)."""
    later = [s for s in stage.later if s.needed(scene)]
    found = [(s.fields.output, s.output(scene)) for s in later]
    if not found or any(key is None for _, key in found):
        return None
    return tuple((field, key) for field, key in found if key is not None)


def original_of(stage: Stage, scene: SceneRecord) -> tuple[str, str] | None:
    """The output the cut is made from, as (field, key); None while it is not recorded."""
    source = stage.requires
    original: str | None = scene.value(source) if source is not None else None
    return None if source is None or original is None else (source, original)


def cut_failure(project_id: str, sequence: int, reason: str) -> str:
    """The `lastError` of a scene whose original cannot be cut. Another run cuts the same
    original and fails again (free, and the paid clip is never dropped for a guess about it):
    only a new generation can help, and that is the user's to pay for, so say how."""
    return (
        f"the clip could not be cut: {reason}; the original is kept, and "
        f"`mvpipe regenerate {project_id} {sequence}` pays for a new clip"
    )


def remade_key(stage: Stage, scene: SceneRecord, settings: Settings) -> str | None:
    """The key a cut of `scene` would be made at now (None without its original): the cut is
    deterministic, so a lost cut whose key this is would be made again as it was."""
    made_from = original_of(stage, scene)
    return None if made_from is None else cut_key(scene, made_from[1], settings)


class CutRunner:
    """Runs the cut stage of one scene in this execution (queue `mvpipe.media`): cuts the
    stage's `requires` (the original) into its output."""

    def __init__(self, execution: Execution, stage: Stage) -> None:
        self.x = execution
        self.ctx = execution.ctx
        self.stage = stage

    def run(self, scene: SceneRecord) -> Step:
        ctx, x = self.ctx, self.x
        made_from = original_of(self.stage, scene)
        if made_from is None:
            raise ValueError("a cut needs the original clip")
        source, original = made_from
        fmt = output_format(ctx.settings)
        frames = slot_frames(scene, fmt.fps)
        key = cut_key(scene, original, ctx.settings)
        # While this runs nobody else starts a chain for the scene (reconcile sees it alive).
        x.touch(ctx.settings.liveness_seconds(x.provider))
        if not ctx.clips.exists(key):  # a duplicate or crashed cut may have uploaded it already
            tries = LostTries(
                ctx,
                f"cut:{key}",
                run_id=x.run_id,
                redelivered=x.redelivered,
                taken_over=x.taken_over,
            )
            try:
                held = tries.attempt(lambda: self.cut(original, key, frames, fmt), "cutting it")
            except LostTooOften as exc:
                return self.failed(made_from, str(exc))
            except InvalidInput as exc:
                return self.failed(made_from, describe(exc))
            except ObjectMissing as exc:
                return self.lost(original, exc)
            if held:
                x.log(f"clip shorter than its slot: held its last frame {held} times", None, None,
                      self.stage.name)  # fmt: skip
        # Later outputs still held (a lost cut made again under its lip-sync): then this write
        # completes the scene, conditioned on them, or it would stay `processing` with nothing
        # left to make.
        kept = later_outputs(self.stage, scene)
        last = self.stage.is_last(scene) or kept is not None
        written = ctx.scenes.record_output(
            x.project_id,
            x.sequence,
            stage=self.stage.fields,
            key=key,
            made_from=(source, original),
            last=last,
            kept=kept or (),
        )
        if written is None:
            return Step.done("superseded: scene moved on, cut left for garbage collection")
        message = f"cut recorded: {key} ({frames} frames at {fmt.size}@{fmt.fps})"
        x.log(message, None, None, self.stage.name)
        return x.finished("completed") if last else Step(Next.STAGE, "cut done", scene=written)

    def failed(self, made_from: tuple[str, str], reason: str) -> Step:
        """The original cannot be cut (`reason`): the scene fails and keeps it."""
        x = self.x
        error = cut_failure(x.project_id, x.sequence, reason)
        self.ctx.scenes.fail(
            x.project_id, x.sequence, error=error, made_from=made_from, stage=self.stage.fields
        )
        x.log(error, None, None, self.stage.name)
        return x.finished("failed: the clip could not be cut")

    def lost(self, original: str, exc: ObjectMissing) -> Step:
        """The original's object is gone: retrying could never find it. Cleared as reconcile
        clears a completed scene's vanished clip (conditioned on it being the one recorded:
        `pending`, the reason in `lastError`); the run this chain works for then makes it again
        at once (a second paid generation, as the run's takeover would pay), and work outside
        any run leaves it to the user's next run."""
        x = self.x
        if not self.ctx.scenes.reset_missing_clip(x.project_id, x.sequence, clip_key=original):
            return Step.done("superseded: scene moved on while its original was missing")
        x.log(f"original clip missing, scene reset: {exc}", None, None, self.stage.name)
        if x.run_id is None:
            return x.finished("reset: the original clip is missing")
        return Step(Next.STAGE, "original clip missing: generating it again")

    def cut(self, original: str, key: str, frames: int, fmt: OutputFormat) -> int:
        """Cut on local disk (a temp dir), upload; returns how many frames were held."""
        with tempfile.TemporaryDirectory(prefix="mvpipe-cut-") as tmp:
            src, dst = Path(tmp) / "original.mp4", Path(tmp) / "working.mp4"
            src.write_bytes(self.x.uploaded.get(original) or self.ctx.clips.read(original))
            report = cut_clip(src, dst, frames=frames, fmt=fmt)
            hooks.reached("during_cut")
            self.ctx.clips.put(key, dst.read_bytes())
        return report.held_frames
