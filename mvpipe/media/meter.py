"""The local lip-sync's picture: a mouth and a level meter driven by the slot's audio, drawn onto
a clip, so a lip-synced scene visibly follows the song.

`levels` and `draw_meter` are pure numpy (tested without video); `draw_on_clip` decodes a clip,
draws and encodes it frame by frame (PyAV).
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
from numpy.typing import NDArray

from mvpipe.errors import InvalidInput
from mvpipe.media.audio import Samples, decode_mono
from mvpipe.media.untrusted import check_frame_size, open_untrusted

#: The meter's panel and fill, and the mouth: colours no local clip's background uses
#: (pure magenta fill on a near-black panel).
PANEL = (12, 12, 12)
FILL = (255, 0, 255)
MOUTH = (150, 10, 40)
#: Levels below this share of the slot's loudest frame show as silence.
FLOOR = 0.02
_RATE = 16000

Image = NDArray[np.uint8]


def levels(samples: Samples, sample_rate: int, fps: float, frames: int) -> NDArray[np.float64]:
    """One loudness per video frame, 0..1: the RMS of the audio under frame i (i/fps ..
    (i+1)/fps), relative to the slot's loudest frame. Frames past the audio are silent."""
    if frames < 0 or fps <= 0 or sample_rate <= 0:
        raise InvalidInput(f"bad meter timing: {frames} frames at {fps} fps, {sample_rate} Hz")
    out = np.zeros(frames, dtype=np.float64)
    for i in range(frames):
        first, last = round(i * sample_rate / fps), round((i + 1) * sample_rate / fps)
        window = samples[first:last]
        if len(window):
            out[i] = float(np.sqrt(np.mean(np.square(window, dtype=np.float64))))
    loudest = float(out.max()) if frames else 0.0
    if loudest <= 0:
        return out
    out /= loudest
    out[out < FLOOR] = 0.0
    return out


def meter_box(width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the meter's panel: a strip at the right edge of the picture."""
    x1 = width - max(1, width // 40)
    x0 = x1 - max(4, width // 12)
    return x0, height // 10, x1, height - height // 10


def draw_meter(image: Image, level: float) -> Image:
    """A copy of the RGB `image` with the meter (filled from the bottom by `level`) and a mouth
    opened by `level` drawn on it."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidInput("the meter is drawn on an RGB picture")
    level = min(1.0, max(0.0, float(level)))
    out = image.copy()
    height, width = out.shape[:2]
    x0, y0, x1, y1 = meter_box(width, height)
    out[y0:y1, x0:x1] = PANEL
    top = y1 - round((y1 - y0) * level)
    out[top:y1, x0 + 1 : x1 - 1] = FILL
    # The mouth: an ellipse below the middle, as wide as a fifth of the picture, opened by level.
    cx, cy = width / 2, height * 0.7
    rx = width / 10
    ry = max(1.0, level * height / 10)
    ys, xs = np.ogrid[:height, :width]
    inside = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0
    out[inside] = MOUTH
    return out


def draw_on_clip(video: bytes, wav: bytes) -> bytes:
    """The clip with the meter drawn on every frame, driven by `wav` (the slot's audio from the
    clip's first frame); the same frames and rate, H.264, no audio.

    Frame by frame (decode → draw → encode): only a frame or two is ever held decoded, whatever
    the clip's length and size (all of an 8 s clip at 720p would be about 530 MB). The levels
    need the frame count first: a pass over the packets, which decodes nothing."""
    samples = decode_mono(wav, _RATE)
    buffer = io.BytesIO()
    try:
        count, rate = _frame_count(video)
        loudness = levels(samples, _RATE, float(rate), count)
        with (
            open_untrusted(io.BytesIO(video)) as source,
            av.open(buffer, mode="w", format="mp4") as out,
        ):
            encoded: av.VideoStream | None = None
            stream = source.streams.video[0]
            check_frame_size(stream, "the clip")
            for index, frame in enumerate(source.decode(stream)):
                picture = np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)
                if encoded is None:
                    encoded = out.add_stream("libx264", rate=rate)
                    encoded.height, encoded.width = picture.shape[:2]
                    encoded.pix_fmt = "yuv420p"
                    encoded.options = {"preset": "ultrafast"}
                level = float(loudness[index]) if index < count else 0.0
                meter = av.VideoFrame.from_ndarray(draw_meter(picture, level), format="rgb24")
                out.mux(encoded.encode(meter))
            if encoded is None:
                raise InvalidInput("the clip has no video frames")
            out.mux(encoded.encode(None))
    except av.FFmpegError as exc:
        raise InvalidInput(f"the clip could not be decoded: {exc}") from exc
    return buffer.getvalue()


def _frame_count(video: bytes) -> tuple[int, Fraction]:
    """The clip's video frames (its packets with data: one frame each) and frame rate."""
    with open_untrusted(io.BytesIO(video)) as source:
        if not source.streams.video:
            raise InvalidInput("the clip has no video stream")
        stream = source.streams.video[0]
        rate = Fraction(stream.average_rate or 24)
        count = sum(1 for packet in source.demux(stream) if packet.size)
    return count, rate
