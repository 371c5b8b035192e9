"""The demo: a synthesized song made into a music video on a local stack of its own, the video
and the scene clips written out, and the stack stopped (or kept for exploring).

The run is shown through a `DemoShow` the caller passes in (the CLI prints it), so this module
decides what happens and in which order, never how it looks.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mvpipe import api
from mvpipe.devstack import cluster
from mvpipe.errors import InvalidInput
from mvpipe.media.audio import wav_size
from mvpipe.media.files import writable_directory
from mvpipe.media.song import check_song_size
from mvpipe.models import ProjectStatus, ProjectView
from mvpipe.pipeline.intake import check_song_scenes
from mvpipe.settings import get_settings

#: The demo's settings, chosen so it finishes in about a minute on 2 cores (each can be
#: overridden from the environment): short slots, a quick local provider, 720p output.
DEMO_SETTINGS = {
    "MVPIPE_LOCAL_LATENCY": "1.5",
    "MVPIPE_SLOT_MAX_SECONDS": "4",
    "MVPIPE_OUTPUT_SIZE": "1280x720",
    "MVPIPE_OUTPUT_FPS": "24",
}
DEMO_TITLE = "Neon Rain"
DEMO_CONCEPT = (
    "City lights bloom after midnight.\nRain writes stories on the glass.\n"
    "A train hums through the dark.\nMorning breaks over the river."
)
#: How long the demo follows its run before it gives up.
FOLLOW_SECONDS = 600.0


@dataclass(frozen=True)
class DemoOutput:
    """What the demo wrote: the video, its measured properties, the scene clips' directory."""

    video: Path
    described: str
    scenes: Path | None


class DemoShow(Protocol):
    """How the demo's run is shown, step by step."""

    def note(self, text: str) -> None:
        """A line about what the stack or the demo is doing."""

    def follow(self, project_id: str, timeout: float) -> ProjectView:
        """Show the run until it is over; the project as it ended."""

    def finished(self, view: ProjectView) -> None:
        """The project once its run is over."""

    def wrote(self, output: DemoOutput) -> None:
        """Where the video and the clips were written."""

    def kept(self, project_id: str) -> None:
        """The stack stays up until Ctrl-C."""


def check_demo(*, seconds: float, output: Path) -> None:
    """What the demo would otherwise learn only once its stack is up, refused before any process
    starts: a song `create_project` refuses, an output directory it cannot write."""
    apply_demo_settings()
    check_seconds(seconds)
    writable_directory(output, "--output")


def apply_demo_settings() -> None:
    """The demo's settings, where the environment sets none (its checks and its run see the
    same: the slot length decides how long a song may be)."""
    for key, value in DEMO_SETTINGS.items():
        os.environ.setdefault(key, value)
    get_settings.cache_clear()


def check_seconds(seconds: float) -> None:
    """A song of this length as `create_project` would take it: within the song limits
    (MVPIPE_SONG_MIN/MAX_SECONDS), its WAV within MVPIPE_SONG_MAX_BYTES, its scenes within a
    project's (MVPIPE_SLOT_MAX_SECONDS), by the checks `create_project` itself makes."""
    from mvpipe.media.synth import SAMPLE_RATE  # numpy, as late as the song itself

    settings = get_settings()
    low, high = settings.song_min_seconds, settings.song_max_seconds
    if not (math.isfinite(seconds) and low <= seconds <= high):
        raise InvalidInput(
            f"--seconds must be from {low:g} to {high:g} (a song's limits), not {seconds:g}"
        )
    try:
        check_song_scenes(settings, seconds, settings.provider)
        check_song_size(wav_size(seconds, SAMPLE_RATE), settings.song_max_bytes)
    except InvalidInput as exc:
        raise InvalidInput(f"--seconds {seconds:g}: {exc}") from None


def run_demo(
    *, seconds: float, bpm: float, lip_sync: bool, output: Path, keep: bool, show: DemoShow
) -> ProjectView:
    """Synthesize the song, start a stack, make the video, write it to `output` if the project
    completed; with `keep`, hold the stack until Ctrl-C. Every process started is stopped and
    the stack's data and logs removed before it returns. The project as its run ended."""
    from mvpipe.media.synth import synthesize_song

    song = synthesize_song(seconds=seconds, bpm=bpm)
    workdir = Path(tempfile.mkdtemp(prefix="mvpipe-demo-"))
    try:
        apply_demo_settings()
        os.environ.setdefault("MVPIPE_LOCAL_LEDGER", str(workdir / "ledger.jsonl"))
        with cluster.running(workdir, concurrency=2, flower=True, beat=True, say=show.note):
            project_id = api.create_project(
                DEMO_TITLE, DEMO_CONCEPT, song=song.wav, lip_sync=lip_sync
            )
            show.note(
                f"\ncreated project {project_id} with a {seconds:g} s song at {bpm:g} BPM"
                f" ({len(song.beats)} beats); running it"
            )
            api.run_project(project_id)
            view = show.follow(project_id, FOLLOW_SECONDS)
            show.finished(view)
            if view.status == ProjectStatus.COMPLETED:
                show.wrote(write_output(view, output))
            if keep:
                stop = cluster.stop_on_signal()
                show.kept(project_id)
                cluster.hold(stop)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # data and logs of a finished demo
    return view


def write_output(view: ProjectView, output: Path) -> DemoOutput:
    """The final video (and any working and lip-synced clips) into `output`; a failed write is
    one `InvalidInput`, not a traceback."""
    try:
        return _write(view, output)
    except OSError as exc:
        raise InvalidInput(f"cannot write the demo's output to {output}: {exc}") from None


def _write(view: ProjectView, output: Path) -> DemoOutput:
    from mvpipe.media.probe import probe_video

    output.mkdir(parents=True, exist_ok=True)
    video = api.download(view.project_id, output / "music-video.mp4")
    scenes = output / "scenes"
    shutil.rmtree(scenes, ignore_errors=True)  # clips of an earlier demo are not this video's
    for scene in view.scenes:
        if scene.working_video_clip_s3_key:
            scenes.mkdir(exist_ok=True)
            target = scenes / f"scene-{scene.sequence:03d}.mp4"
            api.download(view.project_id, target, sequence=scene.sequence, stage="working")
        if scene.lip_synced_video_clip_s3_key:
            target = scenes / f"scene-{scene.sequence:03d}-lipsync.mp4"
            api.download(view.project_id, target, sequence=scene.sequence, stage="lipsync")
    described = probe_video(video).describe()
    return DemoOutput(video, described, scenes if scenes.exists() else None)
