"""Commands over a local stack of this machine's own: stack, demo. What they start and stop
lives in `mvpipe.devstack`; these parse, check and print."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mvpipe.cli.display import print_summary
from mvpipe.cli.exits import EXIT_FAILED, guarded
from mvpipe.cli.runs import follow
from mvpipe.devstack import cluster
from mvpipe.errors import InvalidInput
from mvpipe.media.files import writable_directory
from mvpipe.models import ProjectStatus, ProjectView

if TYPE_CHECKING:
    from mvpipe.devstack.demo import DemoOutput

#: The most worker processes `mvpipe stack` starts.
MAX_CONCURRENCY = 64


def _note(text: str) -> None:
    click.echo(text, err=True)


@click.command(short_help="Start the whole local stack until Ctrl-C.")
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    help="Where the stack keeps data and logs [default: a new temporary directory].",
)
@click.option(
    "--concurrency",
    default=2,
    show_default=True,
    help=f"Worker processes (1 to {MAX_CONCURRENCY}).",
)
@click.option("--no-flower", is_flag=True, help="Do not start Flower.")
def stack(workdir: Path | None, concurrency: int, no_flower: bool) -> None:
    """Start the whole local stack (Redis, state server, worker, beat, Flower) until Ctrl-C,
    SIGTERM or SIGHUP, and print the variables that point other shells at it."""
    guarded(lambda: _check_concurrency(concurrency))
    if workdir is not None:
        guarded(lambda: writable_directory(workdir, "--workdir"))
    where = workdir or Path(tempfile.mkdtemp(prefix="mvpipe-stack-"))

    def ready(env: dict[str, str]) -> None:
        _note("\nPoint other shells at this stack with:")
        for key, value in env.items():
            click.echo(f"export {key}={value}")
        _note("\nRunning; Ctrl-C stops everything.")

    guarded(
        lambda: cluster.serve(
            where, concurrency=concurrency, flower=not no_flower, say=_note, ready=ready
        )
    )
    _note("stack stopped")


def _check_concurrency(value: int) -> None:
    if not 1 <= value <= MAX_CONCURRENCY:
        raise InvalidInput(f"--concurrency must be from 1 to {MAX_CONCURRENCY}, not {value}")


@click.command(short_help="Make a music video end to end on a local stack.")
@click.option(
    "--seconds",
    default=30.0,
    show_default=True,
    help="Length of the synthesized song in seconds (a song's limits: 5 to 600).",
)
@click.option(
    "--bpm", default=120.0, show_default=True, help="Tempo of the synthesized song (20 to 400)."
)
@click.option(
    "--keep", is_flag=True, help="Keep the stack running afterwards (explore it in Flower)."
)
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=Path("demo-output"),
    show_default=True,
    help="Where the music video (and each scene's working clip) is written.",
)
@click.option(
    "--lip-sync/--no-lip-sync",
    default=True,
    show_default=True,
    help="Let the planner mark performance scenes for lip-sync.",
)
def demo(seconds: float, bpm: float, keep: bool, output: Path, lip_sync: bool) -> None:
    """Make a music video end to end on the local stack from a synthesized song, then stop.

    The song (drums and bass) is made by code; its beats decide the scenes; each scene gets a
    clip from the local provider, cut to its slot; every third scene is lip-synced (the local
    lip-sync draws a mouth and a level meter that follow the song); the clips and the song
    become OUTPUT/music-video.mp4 (H.264 + AAC).
    """
    from mvpipe.devstack.demo import check_demo, run_demo

    guarded(lambda: check_demo(seconds=seconds, output=output))
    view = guarded(
        lambda: run_demo(
            seconds=seconds, bpm=bpm, lip_sync=lip_sync, output=output, keep=keep, show=_Shown()
        )
    )
    sys.exit(0 if view.status == ProjectStatus.COMPLETED else EXIT_FAILED)


class _Shown:
    """The demo on a terminal: notes and the progress bars on standard error, the project and
    where its files went on standard output."""

    def note(self, text: str) -> None:
        _note(text)

    def follow(self, project_id: str, timeout: float) -> ProjectView:
        return follow(project_id, timeout)

    def finished(self, view: ProjectView) -> None:
        click.echo("")
        print_summary(view)

    def wrote(self, output: DemoOutput) -> None:
        click.echo(f"\nmusic video: {output.video.resolve()}")
        click.echo(f"             {output.described}")
        if output.scenes is not None:
            click.echo(f"scene clips: {output.scenes.resolve()}/")
        click.echo(f"play it:     ffplay {output.video}")
        click.echo(
            "             (or mpv / vlc with the same path, or open the file in a web browser)"
        )

    def kept(self, project_id: str) -> None:
        click.echo(f"\nmore: mvpipe fetch {project_id} --scene 1 (with the stack's env)")
        _note("Stack kept running; Ctrl-C stops it.")
