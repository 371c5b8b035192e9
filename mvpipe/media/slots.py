"""Slots: the song cut into contiguous scenes on its beats, on the output frame grid.

Pure and deterministic (no librosa, no I/O): the same beats always give the same slots.

The rule, in order of strength:
1. Slots are contiguous and cover frame 0 .. round(song_seconds * fps) exactly. Every boundary is
   an absolute time rounded to the nearest frame, never a sum of rounded lengths: no drift.
2. No slot is longer than `max_seconds` (the provider's longest clip).
3. No slot is shorter than `min_seconds`, whenever the beats allow it. A song shorter than
   `min_seconds` is one slot. A final remainder shorter than the minimum is never left alone:
   the choice is global, so the last boundary moves back (or the remainder joins the previous
   slot) until every slot fits.
4. Every inner boundary is on a beat. Only a stretch without beats longer than `max_seconds`
   (silence, a free-time intro) is split on the frame grid, as evenly as the minimum allows.
5. Among the cuts that satisfy all that: each section change is a boundary, then the fewest slots
   (each one is a paid clip), then bar lines over other beats. Ties go to the earliest cut.

A song that needs more than `max_slots` slots (the caller's limit: the scenes a project holds) is
refused.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from mvpipe.errors import InvalidInput
from mvpipe.media.timeline import Section, Timeline

# Costs of the choice in rule 5 (lower is better). A missed section change costs more than an
# extra slot, so section changes are always taken when they fit; a slot shorter than the minimum
# or a boundary off the beats costs more than anything else.
_SLOT = 1.0
_OFF_BAR = 0.25
_SECTION_REWARD = 2.0
_OFF_BEAT = 50.0
_TOO_SHORT = 1000.0


@dataclass(frozen=True)
class Slot:
    """One scene's place in the video, in frames of the output rate."""

    index: int
    start_frame: int
    end_frame: int
    section: str
    fps: int

    @property
    def frames(self) -> int:
        return self.end_frame - self.start_frame

    @property
    def start_seconds(self) -> float:
        return self.start_frame / self.fps

    @property
    def end_seconds(self) -> float:
        return self.end_frame / self.fps

    @property
    def seconds(self) -> float:
        return self.frames / self.fps


@dataclass(frozen=True)
class _Cut:
    frame: int
    on_beat: bool
    on_bar: bool
    section_change: bool


def plan_slots(
    beats: Timeline | Sequence[float],
    *,
    song_seconds: float,
    fps: int,
    min_seconds: float,
    max_seconds: float,
    bars: Sequence[float] = (),
    sections: Sequence[Section] = (),
    max_slots: int | None = None,
) -> list[Slot]:
    """The song's slots (see the module's rule). Pass a Timeline, or beats with bars/sections;
    `max_slots` (None: no limit) refuses a song that needs more."""
    if isinstance(beats, Timeline):
        bars, sections, beats = beats.bars, beats.sections, beats.beats
    _check(beats, bars, sections, song_seconds, fps, min_seconds, max_seconds)
    total = round(song_seconds * fps)
    if total < 1:
        raise InvalidInput(f"a {song_seconds} s song is shorter than one frame at {fps} fps")
    min_frames = math.ceil(min_seconds * fps - 1e-9)
    max_frames = math.floor(max_seconds * fps + 1e-9)
    if max_frames < 1 or min_frames > max_frames:
        raise InvalidInput(
            f"no slot length fits {min_seconds}..{max_seconds} s at {fps} fps (whole frames)"
        )
    _check_count(math.ceil(total / max_frames), max_seconds, max_slots)
    cuts = _candidates(beats, bars, sections, fps, total, min_frames, max_frames)
    chosen = _choose(cuts, min_frames, max_frames)
    _check_count(len(chosen) - 1, max_seconds, max_slots)
    labels = sorted(sections, key=lambda s: s.start)
    slots = []
    for index, (start, end) in enumerate(itertools.pairwise(chosen)):
        slots.append(Slot(index, start, end, _section_at(labels, start, fps), fps))
    return slots


def check_slot_count(song_seconds: float, *, fps: int, max_seconds: float, max_slots: int) -> None:
    """Refuse a song that needs more than `max_slots` slots even if every slot is as long as
    allowed: known from its length alone, so a song is refused before anything is stored."""
    max_frames = math.floor(max_seconds * fps + 1e-9)
    if max_frames >= 1:
        _check_count(math.ceil(round(song_seconds * fps) / max_frames), max_seconds, max_slots)


def _check_count(slots: int, max_seconds: float, max_slots: int | None) -> None:
    if max_slots is not None and slots > max_slots:
        raise InvalidInput(
            f"the song needs {slots} scenes (each at most {max_seconds:g} s long, and cut on its "
            f"beats and sections), more than the {max_slots} a project holds: use a shorter song"
        )


def _check(
    beats: Sequence[float],
    bars: Sequence[float],
    sections: Sequence[Section],
    song_seconds: float,
    fps: int,
    min_seconds: float,
    max_seconds: float,
) -> None:
    if not (math.isfinite(song_seconds) and song_seconds > 0):
        raise InvalidInput(f"song length must be a positive number of seconds, got {song_seconds}")
    if isinstance(fps, bool) or not isinstance(fps, int) or fps <= 0:
        raise InvalidInput(f"fps must be a positive whole number, got {fps!r}")
    if not (math.isfinite(min_seconds) and min_seconds >= 0):
        raise InvalidInput(f"minimum slot length must be ≥ 0 s, got {min_seconds}")
    if not (math.isfinite(max_seconds) and max_seconds > 0):
        raise InvalidInput(f"maximum slot length must be positive, got {max_seconds}")
    if min_seconds > max_seconds:
        raise InvalidInput(f"minimum slot length {min_seconds} s exceeds maximum {max_seconds} s")
    starts = [s.start for s in sections]
    for name, values in (("beats", beats), ("bars", bars), ("sections", starts)):
        if any(not (math.isfinite(v) and v >= 0) for v in values):
            raise InvalidInput(f"{name} must be finite times ≥ 0")
        if any(b < a for a, b in itertools.pairwise(values)):
            raise InvalidInput(f"{name} must be sorted")


def _candidates(
    beats: Sequence[float],
    bars: Sequence[float],
    sections: Sequence[Section],
    fps: int,
    total: int,
    min_frames: int,
    max_frames: int,
) -> list[_Cut]:
    """Every frame a boundary may go on: beats (marked bar/section), then fillers in long gaps."""
    beat_frames = sorted({f for f in (round(b * fps) for b in beats) if 0 < f < total})
    bar_frames = {round(b * fps) for b in bars}
    section_frames = set()
    for section in sections[1:] if sections and sections[0].start == 0 else sections:
        if beat_frames:
            # The beat nearest the change: analysis puts changes on beats, rounding may not.
            nearest = min(beat_frames, key=lambda f: (abs(f - section.start * fps), f))
            section_frames.add(nearest)
    anchors = [0, *beat_frames, total]
    cuts = [_Cut(0, True, True, False)]
    for left, right in itertools.pairwise(anchors):
        gap = right - left
        if gap > max_frames:
            # A beatless stretch: fillers every `step` frames let the chooser split it evenly
            # (fine enough to meet both limits, coarse enough to keep the search small).
            step = max(1, min_frames // 2, max_frames // 8)
            cuts.extend(_Cut(f, False, False, False) for f in range(left + step, right, step))
        if right != total:
            cuts.append(_Cut(right, True, right in bar_frames, right in section_frames))
    cuts.append(_Cut(total, True, True, False))
    return cuts


def _choose(cuts: list[_Cut], min_frames: int, max_frames: int) -> list[int]:
    """Least-cost boundaries from first to last cut, no slot over `max_frames` (dynamic program)."""
    best = [math.inf] * len(cuts)
    back = [-1] * len(cuts)
    best[0] = 0.0
    lo = 0
    for j in range(1, len(cuts)):
        while cuts[j].frame - cuts[lo].frame > max_frames:
            lo += 1
        end = cuts[j]
        cost_here = _SLOT
        if j < len(cuts) - 1:
            cost_here += 0.0 if end.on_bar else _OFF_BAR
            cost_here += 0.0 if end.on_beat else _OFF_BEAT
            cost_here -= _SECTION_REWARD if end.section_change else 0.0
        for i in range(lo, j):
            if best[i] == math.inf:
                continue
            length = end.frame - cuts[i].frame
            cost = best[i] + cost_here
            if length < min_frames:
                cost += _TOO_SHORT + (min_frames - length)
            if cost < best[j] - 1e-12:
                best[j], back[j] = cost, i
    if best[-1] == math.inf:  # pragma: no cover - fillers guarantee a path
        raise InvalidInput("the song cannot be cut into slots")
    path = [len(cuts) - 1]
    while path[-1] != 0:
        path.append(back[path[-1]])
    return [cuts[i].frame for i in reversed(path)]


def _section_at(sections: Sequence[Section], frame: int, fps: int) -> str:
    """The label of the section a slot starts in, on the frame grid the boundaries were put on."""
    label = sections[0].label if sections else "A"
    for section in sections:
        if round(section.start * fps) <= frame:
            label = section.label
    return label
