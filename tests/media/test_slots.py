"""Slots: contiguous, exact, on beats, within the length limits, deterministic, no drift."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mvpipe.errors import InvalidInput
from mvpipe.media.slots import Slot, check_slot_count, plan_slots
from mvpipe.media.timeline import Section, Timeline
from mvpipe.models import MAX_SCENES


def _grid(bpm: float, offset: float, seconds: float, per_bar: int = 4, section_bars: int = 8):
    period = 60.0 / bpm
    beats = [offset + k * period for k in range(int((seconds - offset) / period) + 1)]
    beats = [b for b in beats if b < seconds]
    bars = beats[::per_bar]
    sections = [Section(0.0, "A")] + [
        Section(b, "AB"[i % 2]) for i, b in enumerate(bars[section_bars::section_bars], start=1)
    ]
    return beats, bars, sections


def _check_cover(slots: list[Slot], seconds: float, fps: int) -> None:
    assert slots[0].start_frame == 0
    assert slots[-1].end_frame == round(seconds * fps)
    for before, after in itertools.pairwise(slots):
        assert before.end_frame == after.start_frame
    assert [s.index for s in slots] == list(range(len(slots)))
    assert sum(s.frames for s in slots) == round(seconds * fps)


@settings(max_examples=150, deadline=None)
@given(
    bpm=st.floats(70, 180),
    offset_fraction=st.floats(0, 0.999),
    seconds=st.floats(0.5, 240),
    fps=st.sampled_from([12, 24, 25, 30]),
    min_seconds=st.floats(1, 3),
    extra=st.floats(1, 6),
)
def test_slots_tile_the_song_on_beats_within_limits(
    bpm, offset_fraction, seconds, fps, min_seconds, extra
):
    # Given a song of known beats, bars and sections (any tempo 70..180, any offset)
    max_seconds = 2 * min_seconds + extra
    beats, bars, sections = _grid(bpm, offset_fraction * 60 / bpm, seconds)
    # When it is cut into slots
    slots = plan_slots(
        beats,
        bars=bars,
        sections=sections,
        song_seconds=seconds,
        fps=fps,
        min_seconds=min_seconds,
        max_seconds=max_seconds,
    )
    # Then the slots tile it exactly ...
    _check_cover(slots, seconds, fps)
    total = round(seconds * fps)
    # ... each between the limits (a song shorter than the minimum is one slot) ...
    for slot in slots:
        assert slot.frames <= math.floor(max_seconds * fps + 1e-9)
        if total >= math.ceil(min_seconds * fps - 1e-9):
            assert slot.frames >= math.ceil(min_seconds * fps - 1e-9), slots
        else:
            assert len(slots) == 1
    # ... every inner boundary is a beat on the frame grid, rounded from absolute time ...
    beat_frames = {round(b * fps) for b in beats}
    for slot in slots[1:]:
        assert slot.start_frame in beat_frames
        nearest = min(beats, key=lambda b: abs(b - slot.start_seconds))
        assert abs(nearest - slot.start_seconds) <= 0.5 / fps + 1e-9
    # ... every section change with room on both sides is a boundary ...
    starts = {s.start_frame for s in slots}
    for section in sections[1:]:
        frame = round(section.start * fps)
        min_frames = math.ceil(min_seconds * fps - 1e-9)
        if frame >= min_frames and total - frame >= min_frames:
            assert frame in starts, (section, [s.start_frame for s in slots])
    # ... each slot carries the label of the section it starts in ...
    for slot in slots:
        expected = [s.label for s in sections if round(s.start * fps) <= slot.start_frame][-1]
        assert slot.section == expected
    # ... and the same input gives the same slots.
    assert slots == plan_slots(
        beats,
        bars=bars,
        sections=sections,
        song_seconds=seconds,
        fps=fps,
        min_seconds=min_seconds,
        max_seconds=max_seconds,
    )


def test_slots_prefer_bar_lines_and_fewest_clips():
    # 120 BPM from 0: a bar is 2 s, so 8 s slots of four bars fit a 32 s song exactly.
    beats, bars, _ = _grid(120, 0.0, 32.0)
    slots = plan_slots(beats, bars=bars, song_seconds=32.0, fps=24, min_seconds=2, max_seconds=8)
    assert [(s.start_seconds, s.end_seconds) for s in slots] == [
        (0.0, 8.0),
        (8.0, 16.0),
        (16.0, 24.0),
        (24.0, 32.0),
    ]


def test_a_short_final_remainder_is_not_left_alone():
    # 120 BPM, 17 s: greedy 8 s slots would leave a 1 s tail; no slot may be under 2 s.
    beats, bars, _ = _grid(120, 0.0, 17.0)
    slots = plan_slots(beats, bars=bars, song_seconds=17.0, fps=24, min_seconds=2, max_seconds=8)
    _check_cover(slots, 17.0, 24)
    assert len(slots) == 3
    assert min(s.seconds for s in slots) >= 2.0


@pytest.mark.parametrize("seconds", [0.3, 1.5, 7.9])
def test_a_song_shorter_than_one_slot_is_one_slot(seconds):
    beats, bars, _ = _grid(150, 0.137, seconds)
    slots = plan_slots(beats, bars=bars, song_seconds=seconds, fps=24, min_seconds=2, max_seconds=8)
    assert [(s.start_frame, s.end_frame) for s in slots] == [(0, round(seconds * 24))]


def test_frame_grid_rounding_never_drifts():
    # 3 minutes at 119.7 BPM, 25 fps: beats fall between frames; boundaries stay on the nearest
    # frame of their absolute time, and the total is the song's frame count exactly.
    beats, bars, sections = _grid(119.7, 0.311, 180.0)
    slots = plan_slots(
        beats,
        bars=bars,
        sections=sections,
        song_seconds=180.0,
        fps=25,
        min_seconds=2,
        max_seconds=8,
    )
    assert slots[-1].end_frame == 4500
    for slot in slots[1:]:
        assert any(slot.start_frame == round(b * 25) for b in beats)


def test_beatless_stretch_longer_than_a_slot_is_split_evenly():
    slots = plan_slots([], song_seconds=30.0, fps=24, min_seconds=2, max_seconds=8)
    _check_cover(slots, 30.0, 24)
    assert all(48 <= s.frames <= 192 for s in slots)
    assert len(slots) == 4


def test_a_timeline_can_be_passed_whole():
    beats, bars, sections = _grid(100, 0.2, 40.0)
    timeline = Timeline(100.0, beats, bars, sections, 40.0)
    direct = plan_slots(
        beats,
        bars=bars,
        sections=sections,
        song_seconds=40.0,
        fps=24,
        min_seconds=2,
        max_seconds=8,
    )
    assert plan_slots(timeline, song_seconds=40.0, fps=24, min_seconds=2, max_seconds=8) == direct
    assert {s.section for s in direct} == {"A", "B"}


@pytest.mark.parametrize(
    ("beats", "kwargs"),
    [
        ([1.0], {"song_seconds": -1.0}),
        ([1.0], {"song_seconds": float("nan")}),
        ([1.0], {"song_seconds": float("inf")}),
        ([1.0], {"song_seconds": 0.001}),
        ([1.0], {"fps": 0}),
        ([1.0], {"fps": -24}),
        ([1.0], {"fps": 23.976}),
        ([1.0], {"min_seconds": 9.0}),
        ([1.0], {"min_seconds": -1.0}),
        ([1.0], {"max_seconds": 0.0}),
        ([1.0], {"min_seconds": 2.01, "max_seconds": 2.02}),
        ([2.0, 1.0], {}),
        ([1.0, float("nan")], {}),
        ([-0.5, 1.0], {}),
    ],
)
def test_invalid_input_is_refused(beats, kwargs):
    args = {"song_seconds": 10.0, "fps": 24, "min_seconds": 2.0, "max_seconds": 8.0, **kwargs}
    with pytest.raises(InvalidInput):
        plan_slots(beats, **args)


def test_unsorted_bars_and_sections_are_refused():
    with pytest.raises(InvalidInput):
        plan_slots([1, 2, 3], bars=[3, 1], song_seconds=10, fps=24, min_seconds=2, max_seconds=8)
    with pytest.raises(InvalidInput):
        plan_slots(
            [1, 2, 3],
            sections=[Section(0, "A"), Section(5, "B"), Section(2, "A")],
            song_seconds=10,
            fps=24,
            min_seconds=2,
            max_seconds=8,
        )


def test_a_song_needing_more_scenes_than_a_project_holds_is_refused():
    # 999 slots of the longest length fill the song exactly: the most a project holds
    most = {"max_slots": MAX_SCENES}
    assert (
        len(plan_slots([], song_seconds=999 * 8, fps=24, min_seconds=2, max_seconds=8, **most))
        == 999
    )
    # A tenth of a second more needs a 1000th scene (whose key and sequence do not exist)
    with pytest.raises(InvalidInput, match=r"needs 1000 scenes.*999 a project holds"):
        plan_slots([], song_seconds=999 * 8 + 0.1, fps=24, min_seconds=2, max_seconds=8, **most)
    with pytest.raises(InvalidInput, match="needs 1000 scenes"):
        check_slot_count(999 * 8 + 0.1, fps=24, max_seconds=8, max_slots=MAX_SCENES)
    check_slot_count(999 * 8, fps=24, max_seconds=8, max_slots=MAX_SCENES)
    # Short enough by length, but its 1200 sections of 2.5 s each must start a slot
    beats = [n * 2.5 for n in range(1, 1200)]
    sections = [Section(n * 2.5, "ab"[n % 2]) for n in range(1200)]
    check_slot_count(3000, fps=24, max_seconds=8, max_slots=MAX_SCENES)
    with pytest.raises(InvalidInput, match="needs 1200 scenes"):
        plan_slots(
            beats,
            song_seconds=3000,
            fps=24,
            min_seconds=2,
            max_seconds=8,
            sections=sections,
            **most,
        )
