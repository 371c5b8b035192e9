"""Assembly: the cut clips joined into the final video, with the song as AAC.

Every cut was encoded with the same parameters (`mvpipe.media.encoding`), so joining them is a
remux: their packets are copied in order under new, consecutive timestamps, never re-encoded.
Only the song is encoded (to AAC). The result is cut to the song's length and written with its
index first (`+faststart`), so players start before the download ends.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.audio.stream import AudioStream
from av.container import OutputContainer
from av.packet import Packet
from av.video.stream import VideoStream

from mvpipe.errors import InvalidInput
from mvpipe.media.audio import interleaved, resampled
from mvpipe.media.encoding import PIX_FMT, OutputFormat, add_video_stream, video_codec_matches
from mvpipe.media.files import written_atomically
from mvpipe.media.untrusted import open_untrusted

_AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
_AAC_BITRATE = 192_000
# FFmpeg's "fast" coder without the costly stereo/noise/temporal searches: about 3x real time
# faster than its defaults on 2 cores, and at 192 kb/s still clean for a music video.
_AAC_OPTIONS = {"aac_coder": "fast", "aac_pns": "0", "aac_is": "0", "aac_ms": "0", "aac_tns": "0"}


@dataclass(frozen=True)
class AssemblyReport:
    """What went into the final video: frames kept, seconds of picture and sound."""

    frames: int
    video_seconds: float
    audio_seconds: float | None
    clips: int
    dropped_frames: int  #: frames of the last clips past the song's end, not copied


def inputs_hash(song_key: str | None, clip_keys: Sequence[str], fmt: OutputFormat) -> str:
    """The final video's content key: same song, same clips in the same order, same format."""
    if not clip_keys or not all(isinstance(k, str) and k for k in clip_keys):
        raise InvalidInput("a final video needs at least one clip key")
    payload = json.dumps(
        {"song": song_key, "clips": list(clip_keys), "format": fmt.as_key()},
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def assemble(
    clips: Sequence[Path],
    dst: Path,
    *,
    fmt: OutputFormat,
    song: Path | None,
    song_seconds: float | None,
) -> AssemblyReport:
    """Join `clips` (cuts in `fmt`) into `dst`; with a song, mux it as AAC and cut to its length.

    Without `song_seconds` the song's own duration is used. Without a song the video is the
    clips in order, silent. Raises InvalidInput when a clip was not cut in `fmt`, or the clips
    are shorter than the song by more than a frame; `dst` appears whole or not at all.
    """
    if not clips:
        raise InvalidInput("nothing to assemble: no clips")
    if song_seconds is not None and not (0 < song_seconds < 24 * 3600):
        raise InvalidInput(f"song length must be positive, got {song_seconds}")
    headers = [_check_clip(Path(c), fmt) for c in clips]
    if any(h != headers[0] for h in headers):
        raise InvalidInput("the clips were encoded with different stream headers")
    target: int | None = None
    if song is not None:
        seconds = song_seconds if song_seconds is not None else _duration(Path(song))
        target = round(seconds * fmt.fps)
    with written_atomically(Path(dst)) as tmp:
        with av.open(str(tmp), mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
            with open_untrusted(clips[0]) as first:
                video = out.add_stream_from_template(first.streams.video[0])
            if not isinstance(video, VideoStream):  # pragma: no cover - checked above
                raise InvalidInput("the first clip has no video stream")
            counted: list[int] = [0, 0]  # frames written, frames dropped
            packets = _video_packets(clips, video, fmt, target, counted)
            heard: list[Fraction] = [Fraction(0)]  # seconds of sound written
            if song is not None and target is not None:
                sound = _song_packets(out, Path(song), Fraction(target, fmt.fps), heard)
                packets = heapq.merge(packets, sound, key=lambda p: p[0])
            for _, packet in packets:
                out.mux(packet)
        written, dropped = counted
        if target is not None and written < target - 1:
            raise InvalidInput(
                f"the clips hold {written} frames, the song needs {target} (at {fmt.fps} fps)"
            )
    return AssemblyReport(
        frames=written,
        video_seconds=written / fmt.fps,
        audio_seconds=float(heard[0]) if song is not None else None,
        clips=len(clips),
        dropped_frames=dropped,
    )


def encode_song(song: Path, dst: Path, *, seconds: float | None = None) -> float:
    """The song as AAC in an MP4 audio file, made once per song; returns its length in seconds.

    `assemble` copies an AAC song's packets as they are, so a song encoded here once (beside
    the original) costs nothing per final video, however often scenes are regenerated.
    """
    if seconds is not None and not (0 < seconds < 24 * 3600):
        raise InvalidInput(f"song length must be positive, got {seconds}")
    heard: list[Fraction] = [Fraction(0)]
    limit = Fraction(seconds) if seconds is not None else None
    with (
        written_atomically(Path(dst)) as tmp,
        av.open(str(tmp), mode="w", format="mp4", options={"movflags": "+faststart"}) as out,
    ):
        for _, packet in _song_packets(out, Path(song), limit, heard):
            out.mux(packet)
    return float(heard[0])


def _song_packets(
    out: OutputContainer, song: Path, seconds: Fraction | None, heard: list[Fraction]
) -> Iterator[tuple[Fraction, Packet]]:
    """The song's AAC packets up to `seconds`: copied if it is AAC already, else encoded."""
    try:
        with open_untrusted(song) as container:
            if not container.streams.audio:
                raise InvalidInput("the song has no audio stream")
            is_aac = container.streams.audio[0].codec_context.name == "aac"
    except av.FFmpegError as exc:
        raise InvalidInput(f"the song could not be read: {exc}") from exc
    if is_aac:
        return _copied_packets(out, song, seconds, heard)
    audio, rate = _add_audio(out, song)
    limit = None if seconds is None else round(seconds * rate)
    samples = [0]

    def encoded() -> Iterator[tuple[Fraction, Packet]]:
        yield from _audio_packets(song, audio, limit, samples)
        heard[0] = Fraction(samples[0], rate)

    return encoded()


def _copied_packets(
    out: OutputContainer, song: Path, seconds: Fraction | None, heard: list[Fraction]
) -> Iterator[tuple[Fraction, Packet]]:
    """An AAC song's packets as they are, those that start before `seconds` (±1 AAC frame).

    Their timestamps count from the first packet: analysis, the slots and the song's length
    count the decoded samples from 0, and an AAC track copied out of a video often starts
    late (its first packet at 0.5 s would play every beat half a second late). A first
    packet before 0 is the encoder's priming, which the edit list trims: kept as it is."""
    with open_untrusted(song) as container:
        # Added now, not when the packets are first pulled: the header is written on first mux.
        stream = out.add_stream_from_template(container.streams.audio[0])

    def copied() -> Iterator[tuple[Fraction, Packet]]:
        origin: int | None = None
        with open_untrusted(song) as container:
            source = container.streams.audio[0]
            for packet in container.demux(source):
                if packet.size == 0 or packet.pts is None or packet.time_base is None:
                    continue
                if origin is None:
                    origin = max(packet.pts, 0)
                packet.pts -= origin
                if packet.dts is not None:
                    packet.dts -= origin
                start = Fraction(packet.pts) * packet.time_base
                if seconds is not None and start >= seconds:
                    break
                end = start + Fraction(packet.duration or 0) * packet.time_base
                packet.stream = stream
                heard[0] = max(heard[0], end if seconds is None else min(end, seconds))
                yield start, packet

    return copied()


def cut_in(path: Path, fmt: OutputFormat) -> bool:
    """Whether `path` is a cut in `fmt` made with today's encoder parameters, as `assemble`
    joins it with any other such cut (False for a clip cut in another format or by another
    encoder, or one that cannot be read: cut it again)."""
    try:
        with open_untrusted(path) as container:
            streams = container.streams.video
            if not streams or not video_codec_matches(streams[0], fmt):
                return False
            return bytes(streams[0].codec_context.extradata or b"") == _cut_headers(fmt)
    except av.FFmpegError:
        return False


@functools.cache
def _cut_headers(fmt: OutputFormat) -> bytes:
    """The H.264 stream headers every cut in `fmt` carries (they depend on the format and the
    encoder's parameters, never on the picture): one black frame encoded in memory, once per
    format and process (milliseconds, 70 ms at 4096x2304)."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as out:
        stream = add_video_stream(out, fmt)
        planes = np.zeros((fmt.height * 3 // 2, fmt.width), dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(planes, format=PIX_FMT)
        frame.pts = 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    buffer.seek(0)
    with av.open(buffer) as container:
        return bytes(container.streams.video[0].codec_context.extradata or b"")


def _check_clip(path: Path, fmt: OutputFormat) -> bytes:
    """The clip's H.264 headers, after checking it is a cut in `fmt` (a join copies them)."""
    try:
        with open_untrusted(path) as container:
            if not container.streams.video:
                raise InvalidInput(f"{path.name} has no video stream")
            stream = container.streams.video[0]
            if not video_codec_matches(stream, fmt):
                raise InvalidInput(f"{path.name} was not cut to {fmt.size} at {fmt.fps} fps")
            return bytes(stream.codec_context.extradata or b"")
    except av.FFmpegError as exc:
        raise InvalidInput(f"{path.name} could not be read: {exc}") from exc


def _duration(song: Path) -> float:
    try:
        with open_untrusted(song) as container:
            if not container.streams.audio or container.duration is None:
                raise InvalidInput("the song has no audio or no known length")
            return container.duration / av.time_base
    except av.FFmpegError as exc:
        raise InvalidInput(f"the song could not be read: {exc}") from exc


def _video_packets(
    clips: Sequence[Path],
    video: VideoStream,
    fmt: OutputFormat,
    target: int | None,
    counted: list[int],
) -> Iterator[tuple[Fraction, Packet]]:
    """Every clip's packets in order, renumbered frame by frame (no B-frames: pts == dts)."""
    tick = Fraction(1, fmt.fps)
    for path in clips:
        with open_untrusted(path) as container:
            for packet in container.demux(container.streams.video[0]):
                if packet.size == 0:
                    continue  # the demuxer's end-of-stream marker
                if target is not None and counted[0] >= target:
                    counted[1] += 1
                    continue
                packet.stream = video
                packet.time_base = tick
                packet.pts = packet.dts = counted[0]
                packet.duration = 1
                counted[0] += 1
                yield counted[0] * tick - tick, packet


def _add_audio(out: OutputContainer, song: Path) -> tuple[AudioStream, int]:
    try:
        with open_untrusted(song) as container:
            if not container.streams.audio:
                raise InvalidInput("the song has no audio stream")
            source = container.streams.audio[0].codec_context
            rate = source.sample_rate if source.sample_rate in _AAC_RATES else 48000
            layout = "mono" if source.channels == 1 else "stereo"
    except av.FFmpegError as exc:
        raise InvalidInput(f"the song could not be read: {exc}") from exc
    stream = out.add_stream("aac", rate=rate, layout=layout, options=_AAC_OPTIONS)
    if not isinstance(stream, AudioStream):  # pragma: no cover - aac is an audio codec
        raise TypeError("aac did not give an audio stream")
    stream.bit_rate = _AAC_BITRATE
    return stream, rate


def _audio_packets(
    song: Path, stream: AudioStream, limit: int | None, written: list[int]
) -> Iterator[tuple[Fraction, Packet]]:
    """The song encoded as AAC (its first `limit` samples only, if given)."""
    rate = stream.codec_context.sample_rate
    layout = stream.codec_context.layout.name
    with open_untrusted(song) as container:
        decoded = container.decode(container.streams.audio[0])
        # Packed: the encoder's own resampler makes the planar frames AAC takes.
        for frame in resampled(decoded, "flt", layout, rate):
            if limit is not None and written[0] >= limit:
                break
            keep = frame.samples if limit is None else min(frame.samples, limit - written[0])
            if keep < frame.samples:
                samples = np.ascontiguousarray(interleaved(frame)[:keep]).reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(samples, format="flt", layout=layout)
                frame.sample_rate = rate
            frame.pts, frame.time_base = written[0], Fraction(1, rate)
            written[0] += keep
            for packet in stream.encode(frame):
                yield _packet_time(packet), packet
    for packet in stream.encode(None):
        yield _packet_time(packet), packet


def _packet_time(packet: Packet) -> Fraction:
    if packet.pts is None or packet.time_base is None:
        return Fraction(0)
    return Fraction(packet.pts) * packet.time_base
