"""Cutting: one clip → exactly a slot's frames in the output format.

Frame-exact by timestamp, not by frame count: output frame i shows the source frame on screen at
i/fps seconds into the clip, whatever the clip's own rate. A clip shorter than the slot holds its
last frame (a music video must not jump back mid-scene); a longer one is cut. The result is
scaled to fit and letterboxed, and encoded with the shared parameters so cuts join without
re-encoding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.frame import VideoFrame

from mvpipe.errors import InvalidInput
from mvpipe.frame_size import MAX_FRAME_PIXELS
from mvpipe.media.encoding import PIX_FMT, OutputFormat, add_video_stream
from mvpipe.media.files import written_atomically
from mvpipe.media.untrusted import check_frame_size, open_untrusted

#: The most source frames a second of slot may decode (a 240 fps clip): a clip of tiny or
#: repeated timestamps would otherwise make a short slot decode without end.
MAX_SOURCE_FPS = 240


@dataclass(frozen=True)
class CutReport:
    """What the cut did: `held_frames` output frames past the clip's end repeat its last frame;
    `source_frames` distinct source frames appear in the output."""

    frames: int
    held_frames: int
    source_frames: int


def cut_clip(
    src: Path,
    dst: Path,
    *,
    frames: int,
    fmt: OutputFormat,
    max_pixels: int = MAX_FRAME_PIXELS,
    max_fps: int = MAX_SOURCE_FPS,
) -> CutReport:
    """Write `frames` frames of `src` to `dst` (H.264, `fmt`, no audio); `dst` appears whole or not.

    Raises InvalidInput for a clip that cannot be decoded, has no picture, has frames larger
    than `max_pixels` or more than `max_fps` frames a second of the slot.
    """
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise InvalidInput(f"a cut needs at least one frame, got {frames!r}")
    held = 0
    shown: set[int] = set()
    with written_atomically(dst) as tmp:
        try:
            source = open_untrusted(src)
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise InvalidInput(f"the clip could not be opened: {exc}") from exc
        with source, av.open(str(tmp), mode="w", format="mp4") as out:
            stream = add_video_stream(out, fmt)
            most = math.ceil((Fraction(frames, fmt.fps) + 1) * max_fps)
            pictures = _timed_frames(source, max_pixels=max_pixels, max_frames=most)
            current = next(pictures, None)
            if current is None:
                raise InvalidInput("the clip has no video frames")
            upcoming = next(pictures, None)
            index = 0
            picture: VideoFrame | None = _fit(current[1], fmt)
            for i in range(frames):
                at = Fraction(i, fmt.fps)
                # Advance while the next source frame is already on screen at time `at`.
                while upcoming is not None and upcoming[0] <= at:
                    current, upcoming = upcoming, next(pictures, None)
                    index += 1
                    picture = None
                if picture is None:
                    picture = _fit(current[1], fmt)
                if upcoming is None and at >= current[0] + current[2]:
                    held += 1
                shown.add(index)
                picture.pts = i
                picture.time_base = Fraction(1, fmt.fps)
                for packet in stream.encode(picture):
                    out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)
    return CutReport(frames=frames, held_frames=held, source_frames=len(shown))


def _timed_frames(
    container: av.container.InputContainer, *, max_pixels: int, max_frames: int
) -> Iterator[tuple[Fraction, VideoFrame, Fraction]]:
    """(start time from the first frame, frame, how long it is shown) for each source frame;
    no frame larger than `max_pixels` is decoded, nor more than `max_frames` frames."""
    if not container.streams.video:
        raise InvalidInput("the clip has no video stream")
    stream = container.streams.video[0]
    check_frame_size(stream, "the clip", max_pixels=max_pixels)
    stream.thread_type = "AUTO"
    rate = stream.average_rate or stream.guessed_rate or Fraction(24)
    default = Fraction(1) / Fraction(rate)
    first: Fraction | None = None
    previous: tuple[Fraction, VideoFrame] | None = None
    try:
        for decoded, frame in enumerate(container.decode(stream), start=1):
            if decoded > max_frames:
                raise InvalidInput(
                    f"the clip has too many frames: more than {max_frames:,} decoded for one "
                    "slot (a frame rate or timestamps no provider makes)"
                )
            if frame.pts is None or frame.time_base is None:
                # A bare stream without timestamps: frames follow each other at the stream's rate.
                at = previous[0] + default if previous is not None else Fraction(0)
            else:
                at = Fraction(frame.pts) * frame.time_base
                if first is None:
                    first = at
                at -= first
            if previous is not None:
                if at <= previous[0]:
                    continue  # a repeated or out-of-order timestamp shows nothing new
                yield previous[0], previous[1], at - previous[0]
            previous = (at, frame)
    except av.FFmpegError as exc:
        if previous is None:
            raise InvalidInput(f"the clip could not be decoded: {exc}") from exc
        # A damaged tail: keep what decoded (its last frame is then held).
    if previous is not None:
        yield previous[0], previous[1], default


def _fit(frame: VideoFrame, fmt: OutputFormat) -> VideoFrame:
    """Scale to fit inside the format, keeping the aspect ratio; pad the rest black."""
    scale = min(fmt.width / frame.width, fmt.height / frame.height)
    width = min(fmt.width, max(2, round(frame.width * scale / 2) * 2))
    height = min(fmt.height, max(2, round(frame.height * scale / 2) * 2))
    scaled = frame.reformat(width=width, height=height, format=PIX_FMT, interpolation="BILINEAR")
    if (width, height) == (fmt.width, fmt.height):
        return scaled
    # Black in limited-range YUV is Y=16, U=V=128; offsets even so chroma lines up.
    x, y = (fmt.width - width) // 2 // 2 * 2, (fmt.height - height) // 2 // 2 * 2
    planes = np.empty((fmt.height * 3 // 2, fmt.width), dtype=np.uint8)
    luma, chroma = (
        planes[: fmt.height],
        planes[fmt.height :].reshape(2, fmt.height // 2, fmt.width // 2),
    )
    luma.fill(16)
    chroma.fill(128)
    source = scaled.to_ndarray()
    luma[y : y + height, x : x + width] = source[:height]
    src_chroma = source[height:].reshape(2, height // 2, width // 2)
    chroma[:, y // 2 : y // 2 + height // 2, x // 2 : x // 2 + width // 2] = src_chroma
    return VideoFrame.from_ndarray(planes, format=PIX_FMT)
