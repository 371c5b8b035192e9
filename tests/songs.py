"""Tiny songs made in the tests: a tone with clicks, encoded by PyAV into a real container."""

from __future__ import annotations

import io
import struct
import wave
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

#: (container format, codec, sample format, sample rate) for each song format mvpipe accepts.
ENCODINGS = {
    "wav": ("wav", "pcm_s16le", "s16", 16000),
    "mp3": ("mp3", "libmp3lame", "fltp", 22050),
    "m4a": ("ipod", "aac", "fltp", 22050),
    # Raw AAC decodes with the encoder's priming (1024 samples): 48 kHz keeps it within a frame.
    "aac": ("adts", "aac", "fltp", 48000),
    "flac": ("flac", "flac", "s16", 16000),
    "ogg-vorbis": ("ogg", "vorbis", "fltp", 22050),
    "ogg-opus": ("ogg", "libopus", "flt", 24000),
}


@dataclass(frozen=True)
class Encoded:
    data: bytes
    seconds: float  #: the exact length of the audio that went in
    sample_rate: int
    channels: int


def make_song(
    kind: str,
    seconds: float,
    *,
    channels: int = 2,
    rate: int | None = None,
    options: dict[str, str] | None = None,
    start: float = 0.0,
) -> Encoded:
    """Encode `seconds` of a 440 Hz tone with a click each half second as `kind` (ENCODINGS),
    at its rate unless `rate` is given; `options` go to the muxer. The first sample is stamped
    `start` seconds (audio copied out of a video often starts late)."""
    container_format, codec, sample_format, default_rate = ENCODINGS[kind]
    rate = rate or default_rate
    total = round(seconds * rate)
    t = np.arange(total) / rate
    sound = 0.3 * np.sin(2 * np.pi * 440 * t)
    sound[(np.arange(total) % (rate // 2)) < 40] = 0.9
    planes = np.repeat(sound[None, :], channels, axis=0)
    first = round(start * rate)
    return _encode(planes, container_format, codec, sample_format, rate, options or {}, first=first)


def make_uneven_song(kind: str, seconds: float, *, loud_first: bool) -> Encoded:
    """A song that declares no length and whose bitrate changes halfway: `kind` "mp3" is a VBR
    MP3 without a Xing/Info header, "aac" raw AAC (ADTS). Half is loud noise, half a quiet tone,
    so a length guessed from the first frames' bitrate is far off (too short when the loud half
    comes first, too long when it comes last)."""
    rate = 44100 if kind == "mp3" else 48000
    half = round(seconds * rate / 2)
    loud = np.clip(0.8 * np.random.default_rng(7).standard_normal(half), -1, 1)
    quiet = 0.001 * np.sin(2 * np.pi * 440 * np.arange(half) / rate)
    planes = np.concatenate([loud, quiet] if loud_first else [quiet, loud])[None, :]
    if kind == "mp3":
        options = {"write_xing": "0"}
        return _encode(planes, "mp3", "libmp3lame", "fltp", rate, options, vbr=True)
    return _encode(planes, "adts", "aac", "fltp", rate, {})


def make_glued_mp3(rate: int, channels: int, tail: float = 6.0) -> Encoded:
    """6 s of 44.1 kHz stereo MP3 (its Info header counting its own frames) followed by `tail`
    seconds at `rate` with `channels`, as `cat a.mp3 b.mp3` makes (the second without its ID3
    tag or header): the rate or the channels may change midway."""
    first = make_song("mp3", 6.0, rate=44100)
    options = {"id3v2_version": "0", "write_xing": "0"}
    second = make_song("mp3", tail, rate=rate, channels=channels, options=options)
    return Encoded(first.data + second.data, 6.0 + tail, rate, channels)


def _encode(
    planes: np.ndarray,
    container_format: str,
    codec: str,
    sample_format: str,
    rate: int,
    options: dict[str, str],
    *,
    vbr: bool = False,
    first: int = 0,
) -> Encoded:
    """`planes` (channels x samples, float) encoded into `container_format`, the first sample
    stamped `first`."""
    planes = planes.astype(np.float32)
    channels, total = planes.shape
    out = io.BytesIO()
    layout = "stereo" if channels == 2 else "mono"
    with av.open(out, mode="w", format=container_format, options=options) as container:
        # FFmpeg's own Vorbis encoder is flagged experimental; it is the one PyAV bundles.
        codec_options = {"strict": "experimental"} if codec == "vorbis" else {}
        stream: Any = container.add_stream(codec, rate=rate, layout=layout, options=codec_options)
        stream.format = sample_format
        if vbr:  # LAME's -V2: each frame's bitrate follows the sound
            stream.codec_context.qscale = True
            stream.codec_context.global_quality = 2
        chunk = 1024
        for start in range(0, total, chunk):
            block = planes[:, start : start + chunk]
            frame = _frame(block, sample_format, layout, rate)
            frame.pts = first + start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return Encoded(out.getvalue(), total / rate, rate, channels)


def make_wav(
    seconds: float, *, channels: int = 1, rate: int = 8000, tag: int = 1, bits: int = 16
) -> bytes:
    """A 16-bit PCM WAV of a 440 Hz tone in every channel, written by the `wave` module; `tag`
    and `bits` then rewrite its format chunk's format tag and bits per sample (1 and 16: PCM)."""
    t = np.arange(round(seconds * rate)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as written:
        written.setnchannels(channels)
        written.setsampwidth(2)
        written.setframerate(rate)
        written.writeframes(np.repeat(tone, channels).tobytes())
    data = bytearray(out.getvalue())
    assert data[12:16] == b"fmt "  # the format chunk: tag at 20, bits per sample at 34
    struct.pack_into("<H", data, 20, tag)
    struct.pack_into("<H", data, 34, bits)
    return bytes(data)


def with_latin1_title(wav: bytes, title: str = "Café!") -> bytes:
    """`wav` with a LIST/INFO chunk whose title (INAM) is Latin-1, as many Windows tools write
    it: bytes that are not UTF-8. The RIFF size is rewritten to match."""
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
    name = title.encode("latin-1") + b"\0"
    info = b"INFO" + _chunk(b"INAM", name)
    body = wav[12:] + _chunk(b"LIST", info)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body


def _chunk(tag: bytes, body: bytes) -> bytes:
    """A RIFF chunk: tag, little-endian size, body, padded to an even length."""
    return tag + struct.pack("<I", len(body)) + body + b"\0" * (len(body) % 2)


def make_video_only(seconds: float = 6.0) -> bytes:
    """An MP4 with a video stream and no audio stream."""
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for n in range(round(seconds * 12)):
            image = np.full((48, 64, 3), (n * 9) % 255, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def _frame(block: np.ndarray, sample_format: str, layout: str, rate: int) -> av.AudioFrame:
    if sample_format == "s16":
        interleaved = (block.T.reshape(1, -1) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(interleaved, format="s16", layout=layout)
    elif sample_format == "flt":
        frame = av.AudioFrame.from_ndarray(block.T.reshape(1, -1), format="flt", layout=layout)
    else:
        frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=layout)
    frame.sample_rate = rate
    return frame
