"""Real, playable H.264 MP4s that show a scene's prompt (PyAV ships its own codec)."""

from __future__ import annotations

import functools
import io
import textwrap

import av
from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT, FPS = 320, 180, 12


@functools.lru_cache(maxsize=64)
def render_clip(text: str, seconds: float = 2.0) -> bytes:
    """Encode `seconds` of video with `text` drawn on a slowly shifting background."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height = WIDTH, HEIGHT
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "tune": "stillimage"}
        font = ImageFont.load_default()
        lines = textwrap.wrap(text, width=48)[:8]
        frames = max(1, round(seconds * FPS))
        seed = sum(text.encode()) % 255
        for index in range(frames):
            shade = (seed + index * 3) % 255
            image = Image.new("RGB", (WIDTH, HEIGHT), (shade // 3, 40, 90 + shade // 4))
            draw = ImageDraw.Draw(image)
            for row, line in enumerate(lines):
                draw.text((8, 8 + row * 14), line, fill=(255, 255, 255), font=font)
            draw.rectangle(
                (0, HEIGHT - 6, WIDTH * (index + 1) // frames, HEIGHT), fill=(255, 200, 0)
            )
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def probe_clip(data: bytes) -> tuple[str, int, float]:
    """(codec, frames, seconds) of an MP4, read back by the demuxer: proves the file plays."""
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        base = stream.time_base
        duration = float(stream.duration * base) if stream.duration and base else 0.0
        return stream.codec_context.name, frames, duration
