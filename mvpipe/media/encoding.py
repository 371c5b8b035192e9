"""The one output format and the one set of H.264 encoder parameters every cut is made with.

The final join copies the cuts' packets without re-encoding, which is only sound if every cut
was encoded identically: same codec, size, rate, pixel format, profile, GOP and stream headers.
So this module is the only place those parameters exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

from mvpipe.frame_size import check_frame

if TYPE_CHECKING:  # PyAV loads only to encode
    from av.container import OutputContainer
    from av.video.stream import VideoStream

CODEC = "libx264"
PIX_FMT = "yuv420p"
#: Bumped whenever an encoder parameter changes: it is part of every cut's and final video's hash,
#: so a cut made with old parameters is never joined with new ones.
ENCODER_VERSION = 1


@dataclass(frozen=True)
class OutputFormat:
    """Frame size and rate of every cut and of the final video."""

    width: int
    height: int
    fps: int

    def __post_init__(self) -> None:
        check_frame(self.width, self.height, self.fps)

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def gop(self) -> int:
        """Frames between keyframes: two seconds, fixed, so every cut has the same structure."""
        return 2 * self.fps

    def as_key(self) -> str:
        """What a content hash needs to know about the format (and the encoder behind it)."""
        return f"{self.size}@{self.fps}/{CODEC}/{PIX_FMT}/v{ENCODER_VERSION}"


def encoder_options(fmt: OutputFormat) -> dict[str, str]:
    """libx264 options shared by every cut.

    No B-frames (packets arrive in display order, so joined timestamps are simply consecutive),
    no scene-cut keyframes (the GOP is the same whatever the content), a fixed profile and
    level (so every cut carries the same stream headers), CRF quality. "superfast" encodes 720p
    about twice as fast as "veryfast" for ~40 % more bytes at the same CRF: a media worker must
    cut well faster than real time on a shared 2-core host.
    """
    return {
        "preset": "superfast",
        "profile": "high",
        "crf": "20",
        "x264-params": (
            f"keyint={fmt.gop}:min-keyint={fmt.gop}:scenecut=0:bframes=0:"
            f"level={_level(fmt)}:open-gop=0"
        ),
    }


def add_video_stream(container: OutputContainer, fmt: OutputFormat) -> VideoStream:
    """An H.264 stream with the shared parameters, counting time in frames."""
    from av.video.stream import VideoStream

    stream = container.add_stream(CODEC, rate=fmt.fps, options=encoder_options(fmt))
    if not isinstance(stream, VideoStream):  # pragma: no cover - libx264 is a video codec
        raise TypeError("libx264 did not give a video stream")
    stream.width, stream.height = fmt.width, fmt.height
    stream.pix_fmt = PIX_FMT
    stream.codec_context.time_base = Fraction(1, fmt.fps)
    return stream


def _level(fmt: OutputFormat) -> str:
    """The H.264 level the format needs (macroblocks per frame and per second), fixed per format."""
    macroblocks = ((fmt.width + 15) // 16) * ((fmt.height + 15) // 16)
    for level, frame_max, rate_max in (
        ("3.1", 3600, 108000),
        ("4.0", 8192, 245760),
        ("4.2", 8704, 522240),
        ("5.1", 36864, 983040),
        ("5.2", 36864, 2073600),
    ):
        if macroblocks <= frame_max and macroblocks * fmt.fps <= rate_max:
            return level
    return "6.2"


def video_codec_matches(stream: VideoStream, fmt: OutputFormat) -> bool:
    """Whether a stream is what `add_video_stream` makes for `fmt` (checked before a join)."""
    ctx = stream.codec_context
    return (
        ctx.name == "h264"
        and ctx.width == fmt.width
        and ctx.height == fmt.height
        and ctx.pix_fmt == PIX_FMT
        and stream.average_rate == fmt.fps
    )
