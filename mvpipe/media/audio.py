"""Audio in and out: decode any song PyAV can read to mono float samples; write PCM WAV.

Decoding goes through PyAV (FFmpeg) rather than librosa.load/audioread, so one decoder serves
every format a user may upload and no extra system library is needed.
"""

from __future__ import annotations

import io
import wave
from collections.abc import Iterable, Iterator
from pathlib import Path

import av
import numpy as np
from numpy.typing import NDArray

from mvpipe.errors import InvalidInput
from mvpipe.media.untrusted import open_untrusted

Samples = NDArray[np.float32]


def decode_mono(source: Path | str | bytes, sample_rate: int = 22050) -> Samples:
    """Every audio sample of `source` (path or bytes), mixed down to mono at `sample_rate`.

    Analysis needs one channel at a fixed rate whatever the upload was; resampling in FFmpeg
    keeps it fast and the same for every format.
    """
    if sample_rate <= 0:
        raise InvalidInput(f"sample rate must be positive, got {sample_rate}")
    opened = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    chunks: list[Samples] = []
    try:
        with open_untrusted(opened) as container:
            if not container.streams.audio:
                raise InvalidInput("the file has no audio stream")
            stream = container.streams.audio[0]
            # Packed float, channels kept: the mean of the channels is the mono mix. FFmpeg's
            # own downmix adds channels at -3 dB each, which makes stereo louder than mono.
            for out in resampled(container.decode(stream), "flt", None, sample_rate):
                chunks.append(interleaved(out).mean(axis=1, dtype=np.float32))
    except InvalidInput:
        raise
    except (av.FFmpegError, ValueError) as exc:
        raise InvalidInput(f"the audio could not be decoded: {exc}") from exc
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks)


def resampled(
    frames: Iterable[av.AudioFrame], fmt: str, layout: str | None, rate: int
) -> Iterator[av.AudioFrame]:
    """`frames` converted to `fmt`, `layout` (None: each frame's own) and `rate`, flushed.

    A song may change its rate or channels midway (two files glued together), and one
    AudioResampler refuses the first frame that differs from its first: the old one is flushed
    and a new one made whenever the input changes."""
    resampler: av.AudioResampler | None = None
    setup: tuple[str, str, int] | None = None
    for frame in frames:
        this = (frame.format.name, frame.layout.name, frame.sample_rate)
        if resampler is None or this != setup:
            if resampler is not None:
                yield from resampler.resample(None)
            resampler, setup = av.AudioResampler(format=fmt, layout=layout, rate=rate), this
        yield from resampler.resample(frame)
    if resampler is not None:
        yield from resampler.resample(None)


def interleaved(frame: av.AudioFrame) -> Samples:
    """A packed float ("flt") frame's samples, one row a sample, one column a channel.

    Audio frames are read packed only (one plane): PyAV counts a planar frame's planes by
    walking its plane pointers to a null one, and with 8 or more channels (a 7.1 song) there is
    none, so it reads past them and crashes the process."""
    if frame.format.name != "flt":
        raise ValueError(f"expected a packed float frame, got {frame.format.name!r}")
    samples = np.asarray(frame.to_ndarray(), dtype=np.float32)  # already float32: no copy
    return samples.reshape(-1, len(frame.layout.channels))


def slice_audio(samples: Samples, sample_rate: int, start: float, end: float) -> Samples:
    """The samples between `start` and `end` seconds (clamped to the song): a slot's audio."""
    if not (0 <= start <= end) or sample_rate <= 0:
        raise InvalidInput(f"bad audio slice {start}..{end} at {sample_rate} Hz")
    first = min(len(samples), round(start * sample_rate))
    last = min(len(samples), round(end * sample_rate))
    return samples[first:last]


def to_wav(samples: Samples, sample_rate: int) -> bytes:
    """16-bit mono PCM WAV: the one format every decoder and provider accepts."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


def wav_size(seconds: float, sample_rate: int) -> int:
    """The bytes `to_wav` makes of `seconds` of samples (a 44-byte header, 2 bytes a sample):
    a song's size known before it is made."""
    return 44 + 2 * round(seconds * sample_rate)


def slot_wav(song: bytes, start: float, end: float, sample_rate: int = 22050) -> bytes:
    """The song between `start` and `end` seconds as mono PCM WAV: what a lip-sync model hears
    for one scene's slot (a slot past the song's end is cut at the end)."""
    return to_wav(slice_audio(decode_mono(song, sample_rate), sample_rate, start, end), sample_rate)
