"""Real, playable H.264 MP4s that show a scene's prompt (PyAV ships its own codec).

Each clip has its own background colour (from a hash of its text), so a cut between scenes is a
visible change, and within a clip the colour drifts smoothly back and forth (a triangle wave),
never wrapping around: a music video must not jump mid-scene.
"""

from __future__ import annotations

import functools
import hashlib
import io
import textwrap

import av
from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT, FPS = 320, 180, 12
#: How far (0..255 levels) and how fast (frames per swing) the background drifts within a clip.
DRIFT_LEVELS, DRIFT_FRAMES = 36, 48


def background(text: str, index: int) -> tuple[int, int, int]:
    """The background of frame `index`: the clip's own colour, shifted by a triangle wave that
    moves at most DRIFT_LEVELS / DRIFT_FRAMES levels per frame and never jumps."""
    digest = hashlib.sha256(text.encode()).digest()
    phase = index % (2 * DRIFT_FRAMES)
    drift = (phase if phase <= DRIFT_FRAMES else 2 * DRIFT_FRAMES - phase) * DRIFT_LEVELS
    shift = drift // DRIFT_FRAMES
    base = [20 + digest[n] % (255 - 20 - DRIFT_LEVELS) for n in range(3)]
    return base[0] + shift, base[1], base[2] + shift // 2


@functools.lru_cache(maxsize=64)
def render_clip(text: str, seconds: float = 2.0) -> bytes:
    """Encode `seconds` of video with `text` drawn on a slowly drifting background."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height = WIDTH, HEIGHT
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "tune": "stillimage"}
        font = ImageFont.load_default()
        lines = textwrap.wrap(text, width=48)[:8]
        frames = max(1, round(seconds * FPS))
        for index in range(frames):
            image = Image.new("RGB", (WIDTH, HEIGHT), background(text, index))
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
