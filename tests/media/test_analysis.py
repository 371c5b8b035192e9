"""Song analysis on synthesized songs whose beats, bars and sections are known exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from mvpipe.errors import InvalidInput
from mvpipe.media.analysis import Section, Timeline, analyse, warm
from mvpipe.media.audio import decode_mono
from mvpipe.media.synth import SynthSong, synthesize_song

RATE = 22050
BEAT_TOLERANCE = 0.030


@cache
def _song(bpm: float, offset: float) -> tuple[SynthSong, Timeline]:
    song = synthesize_song(seconds=24.0, bpm=bpm, offset=offset, sections=4)
    return song, analyse(decode_mono(song.wav, RATE), RATE)


def _nearest(values: list[float], to: float) -> float:
    return min(abs(v - to) for v in values)


CASES = [(70, 0.137), (95, 0.0), (120, 0.137), (150, 0.31), (180, 0.137), (133, 0.05)]


@pytest.mark.parametrize(("bpm", "offset"), CASES)
def test_every_beat_found_within_30ms(bpm, offset):
    song, timeline = _song(bpm, offset)
    assert timeline.tempo == pytest.approx(bpm, rel=0.01)
    # Every detected beat is a true beat ...
    assert max(_nearest(song.beats, b) for b in timeline.beats) <= BEAT_TOLERANCE
    # ... and every true beat is detected, but perhaps the very last one (cut by the song's end)
    missed = [b for b in song.beats if _nearest(timeline.beats, b) > BEAT_TOLERANCE]
    assert missed in ([], [song.beats[-1]])
    assert timeline.duration == pytest.approx(24.0, abs=0.01)


@pytest.mark.parametrize(("bpm", "offset"), CASES)
def test_bars_land_on_bar_lines(bpm, offset):
    song, timeline = _song(bpm, offset)
    assert max(_nearest(song.bars, b) for b in timeline.bars) <= BEAT_TOLERANCE
    assert len(song.bars) - 1 <= len(timeline.bars) <= len(song.bars)
    assert timeline.bars == timeline.beats[timeline.beats.index(timeline.bars[0]) :: 4]


@pytest.mark.parametrize(("bpm", "offset"), CASES)
def test_section_changes_found_within_two_beats(bpm, offset):
    song, timeline = _song(bpm, offset)
    period = 60.0 / bpm
    # The changes with two bars of music on both sides are detectable by a two-bar window.
    changes = [s for s in song.sections[1:] if s + 8 * period <= 24.0]
    found = [s.start for s in timeline.sections[1:]]
    assert timeline.sections[0] == Section(0.0, "A")
    for change in changes:
        assert _nearest(found, change) <= 2 * period + 0.01, (change, found)
    # No invented change: each found one is a true one.
    for start in found:
        assert _nearest(song.sections[1:], start) <= 2 * period + 0.01, (start, song.sections)
    # The synthesizer alternates two patterns: the labels say so.
    labels = [s.label for s in timeline.sections]
    assert labels == ["A", "B", "A", "B", "A"][: len(labels)]


def test_analysis_is_deterministic_and_round_trips_as_json():
    song = synthesize_song(seconds=12.0, bpm=110.0, offset=0.2, sections=2)
    samples = decode_mono(song.wav, RATE)
    first, second = analyse(samples, RATE), analyse(samples, RATE)
    assert first.to_json() == second.to_json()
    restored = Timeline.from_json(first.to_json())
    assert restored.to_json() == first.to_json()
    assert restored.sections == first.sections
    assert isinstance(json.loads(first.to_json())["beats"], list)


def test_silence_has_no_beats():
    timeline = analyse(np.zeros(3 * RATE, dtype=np.float32), RATE)
    assert timeline.beats == []
    assert timeline.bars == []
    assert timeline.sections == [Section(0.0, "A")]
    assert timeline.duration == pytest.approx(3.0)


@pytest.mark.parametrize(
    "samples",
    [np.zeros(100, dtype=np.float32), np.full(RATE * 2, np.nan, dtype=np.float32)],
)
def test_unusable_samples_are_invalid_input(samples):
    with pytest.raises(InvalidInput):
        analyse(samples, RATE)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "{}",
        '{"tempo": 120, "beats": [2, 1], "bars": [], "sections": [], "duration": 3}',
        '{"tempo": 120, "beats": [1, 9], "bars": [], "sections": [], "duration": 3}',
        '{"tempo": 120, "beats": [], "bars": [], "sections": [], "duration": -1}',
    ],
)
def test_damaged_timeline_json_is_refused(text):
    with pytest.raises(InvalidInput):
        Timeline.from_json(text)


def test_warm_runs_the_whole_analysis():
    timeline = warm()
    assert timeline.tempo == pytest.approx(120.0, rel=0.01)
    assert len(timeline.beats) == 12


def test_beats_survive_background_noise():
    song = synthesize_song(seconds=24.0, bpm=142.0, offset=0.29, sections=4)
    samples = decode_mono(song.wav, RATE)
    noisy = samples + np.random.default_rng(3).normal(0, 0.05, len(samples)).astype(np.float32)
    timeline = analyse(noisy, RATE)
    assert max(_nearest(song.beats, b) for b in timeline.beats) <= BEAT_TOLERANCE
    assert [b for b in song.beats if _nearest(timeline.beats, b) > BEAT_TOLERANCE] == []


def test_importing_media_does_not_load_librosa():
    code = (
        "import sys, mvpipe.media, mvpipe.media.analysis, mvpipe.media.slots, "
        "mvpipe.media.cut, mvpipe.media.assemble; "
        "print(sorted(m for m in ('librosa', 'numba', 'celery', 'mvpipe.settings') "
        "if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.strip() == "[]"
