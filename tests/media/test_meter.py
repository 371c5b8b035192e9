"""The local lip-sync's meter: loudness per frame from the slot's audio, drawn as a fill and a
mouth that open with it (pure numpy), and drawn onto a real clip frame for frame (PyAV)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from mvpipe.errors import InvalidInput
from mvpipe.media.audio import decode_mono, to_wav
from mvpipe.media.meter import FILL, draw_meter, draw_on_clip, levels, meter_box
from mvpipe.providers.render import render_clip

from .clips import make_clip

RATE = 16000


def tone(seconds: float, amplitude: float) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def fill_rows(image: np.ndarray) -> int:
    x0, y0, x1, y1 = meter_box(image.shape[1], image.shape[0])
    column = image[y0:y1, (x0 + x1) // 2]
    return int((np.abs(column.astype(int) - np.array(FILL)).max(axis=1) == 0).sum())


def test_levels_follow_the_audio_frame_by_frame() -> None:
    # Given half a second of silence, then a soft tone, then a loud one (12 frames a second)
    samples = np.concatenate([np.zeros(RATE // 2, np.float32), tone(0.5, 0.2), tone(0.5, 0.8)])
    # When its levels are measured for 18 frames
    heard = levels(samples, RATE, 12, 18)
    # Then silence is 0, the loud part is the loudest (1.0) and the soft part in between
    assert heard[:6].max() == 0.0
    assert np.allclose(heard[12:], 1.0, atol=0.01)
    assert np.allclose(heard[6:12], 0.25, atol=0.02)
    # and frames past the audio are silent
    assert levels(samples[: RATE // 4], RATE, 12, 6)[4:].max() == 0.0


def test_the_meter_and_mouth_open_with_the_level() -> None:
    picture = np.full((90, 160, 3), 100, np.uint8)
    quiet, loud = draw_meter(picture, 0.0), draw_meter(picture, 1.0)
    assert fill_rows(quiet) == 0 and fill_rows(loud) > fill_rows(draw_meter(picture, 0.5)) > 0
    assert np.abs(loud.astype(int) - 100).sum() > np.abs(quiet.astype(int) - 100).sum()
    assert (picture == 100).all()  # the input is left alone
    with pytest.raises(InvalidInput):
        draw_meter(np.zeros((4, 4), np.uint8), 0.5)


def test_draw_on_clip_keeps_the_frames_and_shows_the_audio() -> None:
    # Given a 2 s clip and 2 s of audio that is silent, then loud
    video = render_clip("sing", 2.0)
    wav = to_wav(np.concatenate([np.zeros(RATE, np.float32), tone(1.0, 0.7)]), RATE)
    # When the meter is drawn on it
    drawn = draw_on_clip(video, wav)
    # Then it has the clip's frames, and the meter is empty in the first second, full after
    with av.open(io.BytesIO(drawn)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(io.BytesIO(video)) as container:
        assert len(frames) == sum(1 for _ in container.decode(video=0))
    half = len(frames) // 2
    assert max(fill_rows_near(f) for f in frames[: half - 1]) == 0
    assert min(fill_rows_near(f) for f in frames[half + 1 :]) > 10
    with pytest.raises(InvalidInput):
        draw_on_clip(b"not a video", wav)
    assert len(decode_mono(wav, RATE)) == 2 * RATE


def fill_rows_near(image: np.ndarray) -> int:
    """Rows of the meter's middle column close to the fill colour (after lossy encoding)."""
    x0, y0, x1, y1 = meter_box(image.shape[1], image.shape[0])
    column = image[y0:y1, (x0 + x1) // 2].astype(int)
    return int((np.abs(column - np.array(FILL)).max(axis=1) < 80).sum())


#: Measures the peak memory one `draw_on_clip` call adds, in a fresh process (argv: clip, wav).
MEASURE = """
import resource, sys
from pathlib import Path
from mvpipe.media.meter import draw_on_clip
from mvpipe.providers.render import render_clip
video, wav = Path(sys.argv[1]).read_bytes(), Path(sys.argv[2]).read_bytes()
draw_on_clip(render_clip("warm up", 1.0), wav)  # codecs and numpy loaded before measuring
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
draw_on_clip(video, wav)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_draw_on_clip_holds_a_few_frames_not_the_whole_clip(tmp_path: Path) -> None:
    # Given an 8 s clip at 640x360, 24 fps: 192 frames, 133 MB when all decoded at once
    width, height, fps, frames = 640, 360, 24, 192
    clip = tmp_path / "clip.mp4"
    with av.open(str(clip), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for n in range(frames):
            picture = np.full((height, width, 3), (n, 255 - n, 80), np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(stream.encode(None))
    audio = tmp_path / "slot.wav"
    audio.write_bytes(to_wav(tone(8.0, 0.5), RATE))
    # When the meter is drawn on it, in a fresh process
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(clip), str(audio)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    # Then the call's peak memory is far below the decoded clip: frame by frame
    decoded = frames * width * height * 3
    assert int(done.stdout.strip()) < decoded / 4, (done.stdout, decoded)


def test_a_clip_with_frames_larger_than_any_provider_makes_is_refused(tmp_path: Path) -> None:
    # Given a real clip 8,200 pixels wide (past any frame a provider makes), tiny in bytes
    clip = make_clip(tmp_path / "wide.mp4", frames=2, width=8200, height=16).read_bytes()
    # When the meter would be drawn on it, then it is refused before a frame is decoded
    with pytest.raises(InvalidInput, match=r"frames are too large: 8200x16"):
        draw_on_clip(clip, to_wav(tone(0.2, 0.5), RATE))
