"""Songs: decode an uploaded audio file completely and measure it before anything is stored.

The header's duration is a claim, not a fact: a truncated upload often keeps a header that promises
the whole song. So every packet is decoded, the decoded samples are counted, and a file whose
decoded length falls short of what its header declares is refused as truncated. Two containers
hide a cut from the demuxer (a WAV decodes cleanly up to the cut; an Ogg file's length is read
from its last page), so their framing is checked too: the RIFF size, the end-of-stream page.

Some files declare no length at all: raw AAC (ADTS), and an MP3 without a Xing/Info/VBRI frame
count. FFmpeg then guesses one from the first frames' bitrate, which for variable-bitrate audio
may be off by half; such a guess is no declaration, and the decoded samples alone decide.
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
from mvpipe.media.untrusted import decoder, open_untrusted
from mvpipe.models import SongFormat

#: FFmpeg demuxer names → the extension a song's key gets. The MP4 family is stored as m4a.
_FORMATS: dict[str, SongFormat] = {
    "wav": "wav",
    "mp3": "mp3",
    "aac": "aac",  # raw AAC in ADTS frames (.aac)
    "mov,mp4,m4a,3gp,3g2,mj2": "m4a",
    "flac": "flac",
    "ogg": "ogg",
}
#: How far decoded audio may fall short of the header's length before it counts as truncated:
#: the header may count codec priming (Opus: 6.5 ms) that decoding drops.
_TRUNCATION_SLACK_SECONDS = 0.03
#: The most channels a song may have: FFmpeg's resampler (analysis, lip-sync audio, the AAC
#: encoding) mixes no more, so a song with more would pass intake and fail every analysis.
MAX_SONG_CHANNELS = 64
#: The lowest sample rate a song may have (telephone audio's): below it a handful of samples
#: pass for seconds of song (6 at 1 Hz for 6 s), and planning then finds too few to analyse.
MIN_SONG_SAMPLE_RATE = 8000


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
                f"(expected WAV, MP3, M4A, raw AAC, FLAC or OGG)"
            )
        if not container.streams.audio:
            raise InvalidInput("song has no audio stream (a video-only file?)")
        stream = container.streams.audio[0]
        declared = _declared_seconds(container, stream, ext, data)
        try:
            decoded, sample_rate, channels = _decode_all(container, stream, max_seconds)
        except InvalidInput:
            raise  # named already: no decoder for the codec, too many channels, too low a rate
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
    # The header may only shorten what was decoded (an edit list trimming codec padding). An
    # MP3's frame count trims nothing (FFmpeg drops the encoder's delay and padding as it
    # decodes): audio past it is more song (files glued together).
    seconds = decoded if declared is None or ext == "mp3" else min(decoded, declared)
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
    context = decoder(stream, "song")
    sample_rate = _check_rate(context.sample_rate or 0)
    channels = context.channels or 0
    for packet in container.demux(stream):
        for frame in packet.decode():
            if frame.sample_rate != sample_rate:
                earlier += count / sample_rate if sample_rate else 0.0
                count, sample_rate = 0, _check_rate(frame.sample_rate)
            channels = len(frame.layout.channels)
            if channels > MAX_SONG_CHANNELS:
                raise InvalidInput(
                    f"song has {channels} audio channels, at most {MAX_SONG_CHANNELS} are mixed"
                )
            count += frame.samples
        if sample_rate and earlier + count / sample_rate > max_seconds:
            break
    return earlier + (count / sample_rate if sample_rate else 0.0), sample_rate, channels


def _check_rate(sample_rate: int) -> int:
    """`sample_rate` (0: not known yet) unless it is below `MIN_SONG_SAMPLE_RATE`."""
    if 0 < sample_rate < MIN_SONG_SAMPLE_RATE:
        raise InvalidInput(
            f"song's sample rate is {sample_rate} Hz, at least {MIN_SONG_SAMPLE_RATE} Hz is needed"
        )
    return sample_rate


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


def _declared_seconds(container: Any, stream: Any, ext: SongFormat, data: bytes) -> float | None:
    """What the header says the audio lasts, if it says anything (a bitrate guess says nothing)."""
    if stream.duration is not None and stream.time_base is not None:
        seconds: float | None = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / av.time_base
    else:
        seconds = None
    if ext == "aac" or seconds is None:
        return None  # ADTS has no length field: FFmpeg's is always a guess
    if ext == "mp3":
        counted = mp3_header_seconds(data)
        # FFmpeg uses the header's frame count (less the encoder's delay and padding, under two
        # frames) unless it distrusts it (a file much longer than the header says: glued songs).
        if counted is None or abs(counted - seconds) > _MP3_HEADER_SLACK_SECONDS:
            return None
    return seconds


#: MPEG audio sample rates by version bits (3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5) and rate index.
_MPEG_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
#: How far FFmpeg's length may be from the header's frame count times the frame's samples:
#: the encoder's delay and padding (LAME's: under 2,300 samples, 0.29 s at 8 kHz).
_MP3_HEADER_SLACK_SECONDS = 0.3


def mp3_header_seconds(data: bytes) -> float | None:
    """The length an MP3's first frame declares in a Xing/Info or VBRI header's frame count;
    None without one (then nothing in the file declares a length)."""
    start = _after_id3v2(data)
    header = data[start : start + 4]
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return None
    version, layer = (header[1] >> 3) & 3, (header[1] >> 1) & 3
    rate_index, mono = (header[2] >> 2) & 3, header[3] >> 6 == 3
    if version == 1 or layer != 1 or rate_index == 3:  # reserved values, or not Layer III
        return None
    rate = _MPEG_RATES[version][rate_index]
    samples_per_frame = 1152 if version == 3 else 576
    side_info = (17 if mono else 32) if version == 3 else (9 if mono else 17)
    xing = start + 4 + side_info
    frames: int | None = None
    if data[xing : xing + 4] in (b"Xing", b"Info"):
        flags = int.from_bytes(data[xing + 4 : xing + 8], "big")
        if flags & 1:  # the frame count is present
            frames = int.from_bytes(data[xing + 8 : xing + 12], "big")
    elif data[start + 36 : start + 40] == b"VBRI":
        frames = int.from_bytes(data[start + 50 : start + 54], "big")
    return None if not frames else frames * samples_per_frame / rate


def _after_id3v2(data: bytes) -> int:
    """Where the audio starts after any ID3v2 tags (their size is four 7-bit bytes)."""
    offset = 0
    while data[offset : offset + 3] == b"ID3" and len(data) >= offset + 10:
        size = 0
        for byte in data[offset + 6 : offset + 10]:
            size = size << 7 | byte & 0x7F
        footer = 10 if data[offset + 5] & 0x10 else 0
        offset += 10 + size + footer
    return offset


def _too_large(size: int, max_bytes: int) -> str:
    return f"song is too large: {size:,} bytes, at most {max_bytes:,}"


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or type(exc).__name__
