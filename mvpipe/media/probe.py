"""What a player sees in a finished video: codecs, frame size and rate, seconds of each stream.

Decodes every frame rather than trusting the container's header, so the figures are the ones a
viewer gets (the demo prints them; operators can check a download with them; tests check a
provider's clip with them, straight from its bytes).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mvpipe.media.untrusted import check_frame_size, decoder, open_untrusted


@dataclass(frozen=True)
class VideoFacts:
    video_codec: str
    width: int
    height: int
    fps: float
    frames: int
    video_seconds: float
    audio_codec: str | None
    audio_seconds: float | None

    def describe(self) -> str:
        sound = (
            "no sound"
            if self.audio_codec is None
            else f"{self.audio_codec} {self.audio_seconds or 0.0:.2f} s"
        )
        return (
            f"{self.video_codec} {self.width}x{self.height} {self.fps:g} fps "
            f"{self.video_seconds:.2f} s ({self.frames} frames), {sound}"
        )


def _open(source: Path | bytes) -> Any:
    return open_untrusted(io.BytesIO(source) if isinstance(source, bytes) else source)


def probe_video(source: Path | bytes) -> VideoFacts:
    """Decode `source` (a file, or a file's bytes) fully and report its video and (first) audio
    stream."""
    with _open(source) as container:
        video = container.streams.video[0]
        check_frame_size(video, "the video")
        rate = video.average_rate or video.guessed_rate
        fps = float(rate) if rate else 0.0
        frames = 0
        width = height = 0
        for frame in container.decode(video):
            frames += 1
            width, height = frame.width, frame.height
        codec = video.codec_context.name
    audio_codec: str | None = None
    audio_seconds: float | None = None
    with _open(source) as container:
        if container.streams.audio:
            audio = container.streams.audio[0]
            sound = decoder(audio, "the video's sound")
            samples = sum(f.samples for f in container.decode(audio))
            audio_codec = sound.name
            audio_seconds = samples / sound.sample_rate
    return VideoFacts(
        video_codec=codec,
        width=width,
        height=height,
        fps=fps,
        frames=frames,
        video_seconds=frames / fps if fps else 0.0,
        audio_codec=audio_codec,
        audio_seconds=audio_seconds,
    )
