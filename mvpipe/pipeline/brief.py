"""What a planner is told about a song project: its slots, their sections and their lyrics.

Pure: lyric lines carry no timestamps, so they are spread evenly over the song in order and each
slot gets the lines whose middle falls inside it (or, when none does, the line sounding at its
middle). Longer slots get more lines; every line lands in exactly one slot when lines are many.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mvpipe.media.slots import Slot
from mvpipe.providers.base import SlotBrief

_SENTENCES = re.compile(r"(?<=[.!?;])\s+")


def lyric_lines(concept: str) -> list[str]:
    """The concept's lines; a concept written as one line is split into its sentences."""
    lines = [line.strip() for line in concept.splitlines() if line.strip()]
    if len(lines) == 1:
        lines = [part.strip() for part in _SENTENCES.split(lines[0]) if part.strip()]
    return lines


def assign_lyrics(
    lines: Sequence[str], slots: Sequence[tuple[float, float]], song_seconds: float
) -> list[tuple[str, ...]]:
    """For each (start, end) slot, in order, the lyric lines that fall in it."""
    if not lines or not slots or song_seconds <= 0:
        return [() for _ in slots]
    span = song_seconds / len(lines)
    middles = [(index + 0.5) * span for index in range(len(lines))]
    assigned = []
    for number, (start, end) in enumerate(slots):
        last = number == len(slots) - 1
        inside = tuple(
            line
            for line, middle in zip(lines, middles, strict=True)
            if start <= middle < end or (last and middle >= end)
        )
        if not inside:
            sounding = min(int((start + end) / 2 / span), len(lines) - 1)
            inside = (lines[sounding],)
        assigned.append(inside)
    return assigned


def slot_briefs(slots: Sequence[Slot], concept: str, song_seconds: float) -> tuple[SlotBrief, ...]:
    lyrics = assign_lyrics(
        lyric_lines(concept), [(s.start_seconds, s.end_seconds) for s in slots], song_seconds
    )
    return tuple(
        SlotBrief(s.start_seconds, s.end_seconds, s.section, words)
        for s, words in zip(slots, lyrics, strict=True)
    )
