"""A synthesized song with known beats, bars and sections: the demo's song and the tests' truth.

Drums (kick on every beat, accented on bar lines; snare on the back beats; eighth-note hats) and a
bass line whose pattern and timbre change every `sections` bars, alternating between two
sections (A, B, A, ...). Everything is computed, nothing random without a fixed seed, so the same
arguments always give the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from mvpipe.errors import InvalidInput
from mvpipe.media.audio import to_wav

#: Bass notes (Hz) per beat of a bar, one pattern per section kind.
_BASS_PATTERNS = (
    (55.0, 55.0, 82.41, 73.42),  # A: A1 A1 E2 D2, soft sine
    (98.0, 130.81, 87.31, 116.54),  # B: G2 C3 F2 A#2, bright saw
)


@dataclass(frozen=True)
class SynthSong:
    """The WAV bytes and the truth they were built from (seconds from the start)."""

    wav: bytes
    beats: list[float]
    bars: list[float]
    sections: list[float]


#: The synthesized song's sample rate (its WAV's size follows: `audio.wav_size`).
SAMPLE_RATE = 22050


def synthesize_song(
    seconds: float = 30.0,
    bpm: float = 120.0,
    offset: float = 0.0,
    sample_rate: int = SAMPLE_RATE,
    beats_per_bar: int = 4,
    sections: int = 8,
) -> SynthSong:
    """Drums and bass at `bpm`, first beat at `offset` s, a new section every `sections` bars.

    `SynthSong.sections` lists each section's start: 0.0, then every bar line where the pattern
    changes.
    """
    _check(seconds, bpm, offset, sample_rate, beats_per_bar, sections)
    period = 60.0 / bpm
    total = round(seconds * sample_rate)
    out = np.zeros(total, dtype=np.float64)
    rng = np.random.default_rng(20260101)
    beats = [offset + k * period for k in range(math.ceil((seconds - offset) / period) + 1)]
    beats = [b for b in beats if b < seconds]
    kick = _kick(sample_rate)
    snare = _snare(sample_rate, rng)
    hat = _hat(sample_rate, rng)
    for index, beat in enumerate(beats):
        position = index % beats_per_bar
        section_kind = (index // (beats_per_bar * sections)) % len(_BASS_PATTERNS)
        _add(out, kick * (1.0 if position == 0 else 0.55), beat, sample_rate)
        if position % 2 == 1:
            _add(out, snare * 0.35, beat, sample_rate)
        for half in (0.0, 0.5):
            _add(out, hat * (0.12 if half else 0.08), beat + half * period, sample_rate)
        note = _BASS_PATTERNS[section_kind][position % len(_BASS_PATTERNS[section_kind])]
        _add(
            out, _bass(note, period * 0.9, sample_rate, bright=section_kind == 1), beat, sample_rate
        )
    bars = beats[::beats_per_bar]
    starts = [0.0, *bars[sections::sections]]
    peak = float(np.max(np.abs(out))) or 1.0
    wav = to_wav((out / peak * 0.9).astype(np.float32), sample_rate)
    return SynthSong(wav=wav, beats=beats, bars=bars, sections=starts)


def _check(
    seconds: float, bpm: float, offset: float, sample_rate: int, beats_per_bar: int, sections: int
) -> None:
    if not (math.isfinite(seconds) and 0 < seconds <= 3600):
        raise InvalidInput(f"song length must be in (0, 3600] s, got {seconds}")
    if not (math.isfinite(bpm) and 20 <= bpm <= 400):
        raise InvalidInput(f"tempo must be 20..400 BPM, got {bpm}")
    if not (math.isfinite(offset) and 0 <= offset < seconds):
        raise InvalidInput(f"offset must be within the song, got {offset}")
    if sample_rate < 8000 or beats_per_bar < 1 or sections < 1:
        raise InvalidInput("sample rate ≥ 8000, beats per bar ≥ 1 and section bars ≥ 1 required")


def _add(out: NDArray[np.float64], sound: NDArray[np.float64], at: float, rate: int) -> None:
    start = round(at * rate)
    if start >= len(out):
        return
    end = min(len(out), start + len(sound))
    out[start:end] += sound[: end - start]


def _kick(rate: int) -> NDArray[np.float64]:
    t = np.arange(int(0.18 * rate)) / rate
    # A pitch drop from 160 to 50 Hz: the phase is the integral of the falling frequency.
    phase = 2 * np.pi * (50 * t + (110 / 30) * (1 - np.exp(-30 * t)))
    return np.sin(phase) * np.exp(-t * 18)


def _snare(rate: int, rng: np.random.Generator) -> NDArray[np.float64]:
    t = np.arange(int(0.12 * rate)) / rate
    noise = rng.uniform(-1, 1, len(t))
    return (noise * 0.8 + np.sin(2 * np.pi * 190 * t) * 0.4) * np.exp(-t * 30)


def _hat(rate: int, rng: np.random.Generator) -> NDArray[np.float64]:
    t = np.arange(int(0.04 * rate)) / rate
    noise = np.diff(rng.uniform(-1, 1, len(t) + 1))  # differencing: a crude high-pass
    return noise * np.exp(-t * 120)


def _bass(freq: float, length: float, rate: int, *, bright: bool) -> NDArray[np.float64]:
    t = np.arange(int(length * rate)) / rate
    envelope = np.minimum(1.0, t * 200) * np.exp(-t * 2.5)
    if bright:
        wave = 2 * ((t * freq) % 1.0) - 1  # sawtooth: many harmonics, a different timbre
        return 0.35 * wave * envelope
    return 0.6 * np.sin(2 * np.pi * freq * t) * envelope
