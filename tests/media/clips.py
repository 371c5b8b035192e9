"""Tiny test clips whose every frame says which one it is (its brightness), and their readers."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def level(index: int) -> int:
    """The luma of source frame `index`: far enough apart to survive compression."""
    return 30 + 9 * index


def make_clip(
    path: Path,
    *,
    frames: int,
    fps: int = 12,
    width: int = 160,
    height: int = 90,
    start_pts: int = 0,
    audio: bool = False,
    first: int = 0,
) -> Path:
    """An H.264 MP4 of flat frames at `level(first)`, `level(first + 1)`, ... (lossless)."""
    assert first + frames <= 24, "levels run out past 24 frames"
    with av.open(str(path), mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "qp": "0"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        sound = out.add_stream("aac", rate=22050) if audio else None
        for index in range(frames):
            planes = np.full((height * 3 // 2, width), 128, dtype=np.uint8)
            planes[:height] = level(first + index)
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            frame.pts, frame.time_base = start_pts + index, Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
        if sound is not None:
            samples = np.zeros((1, 22050 * frames // fps), dtype=np.float32)
            chunk = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            chunk.sample_rate = 22050
            for packet in sound.encode(chunk):
                out.mux(packet)
            for packet in sound.encode(None):
                out.mux(packet)
    return path


def with_latin1_title(src: Path, dst: Path, title: str = "Café!") -> Path:
    """`src` remuxed to `dst` with a container title written as Latin-1 (not UTF-8) bytes."""
    with (
        av.open(str(src)) as source,
        av.open(str(dst), mode="w", format="mp4", metadata_encoding="latin-1") as out,
    ):
        out.metadata["title"] = title
        video = out.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:  # the demuxer's empty flush packet
                packet.stream = video
                out.mux(packet)
    try:  # PyAV's default (strict UTF-8) must choke on it, or the clip proves nothing
        av.open(str(dst)).close()
    except UnicodeDecodeError:
        return dst
    raise AssertionError("the title was stored as UTF-8")


def luma_levels(path: Path, *, centre: bool = True) -> list[float]:
    """Mean luma of each decoded frame (of its centre, away from any letterbox bars)."""
    levels = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            y = luma_plane(frame)
            h, w = y.shape
            region = y[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3] if centre else y
            levels.append(float(region.mean()))
    return levels


def source_index(luma: float) -> int:
    """Which source frame a decoded luma shows."""
    return round((luma - 30) / 9)


def luma_plane(frame: av.VideoFrame) -> np.ndarray:
    """The Y plane as stored (limited range: black is 16), not converted to full-range gray."""
    return frame.reformat(format="yuv420p").to_ndarray()[: frame.height]
