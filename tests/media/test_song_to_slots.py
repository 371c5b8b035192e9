"""From a synthesized song to slots: analysis and the slot rule together, as planning uses them."""

from __future__ import annotations

import pytest

from mvpipe.durations import clip_seconds
from mvpipe.media.analysis import analyse
from mvpipe.media.audio import decode_mono
from mvpipe.media.slots import plan_slots
from mvpipe.media.synth import synthesize_song

VEO = (4, 6, 8)


@pytest.mark.parametrize(("bpm", "offset"), [(120.0, 0.137), (87.0, 0.41), (166.0, 0.05)])
def test_slots_of_a_song_fall_on_its_true_beats(bpm, offset):
    # Given the demo's kind of song: 30 s of drums and bass at a known tempo
    song = synthesize_song(seconds=30.0, bpm=bpm, offset=offset)
    timeline = analyse(decode_mono(song.wav, 22050), 22050)
    # When it is cut for Veo at 24 fps
    slots = plan_slots(timeline, song_seconds=30.0, fps=24, min_seconds=2, max_seconds=8)
    # Then the slots tile the song, every inner boundary within 40 ms of a true beat ...
    assert slots[0].start_frame == 0 and slots[-1].end_frame == 720
    for slot in slots[1:]:
        assert min(abs(slot.start_seconds - b) for b in song.beats) <= 0.040
    # ... the section change is a boundary (to the frame) ...
    starts = [s.start_seconds for s in slots]
    for change in song.sections[1:]:
        if change + 8 * 60 / bpm <= 30.0:
            assert min(abs(start - change) for start in starts) <= 1 / 24 + 0.030
    # ... and each slot gets the shortest Veo clip that covers it.
    for slot in slots:
        assert 2.0 <= slot.seconds <= 8.0
        duration = clip_seconds(slot.seconds, VEO)
        assert duration >= slot.seconds
        assert all(d < slot.seconds for d in VEO if d < duration)
