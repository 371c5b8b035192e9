"""The stage table and the cut's pure parts, without servers: which stage a scene needs next,
when a stage's output completes the scene, which output a repair must redo, the slot's frames
and the working clip's key."""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from datetime import UTC, datetime

import pytest

from mvpipe.media.encoding import OutputFormat
from mvpipe.models import SceneStatus
from mvpipe.pipeline.cut import cut_inputs_hash, slot_frames
from mvpipe.pipeline.stages import (
    CUT,
    GENERATE,
    LIPSYNC,
    STAGES,
    lost_output,
    needed_stages,
    next_stage,
)
from mvpipe.store.clips import StoredObject, clip_key, operation_key, working_key
from mvpipe.store.records import SceneRecord

PID = str(uuid.uuid4())


def scene(**fields: object) -> SceneRecord:
    base = SceneRecord(
        project_id=PID,
        sequence=3,
        prompt="p",
        negative_prompt=None,
        duration_seconds=4,
        status=SceneStatus.PENDING,
        clip_key=None,
        working_clip_key=None,
        lip_synced_clip_key=None,
        attempts=0,
        last_error=None,
        lease_token=None,
        lease_expires_at=None,
        operation_id=None,
        completed_at=None,
    )
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


def test_stages_run_in_order_and_each_only_while_its_output_is_missing() -> None:
    assert STAGES == (GENERATE, CUT, LIPSYNC)
    assert GENERATE.paid and not CUT.paid and LIPSYNC.paid
    assert (GENERATE.queue, CUT.queue, LIPSYNC.queue) == (
        "mvpipe.video",
        "mvpipe.media",
        "mvpipe.video",
    )
    assert next_stage(scene()) is GENERATE
    assert next_stage(scene(clip_key="o.mp4", operation_id="op")) is CUT
    assert next_stage(scene(clip_key="o.mp4", working_clip_key="w.mp4")) is None
    cut = scene(clip_key="o.mp4", working_clip_key="w.mp4", lip_sync=True)
    assert next_stage(cut) is LIPSYNC  # only a scene marked for it
    assert next_stage(dataclasses.replace(cut, lip_synced_clip_key="l.mp4")) is None
    # Lip-sync's fields are shaped like generation's: output, operation, attempts.
    assert (LIPSYNC.fields.operation, LIPSYNC.fields.attempts) == (
        "lip_sync_operation_id",
        "lip_sync_attempts",
    )
    assert LIPSYNC.requires == CUT.fields.output


def test_only_the_last_needed_stage_completes_the_scene() -> None:
    assert not GENERATE.is_last(scene())
    assert CUT.is_last(scene())
    assert not CUT.is_last(scene(lip_sync=True)) and LIPSYNC.is_last(scene(lip_sync=True))
    assert needed_stages(scene(lip_sync=True)) == [GENERATE, CUT, LIPSYNC]
    assert needed_stages(scene()) == [GENERATE, CUT]


def test_only_a_stage_followed_by_one_every_scene_needs_is_never_last() -> None:
    # generation is followed by the cut in every scene: its poll need not read the scene
    assert GENERATE.never_last
    assert not CUT.never_last and not LIPSYNC.never_last
    for lip_sync in (False, True):
        assert not GENERATE.is_last(scene(lip_sync=lip_sync))


def test_a_repair_redoes_the_first_lost_output_and_keeps_the_earlier_ones() -> None:
    done = scene(clip_key="o.mp4", working_clip_key="w.mp4", status=SceneStatus.COMPLETED)
    at = datetime.now(UTC)
    both = {"o.mp4": StoredObject("o.mp4", at), "w.mp4": StoredObject("w.mp4", at)}
    assert lost_output(done, both) is None
    assert lost_output(done, {"o.mp4": both["o.mp4"]}) == (CUT, "w.mp4")
    assert lost_output(done, {"w.mp4": both["w.mp4"]}) == (GENERATE, "o.mp4")
    assert lost_output(scene(clip_key="o.mp4", status=SceneStatus.COMPLETED), both) == (CUT, None)
    # a lip-synced scene needs its third clip too; its earlier two are kept
    synced = dataclasses.replace(done, lip_sync=True, lip_synced_clip_key="l.mp4")
    assert lost_output(synced, both) == (LIPSYNC, "l.mp4")
    assert lost_output(dataclasses.replace(synced, lip_synced_clip_key=None), both) == (
        LIPSYNC,
        None,
    )


@pytest.mark.parametrize("fps", [12, 24, 25, 30])
def test_slot_frames_tile_the_song_exactly_on_the_frame_grid(fps: int) -> None:
    bounds = [0.0, 1.37, 3.05, 4.4999, 6.01, 8.0]
    frames = [
        slot_frames(scene(start_seconds=a, end_seconds=b), fps)
        for a, b in itertools.pairwise(bounds)
    ]
    assert sum(frames) == round(8.0 * fps)  # no drift however the boundaries fall
    assert all(f >= 1 for f in frames)


def test_a_scene_without_a_slot_fills_its_clip_length() -> None:
    assert slot_frames(scene(duration_seconds=6), 24) == 144


def test_the_working_key_is_the_hash_of_the_cuts_inputs() -> None:
    fmt = OutputFormat(320, 180, 12)
    original = clip_key(PID, 3, "op-1")
    digest = cut_inputs_hash(original, 48, fmt)
    assert digest == cut_inputs_hash(original, 48, fmt)  # deterministic: a re-cut is the same
    others = {
        cut_inputs_hash(clip_key(PID, 3, "op-2"), 48, fmt),
        cut_inputs_hash(original, 47, fmt),
        cut_inputs_hash(original, 48, OutputFormat(320, 180, 24)),
        cut_inputs_hash(original, 48, OutputFormat(640, 360, 12)),
    }
    assert digest not in others and len(others) == 4
    key = working_key(PID, 3, original, digest)
    assert key == f"projects/{PID}/scenes/003/{operation_key('op-1')}-cut-{digest}.mp4"
    with pytest.raises(ValueError):
        working_key(PID, 3, original, "../../x")
