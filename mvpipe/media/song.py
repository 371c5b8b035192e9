"""Songs: decode an uploaded audio file completely and measure it before anything is stored.

The header's duration is a claim, not a fact: a truncated upload often keeps a header that promises
the whole song. So every packet is decoded, the decoded samples are counted, and a file whose
decoded length falls short of what its header declares is refused as truncated. Two containers
hide a cut from the demuxer (a WAV decodes cleanly up to the cut; an Ogg file's length is read
from its last page), so their framing is checked too: the RIFF size, the end-of-stream page.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

from mvpipe.errors import InvalidInput
from mvpipe.media.files import read_bounded
from mvpipe.media.untrusted import open_untrusted
from mvpipe.models import SongFormat

#: FFmpeg demuxer names → the extension a song's key gets. The MP4 family is stored as m4a.
_FORMATS: dict[str, SongFormat] = {
    "wav": "wav",
    "mp3": "mp3",
    "mov,mp4,m4a,3gp,3g2,mj2": "m4a",
    "flac": "flac",
    "ogg": "ogg",
}
#: How far decoded audio may fall short of the header's length before it counts as truncated:
#: the header may count codec priming (Opus: 6.5 ms) that decoding drops.
_TRUNCATION_SLACK_SECONDS = 0.03


@dataclass(frozen=True)
class SongInfo:
    """What decoding measured. `seconds` is the decoded length; a header may only shorten it
    (an MP4 edit list trimming the encoder's padding), never lengthen it."""

    ext: SongFormat
    seconds: float
    sample_rate: int
    channels: int
    sha256: str


def read_song(source: str | Path | bytes | bytearray, *, max_bytes: int) -> bytes:
    """The song's bytes from a path or bytes; a file is read no further than its limit."""
    if isinstance(source, bytes | bytearray):
        return bytes(source)
    if not isinstance(source, str | Path):
        raise InvalidInput(f"song must be a path or bytes, not {type(source).__name__}")
    return read_bounded(Path(source), max_bytes, "song")


def check_song_size(size: int, max_bytes: int) -> None:
    """A song of `size` bytes within the limit (MVPIPE_SONG_MAX_BYTES)."""
    if size > max_bytes:
        raise InvalidInput(_too_large(size, max_bytes))


def probe_song(data: bytes, *, min_seconds: float, max_seconds: float, max_bytes: int) -> SongInfo:
    """Decode the whole song and check it; `InvalidInput` names what is wrong."""
    if not data:
        raise InvalidInput("song is empty")
    check_song_size(len(data), max_bytes)
    try:
        container = open_untrusted(io.BytesIO(data))
    except (av.FFmpegError, ValueError) as exc:  # ValueError: what PyAV could not decode
        raise InvalidInput(
            f"song is not a readable audio file: corrupt, truncated or not audio ({_reason(exc)})"
        ) from None
    with container:
        ext = _FORMATS.get(container.format.name)
        if ext is None:
            raise InvalidInput(
                f"song format {container.format.name!r} is not supported "
                f"(expected WAV, MP3, M4A/AAC, FLAC or OGG)"
            )
        if not container.streams.audio:
            raise InvalidInput("song has no audio stream (a video-only file?)")
        stream = container.streams.audio[0]
        declared = _declared_seconds(container, stream)
        try:
            decoded, sample_rate, channels = _decode_all(container, stream, max_seconds)
        except (av.FFmpegError, ValueError) as exc:
            raise InvalidInput(f"song is corrupt or truncated ({_reason(exc)})") from None
    if ext == "wav":
        _check_wav_size(data)
    elif ext == "ogg":
        _check_ogg_end(data)
    if decoded <= 0:
        raise InvalidInput("song decodes to no audio (corrupt or truncated)")
    if decoded > max_seconds:
        raise InvalidInput(f"song is too long: more than {max_seconds:g} s")
    if declared is not None and decoded < declared - _TRUNCATION_SLACK_SECONDS:
        raise InvalidInput(
            f"song is truncated: decodes to {decoded:.2f} s of the {declared:.2f} s it declares"
        )
    # The header may only shorten what was decoded (an edit list trimming codec padding).
    seconds = decoded if declared is None else min(decoded, declared)
    if seconds < min_seconds:
        raise InvalidInput(f"song is too short: {seconds:.2f} s, at least {min_seconds:g} s")
    return SongInfo(
        ext=ext,
        seconds=seconds,
        sample_rate=sample_rate,
        channels=channels,
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _decode_all(container: Any, stream: Any, max_seconds: float) -> tuple[float, int, int]:
    """Decode every packet; stops early once the song is certainly too long.

    Samples are counted as integers per sample rate, so a long song's length does not drift."""
    earlier = 0.0  # seconds decoded at sample rates the stream has since left
    count = 0  # samples decoded at the current rate
    sample_rate = stream.codec_context.sample_rate or 0
    channels = stream.codec_context.channels or 0
    for packet in container.demux(stream):
        for frame in packet.decode():
            if frame.sample_rate != sample_rate:
                earlier += count / sample_rate if sample_rate else 0.0
                count, sample_rate = 0, frame.sample_rate
            channels = len(frame.layout.channels)
            count += frame.samples
        if sample_rate and earlier + count / sample_rate > max_seconds:
            break
    return earlier + (count / sample_rate if sample_rate else 0.0), sample_rate, channels


def _check_wav_size(data: bytes) -> None:
    """A cut-off WAV decodes cleanly up to the cut, so only its RIFF size tells it was cut."""
    riff_size = int.from_bytes(data[4:8], "little")
    # 0 and 0xFFFFFFFF mean "unknown" (written by a streaming encoder): nothing to compare.
    if riff_size not in (0, 0xFFFFFFFF) and riff_size + 8 > len(data):
        raise InvalidInput(
            f"song is truncated: the WAV header declares {riff_size + 8:,} bytes, "
            f"the file has {len(data):,}"
        )


def _check_ogg_end(data: bytes) -> None:
    """An Ogg stream's length comes from its last page, so a cut-off file looks whole to the
    demuxer; a complete stream ends with a whole page flagged end-of-stream."""
    offset, flags = 0, 0
    while offset < len(data):
        if data[offset : offset + 4] != b"OggS" or offset + 27 > len(data):
            raise InvalidInput("song is truncated or corrupt: a broken Ogg page")
        segments = data[offset + 26]
        lacing = data[offset + 27 : offset + 27 + segments]
        end = offset + 27 + segments + sum(lacing)
        if len(lacing) < segments or end > len(data):
            raise InvalidInput("song is truncated: its last Ogg page is cut off")
        flags, offset = data[offset + 5], end
    if not flags & 0x04:
        raise InvalidInput("song is truncated: the Ogg stream has no end-of-stream page")


def _declared_seconds(container: Any, stream: Any) -> float | None:
    """What the header says the audio lasts, if it says anything."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _too_large(size: int, max_bytes: int) -> str:
    return f"song is too large: {size:,} bytes, at most {max_bytes:,}"


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or type(exc).__name__
