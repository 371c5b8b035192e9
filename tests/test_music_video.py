"""The product end to end, with the real parts: a synthesized song with known beats goes in, a
beat-cut music video comes out, and what a viewer sees and hears is measured in the download.

One project is followed through its whole life (run, rerun, regenerate a scene), because each
step's promise is about what the previous step left behind.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import librosa
import numpy as np
import pytest
from numpy.typing import NDArray

from mvpipe import api
from mvpipe.deps import get_context
from mvpipe.media.audio import decode_mono
from mvpipe.media.synth import SynthSong, synthesize_song
from mvpipe.models import ProjectStatus, ProjectView, SceneStatus
from tests.conftest import Workers
from tests.helpers import assert_invariants, generations_per_scene

pytestmark = pytest.mark.integration

StartWorkers = Callable[..., Workers]

LYRICS = "Neon rain\nOn the glass\nWe run all night\nUntil the lights go out"
WIDTH, HEIGHT, FPS = 160, 90, 24
FRAME = 1 / FPS
SLOT_MAX = 4.0
BEAT_TOLERANCE = 0.040
SAMPLE_RATE, HOP = 22050, 256


@pytest.fixture(scope="module")
def song() -> SynthSong:
    """13.7 s at 128 BPM, first beat at 0.37 s: beats fall off the frame grid, several slots."""
    return synthesize_song(seconds=13.7, bpm=128.0, offset=0.37, sections=2)


@dataclass
class Measured:
    """A downloaded video as a player decodes it."""

    video_codec: str
    audio_codec: str | None
    rate: object
    sizes: set[tuple[int, int]]
    frames: list[NDArray[np.int16]]
    audio_seconds: float

    @property
    def video_seconds(self) -> float:
        return len(self.frames) / FPS


def measure(path: Path) -> Measured:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        decoded = list(container.decode(video))
        codec, rate = video.codec_context.name, video.average_rate
    with av.open(str(path)) as container:
        audio_codec, samples, rate_hz, end = None, 0, 1, 0.0
        if container.streams.audio:
            audio = container.streams.audio[0]
            audio_codec, rate_hz = audio.codec_context.name, audio.codec_context.sample_rate
            # Where the sound ends for a player: the last packet's end (the container trims
            # the encoder's padding of the last AAC frame, which the decoder still returns).
            packets = [p for p in container.demux(audio) if p.size]
            last = packets[-1]
            end = float((last.pts + last.duration) * last.time_base)
    with av.open(str(path)) as container:
        if container.streams.audio:
            samples = sum(f.samples for f in container.decode(audio=0))
    assert end <= samples / rate_hz < end + 1024 / rate_hz  # every declared sample decodes
    return Measured(
        video_codec=codec,
        audio_codec=audio_codec,
        rate=rate,
        sizes={(f.width, f.height) for f in decoded},
        frames=[f.to_ndarray(format="rgb24").astype(np.int16) for f in decoded],
        audio_seconds=end,
    )


def onset_lag(song: bytes, video: Path) -> float:
    """Seconds by which the video's sound trails the song: the peak of the cross-correlation
    of their onset envelopes, searched within half a second either way."""
    envelopes = []
    for source in (song, video):
        samples = decode_mono(source, SAMPLE_RATE)
        envelope = librosa.onset.onset_strength(y=samples, sr=SAMPLE_RATE, hop_length=HOP)
        envelopes.append((envelope - envelope.mean()) / (envelope.std() or 1.0))
    reference, heard = envelopes
    n = min(len(reference), len(heard))
    reference, heard = reference[:n], heard[:n]
    window = round(0.5 * SAMPLE_RATE / HOP)
    scores = {
        lag: float(np.dot(reference[: n - lag], heard[lag:]))
        if lag >= 0
        else float(np.dot(reference[-lag:], heard[: n + lag]))
        for lag in range(-window, window + 1)
    }
    best = max(scores, key=lambda lag: scores[lag])
    assert scores[best] / n > 0.5, "the video's sound does not resemble the song"
    return best * HOP / SAMPLE_RATE


def frame_steps(frames: list[NDArray[np.int16]]) -> list[float]:
    """Mean absolute difference of each frame from the one before (index i: frames i-1, i)."""
    return [0.0] + [float(np.abs(b - a).mean()) for a, b in itertools.pairwise(frames)]


def download(project_id: str, path: Path) -> Measured:
    written = api.download(project_id, path)
    assert written == path and path.stat().st_size > 0
    return measure(path)


def clip_keys(view: ProjectView) -> dict[int, tuple[str | None, str | None]]:
    return {
        s.sequence: (s.original_video_clip_s3_key, s.working_video_clip_s3_key) for s in view.scenes
    }


def test_a_song_becomes_a_music_video_cut_on_its_beats(
    start_workers: StartWorkers, song: SynthSong, tmp_path: Path
) -> None:
    # Given workers making 160x90 video at 24 fps, slots of at most 4 s
    workers = start_workers(
        output_size=f"{WIDTH}x{HEIGHT}", output_fps=str(FPS), slot_max_seconds=str(SLOT_MAX)
    )
    project_id = api.create_project("Beat Cut", LYRICS, song=song.wav)

    # When the project runs
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=150)

    # Then it is completed, its scenes tile the song exactly, inner boundaries on true beats
    assert view.status == ProjectStatus.COMPLETED, view.last_error
    assert view.final_video_s3_key is not None
    scenes = view.scenes
    assert len(scenes) >= 4 and all(s.status == SceneStatus.COMPLETED for s in scenes)
    song_seconds = view.song_seconds or 0.0
    assert abs(song_seconds - 13.7) < 1e-3
    assert scenes[0].start_seconds == 0.0
    assert scenes[-1].end_seconds == round(song_seconds * FPS) / FPS
    for before, after in itertools.pairwise(scenes):
        assert before.end_seconds == after.start_seconds
    boundaries = [s.start_seconds or 0.0 for s in scenes[1:]]
    for start in boundaries:
        nearest = min(song.beats, key=lambda beat: abs(beat - start))
        assert abs(nearest - start) <= BEAT_TOLERANCE, (start, nearest)

    # and one paid generation per scene
    assert generations_per_scene(workers.ledger, project_id) == {s.sequence: 1 for s in scenes}
    assert_invariants(project_id)

    # and the final video is H.264 + AAC at one size and rate, as long as the song (±1 frame)
    first = download(project_id, tmp_path / "first.mp4")
    assert (first.video_codec, first.audio_codec) == ("h264", "aac")
    assert first.sizes == {(WIDTH, HEIGHT)} and first.rate == FPS
    assert abs(first.video_seconds - song_seconds) <= FRAME + 1e-9, first.video_seconds
    assert abs(first.audio_seconds - song_seconds) <= FRAME + 1e-9, first.audio_seconds

    # and its sound is the song, in sync (onset envelopes line up within a frame)
    lag = onset_lag(song.wav, tmp_path / "first.mp4")
    assert abs(lag) <= FRAME, lag

    # and its picture changes exactly at the scene boundaries, and never jumps inside a scene
    steps = frame_steps(first.frames)
    cuts = {round(start * FPS) for start in boundaries}
    at_cuts = [steps[k] for k in sorted(cuts)]
    inside = [step for k, step in enumerate(steps) if k and k not in cuts]
    assert min(at_cuts) > 5 * max(inside), (at_cuts, max(inside))

    # When the project runs again
    final_key = view.final_video_s3_key
    api.run_project(project_id).get(timeout=60)
    again = api.wait_project(project_id, timeout=60)

    # Then nothing is paid and the final video is the same object
    assert again.status == ProjectStatus.COMPLETED
    assert again.final_video_s3_key == final_key
    assert clip_keys(again) == clip_keys(view)
    assert generations_per_scene(workers.ledger, project_id) == {s.sequence: 1 for s in scenes}

    # When one scene is regenerated
    api.regenerate_scene(project_id, 2)
    regenerated = api.wait_project(project_id, timeout=120)

    # Then exactly that scene is paid once more, the others keep their clips, and the final
    # video is a new one, still the song's length
    assert regenerated.status == ProjectStatus.COMPLETED, regenerated.last_error
    paid = generations_per_scene(workers.ledger, project_id)
    assert paid == {s.sequence: 2 if s.sequence == 2 else 1 for s in scenes}
    before, after = clip_keys(view), clip_keys(regenerated)
    assert {n: k for n, k in after.items() if n != 2} == {n: k for n, k in before.items() if n != 2}
    assert after[2][0] is not None and after[2][0] != before[2][0]
    assert regenerated.final_video_s3_key not in (None, final_key)
    assert get_context().clips.exists(final_key)  # earlier final videos are the history
    second = download(project_id, tmp_path / "second.mp4")
    assert (second.video_codec, second.audio_codec) == ("h264", "aac")
    assert abs(second.video_seconds - song_seconds) <= FRAME + 1e-9
    assert_invariants(project_id)
