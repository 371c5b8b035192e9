"""Song analysis: tempo, every beat, bars (downbeats) and sections, as a JSON-able Timeline.

librosa finds the beats; three steps around it make the result exact enough to cut video on:
- the tempo octave is chosen by a comb over the onset envelope (the fastest tempo whose every beat
  carries an onset), so a 180 BPM song is not tracked at 90 and a 70 BPM one not at 140;
- each tracked beat is moved to the attack it belongs to, found on a 3 ms energy envelope
  (librosa's frames are 12 ms apart and its onset peaks lag or lead by a frame or two);
- bars are the beat phase whose low-band (kick) attacks are strongest, and sections are peaks of a
  two-bar novelty curve over beat-synchronous timbre (MFCC) and harmony (chroma).
librosa is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mvpipe.errors import InvalidInput
from mvpipe.media.timeline import Section, Timeline

__all__ = ["Section", "Timeline", "analyse", "warm"]

_HOP = 256  # librosa frames: 11.6 ms at 22050 Hz
_FINE_HOP = 64  # attack envelope: 2.9 ms at 22050 Hz
_FINE_FRAME = 256
_N_FFT = 2048
_TEMPO_SPAN_SECONDS = 60.0
_MIN_BPM, _MAX_BPM = 60.0, 200.0
_PAD_SECONDS = 2.0
_NOVELTY_FLOOR = 0.08  # below this a change of sound is noise, not a new section


def analyse(
    samples: NDArray[np.floating[Any]], sample_rate: int, beats_per_bar: int = 4
) -> Timeline:
    """The timeline of a mono song (see `mvpipe.media.audio.decode_mono`)."""
    import librosa

    if sample_rate <= 0 or beats_per_bar < 1:
        raise InvalidInput("sample rate and beats per bar must be positive")
    y = np.ascontiguousarray(samples, dtype=np.float32)
    duration = len(y) / sample_rate
    if len(y) < sample_rate or not np.all(np.isfinite(y)):
        raise InvalidInput("the song must be at least one second of finite samples")
    # One power spectrogram serves onsets, timbre and harmony: a 3-minute song's STFT is
    # ~60 MB, and computing it once per feature multiplied the peak memory.
    power = np.abs(librosa.stft(y, n_fft=_N_FFT, hop_length=_HOP)) ** 2
    log_mel = librosa.power_to_db(librosa.feature.melspectrogram(S=power, sr=sample_rate))
    envelope = librosa.onset.onset_strength(S=log_mel, sr=sample_rate, hop_length=_HOP)
    attack = _attack_envelope(y)
    tempo = _choose_tempo(envelope, _pool(attack, _HOP // _FINE_HOP), sample_rate)
    if tempo is None:
        return Timeline(0.0, [], [], [Section(0.0, "A")], duration, beats_per_bar)
    # Silence around the song keeps the tracker's edge effects off the song's first and last
    # beats; the beats it then places in the silence have no attack and are dropped by _refine.
    pad = np.zeros(round(_PAD_SECONDS * sample_rate / _HOP))
    _, frames = librosa.beat.beat_track(
        onset_envelope=np.concatenate([pad, envelope, pad]),
        sr=sample_rate,
        hop_length=_HOP,
        bpm=tempo,
        trim=False,
    )
    coarse = librosa.frames_to_time(frames - len(pad), sr=sample_rate, hop_length=_HOP)
    beats = _refine(coarse, attack, sample_rate, 60.0 / tempo)
    bars = _bars(beats, _low_band(y, sample_rate), sample_rate, beats_per_bar)
    # tuning=0: estimating the tuning costs several spectrogram-sized arrays, and a shift of
    # every pitch class alike does not change where the harmony changes.
    chroma = librosa.feature.chroma_stft(S=power, sr=sample_rate, n_fft=_N_FFT, tuning=0.0)
    del power
    sections = _sections(log_mel, chroma, sample_rate, beats, bars, beats_per_bar)
    return Timeline(round(tempo, 3), beats, bars, sections, duration, beats_per_bar)


def warm() -> Timeline:
    """Compile and load librosa's kernels now (a worker calls this at start-up).

    The first analysis in a process spends seconds importing librosa's modules and compiling
    its numba beat tracker; a task must not. Returns the warm-up song's timeline (a check).
    """
    from mvpipe.media.audio import decode_mono
    from mvpipe.media.synth import synthesize_song

    song = synthesize_song(seconds=6.0, bpm=120.0, sample_rate=22050, sections=1)
    return analyse(decode_mono(song.wav, 22050), 22050)


def _attack_envelope(y: NDArray[np.float32]) -> NDArray[np.float64]:
    """Rise of short-window energy: where attacks start, to a few milliseconds."""
    usable = len(y) - len(y) % _FINE_HOP
    blocks = (y[:usable].astype(np.float64) ** 2).reshape(-1, _FINE_HOP).sum(axis=1)
    per_frame = _FINE_FRAME // _FINE_HOP
    energy = np.convolve(blocks, np.ones(per_frame), mode="full")[: len(blocks)]
    rise = np.diff(np.sqrt(energy), prepend=0.0)
    return np.maximum(rise, 0.0)


def _low_band(y: NDArray[np.float32], sample_rate: int) -> NDArray[np.float64]:
    """Everything below ~150 Hz: kicks, which mark bar lines."""
    from scipy.signal import butter, sosfiltfilt

    sos = butter(4, 150.0, btype="lowpass", fs=sample_rate, output="sos")
    return np.asarray(sosfiltfilt(sos, y.astype(np.float64)))


def _comb_score(envelope: NDArray[np.float64], period_frames: float) -> float:
    """Mean onset strength on the best-phased beat grid of this period."""
    best = 0.0
    count = int((len(envelope) - 1) // period_frames)
    if count < 2:
        return 0.0
    for phase in range(math.ceil(period_frames)):
        idx = np.round(phase + np.arange(count) * period_frames).astype(int)
        idx = idx[idx < len(envelope)]
        best = max(best, float(envelope[idx].mean()))
    return best


def _pool(values: NDArray[np.float64], size: int) -> NDArray[np.float64]:
    """Max over consecutive groups of `size`: the fine attack envelope on librosa's frame grid."""
    usable = len(values) - len(values) % size
    return values[:usable].reshape(-1, size).max(axis=1)


def _choose_tempo(
    envelope: NDArray[np.float64], attack: NDArray[np.float64], sample_rate: int
) -> float | None:
    """librosa's tempo estimate, moved to the octave whose every beat carries a strong attack.

    The comb runs on attack energy, not on librosa's (log, perceptual) onset strength: quiet
    hi-hats between the beats score high there and would double the tempo.
    """
    import librosa

    if float(envelope.max()) <= 0 or float(attack.max()) <= 0:
        return None
    # Smear by one frame so a grid a frame off its peaks still scores them.
    smooth = np.maximum(attack, np.maximum(np.roll(attack, 1), np.roll(attack, -1)))
    # The tempogram costs ~30 KB per frame: estimate on at most a minute from the middle of the
    # song (the comb below then fine-tunes on all of it).
    span = round(_TEMPO_SPAN_SECONDS * sample_rate / _HOP)
    middle = max(0, (len(envelope) - span) // 2)
    estimate = float(
        librosa.feature.tempo(
            onset_envelope=envelope[middle : middle + span],
            sr=sample_rate,
            hop_length=_HOP,
            ac_size=4.0,
        )[0]
    )
    fps = sample_rate / _HOP
    candidates = []
    for factor in (0.25, 1 / 3, 0.5, 2 / 3, 1.0, 1.5, 2.0, 3.0, 4.0):
        bpm = estimate * factor
        if _MIN_BPM <= bpm <= _MAX_BPM:
            # Fine-tune each candidate: librosa's tempo bins are a few percent apart.
            grid = bpm * np.linspace(0.97, 1.03, 25)
            scores = [_comb_score(smooth, 60.0 * fps / g) for g in grid]
            best = int(np.argmax(scores))
            candidates.append((float(grid[best]), scores[best]))
    if not candidates:
        return float(np.clip(estimate, _MIN_BPM, _MAX_BPM))
    top = max(score for _, score in candidates)
    # The fastest tempo that keeps (almost) the strongest grid: every beat is a real onset.
    return max(bpm for bpm, score in candidates if score >= 0.8 * top)


def _refine(
    coarse: NDArray[np.float64], attack: NDArray[np.float64], sample_rate: int, period: float
) -> list[float]:
    """Move each tracked beat to the strongest attack within a sixth of a beat of it.

    A beat with no attack near it stays where librosa put it (a quiet bar still has beats),
    except before the first and after the last attack: silence has no beats.
    """
    step = _FINE_HOP / sample_rate
    reach = max(1, int(period / 6 / step))
    peaks: list[tuple[float, float]] = []  # (where, how strong) of the attack nearest each beat
    for time in coarse:
        centre = round(time / step)
        lo, hi = max(0, centre - reach), min(len(attack), centre + reach + 1)
        if hi <= lo:
            peaks.append((float(time), 0.0))
            continue
        peak = lo + int(np.argmax(attack[lo:hi]))
        peaks.append((peak * step, float(attack[peak])))
    # A real beat's attack is comparable to the typical beat's; a stray sound is not.
    floor = 0.25 * float(np.median([strength for _, strength in peaks])) if peaks else 0.0
    moved: list[tuple[float, bool]] = []
    for time, (where, strength) in zip(coarse, peaks, strict=True):
        supported = strength > floor
        beat = where if supported else float(time)
        if not moved or beat - moved[-1][0] > period / 2:
            moved.append((beat, supported))
    flags = [supported for _, supported in moved]
    if True not in flags:
        return []
    first, last = flags.index(True), len(flags) - 1 - flags[::-1].index(True)
    return [round(beat, 6) for beat, _ in moved[first : last + 1]]


def _bars(
    beats: list[float], low: NDArray[np.float64], sample_rate: int, beats_per_bar: int
) -> list[float]:
    """The beats of the phase whose low-band hits carry the most energy: the downbeats."""
    if not beats:
        return []
    span = round(0.08 * sample_rate)  # a kick's body; shorter than any beat up to 200 BPM
    strength = []
    for time in beats:
        first = round(time * sample_rate)
        strength.append(float(np.sum(low[first : first + span] ** 2)))
    scores = [
        float(np.mean(strength[phase::beats_per_bar]))
        for phase in range(min(beats_per_bar, len(beats)))
    ]
    phase = int(np.argmax(scores))
    return beats[phase::beats_per_bar]


def _sections(
    log_mel: NDArray[np.floating[Any]],
    chroma: NDArray[np.floating[Any]],
    sample_rate: int,
    beats: list[float],
    bars: list[float],
    beats_per_bar: int,
) -> list[Section]:
    """Section starts: peaks of the change in sound between the two bars before and after a beat."""
    import librosa

    window = 2 * beats_per_bar
    if len(beats) < 2 * window + 1:
        return [Section(0.0, "A")]
    # Row i of each feature block is the mean over beat i .. beat i + 1 (the last to the end).
    frames = librosa.time_to_frames(beats, sr=sample_rate, hop_length=_HOP)
    bounds = [*np.minimum(frames, log_mel.shape[1] - 1).tolist(), log_mel.shape[1]]
    mfcc = librosa.feature.mfcc(S=log_mel, sr=sample_rate, n_mfcc=13)
    features = [
        librosa.util.sync(block, bounds, aggregate=np.mean, pad=False).T
        for block in (mfcc[1:], chroma)
    ]
    novelty = np.zeros(len(beats))
    for i in range(window, len(beats) - window + 1):
        novelty[i] = sum(
            _distance(block[i - window : i].mean(axis=0), block[i : i + window].mean(axis=0))
            for block in features
        ) / len(features)
    top = float(novelty.max())
    threshold = max(_NOVELTY_FLOOR, 0.5 * top)
    starts = [0]
    for i in range(window, len(beats) - window + 1):
        local = novelty[max(0, i - window) : i + window + 1]
        if novelty[i] >= threshold and novelty[i] == local.max() and i - starts[-1] >= window:
            starts.append(i)
    times = [0.0] + [_snap_to_bar(beats[i], bars, beats) for i in starts[1:]]
    return _label(times, starts, features, beats)


def _distance(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    """Cosine distance, 0 for identical directions, 1 for orthogonal."""
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return 0.0 if norm == 0 else 1.0 - float(np.dot(a, b)) / norm


def _snap_to_bar(time: float, bars: list[float], beats: list[float]) -> float:
    """A section change a beat off a bar line is on the bar line: songs change there."""
    period = float(np.median(np.diff(beats)))
    nearest = min(bars, key=lambda bar: abs(bar - time))
    return nearest if abs(nearest - time) <= 1.01 * period else time


def _label(
    times: list[float], starts: list[int], features: list[NDArray[np.float64]], beats: list[float]
) -> list[Section]:
    """Letters by likeness: a section that sounds like an earlier one takes its letter."""
    ends = [*starts[1:], len(beats)]
    means = [
        [block[s:e].mean(axis=0) for block in features] for s, e in zip(starts, ends, strict=True)
    ]
    labels: list[str] = []
    for index, mean in enumerate(means):
        label = None
        for earlier in range(index):
            gap = sum(_distance(a, b) for a, b in zip(mean, means[earlier], strict=True))
            if gap / len(mean) < _NOVELTY_FLOOR:
                label = labels[earlier]
                break
        if label is None:
            kinds = len(set(labels))
            label = chr(ord("A") + kinds) if kinds < 26 else f"S{kinds + 1}"
        labels.append(label)
    return [Section(round(t, 6), label) for t, label in zip(times, labels, strict=True)]
