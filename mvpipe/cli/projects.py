"""Commands over projects themselves: create, status, projects (the listing), fetch."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from mvpipe.cli.display import print_summary
from mvpipe.cli.exits import EXIT_INVALID, fail, guarded
from mvpipe.cli.lazy import api
from mvpipe.errors import InvalidInput
from mvpipe.media.files import read_bounded, within
from mvpipe.models import (
    DEFAULT_LIST_LIMIT,
    MAX_BUDGET_USD,
    MAX_CONCEPT,
    MAX_LIST_LIMIT,
    MAX_SCENES,
    MAX_TITLE,
    ProjectStatus,
    printable,
    validate_project_id,
)

#: The largest --scene-file read: 999 scenes with full prompts fit with room to spare.
MAX_SCENE_FILE_BYTES = 16 * 1024 * 1024


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    """A user's file (`-`: standard input), at most `limit` bytes."""
    if str(path) == "-":
        return within(sys.stdin.buffer.read(limit + 1), limit, what)
    return read_bounded(path, limit, what)


def _read_concept(path: Path) -> str:
    """The concept from a file: UTF-8 text (its length is checked with the rest of the spec).
    Windows line ends become `\n`: a file saved with them is text, not control characters."""
    data = _read_bounded(path, 4 * MAX_CONCEPT, "--concept-file")  # 4 bytes per character at most
    try:
        return data.decode("utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError:
        raise InvalidInput(f"--concept-file {path} is not UTF-8 text") from None


def _read_scenes(path: Path) -> Any:
    """The scene specs from a JSON file (checked by the API like any other scenes)."""
    data = _read_bounded(path, MAX_SCENE_FILE_BYTES, "--scene-file")
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"--scene-file is not valid JSON: {exc}") from None
    except RecursionError:  # arrays or objects nested past the parser's depth
        raise InvalidInput("--scene-file is nested too deeply to be scene specs") from None


@click.command(short_help="Create a project and print its id.")
@click.option("--title", required=True, help=f"The video's title (at most {MAX_TITLE} characters).")
@click.option(
    "--concept", help=f"Concept or lyrics, at most {MAX_CONCEPT:,} characters (or --concept-file)."
)
@click.option(
    "--concept-file",
    type=click.Path(path_type=Path, allow_dash=True),
    help="Read the concept/lyrics from a file (- reads standard input).",
)
@click.option(
    "--scenes",
    "scene_count",
    type=click.IntRange(1, MAX_SCENES),
    help="Number of scenes the planner makes [default: MVPIPE_DEFAULT_SCENES, 8]; not with "
    "--song, whose beats decide.",
)
@click.option(
    "--scene-file",
    type=click.Path(path_type=Path, allow_dash=True),
    help="JSON list of scene specs ({prompt, duration_seconds, ...}; - reads standard input); "
    "skips planning.",
)
@click.option(
    "--provider", help="Video provider: local, veo or replicate [default: MVPIPE_PROVIDER, local]."
)
@click.option(
    "--song",
    type=click.Path(path_type=Path),
    help="Audio file (WAV, MP3, M4A, raw AAC, FLAC, OGG) of MVPIPE_SONG_MIN_SECONDS [5] to "
    "MVPIPE_SONG_MAX_SECONDS [600] seconds and at most MVPIPE_SONG_MAX_BYTES [50 MiB]; its beats "
    "decide the scenes.",
)
@click.option("--lip-sync", is_flag=True, help="Let the planner mark scenes for lip-sync (--song).")
@click.option(
    "--budget",
    "budget_usd",
    type=float,
    help=f"Spending limit in US dollars, 0 to {MAX_BUDGET_USD:,} [default: no limit].",
)
def create(
    title: str,
    concept: str | None,
    concept_file: Path | None,
    scene_count: int | None,
    scene_file: Path | None,
    provider: str | None,
    song: Path | None,
    lip_sync: bool,
    budget_usd: float | None,
) -> None:
    """Create a project and print its id (nothing runs until `mvpipe run`).

    Give the concept with --concept or --concept-file; the scenes come from the planner
    (--scenes), from a song's beats (--song) or from --scene-file. Bad input is refused before
    anything is written."""
    if concept is not None and concept_file is not None:
        fail("give --concept or --concept-file, not both", EXIT_INVALID)
    if concept_file is not None:
        concept = guarded(lambda: _read_concept(concept_file))
    if concept is None:
        fail("give --concept or --concept-file", EXIT_INVALID)
    scenes = None if scene_file is None else guarded(lambda: _read_scenes(scene_file))
    project_id = guarded(
        lambda: api.create_project(
            title,
            concept,
            scene_count=scene_count,
            scenes=scenes,
            provider=provider,
            song=song,
            lip_sync=lip_sync,
            budget_usd=budget_usd,
        )
    )
    click.echo(project_id)


@click.command(short_help="Show a project and each of its scenes.")
@click.argument("project_id")
@click.option("--json", "as_json", is_flag=True, help="Print the full project as JSON.")
def status(project_id: str, as_json: bool) -> None:
    """Show a project: its status, cost against its budget, song and final video, and each
    scene's slot (seconds), status, tries and stored clips."""
    view = guarded(lambda: api.get_project(project_id))
    if as_json:
        click.echo(view.model_dump_json(indent=2))
    else:
        print_summary(view)


@click.command(short_help="List the newest projects, newest last.")
@click.option(
    "--status",
    "status_",
    type=click.Choice([s.value for s in ProjectStatus]),
    help="Only projects with this status (served by the status index).",
)
@click.option(
    "--limit",
    default=DEFAULT_LIST_LIMIT,
    show_default=True,
    type=click.IntRange(1, MAX_LIST_LIMIT),
    help="Show at most this many, the newest (newest last).",
)
def projects(status_: str | None, limit: int) -> None:
    """List the newest projects, newest last: id, status, created, scenes completed/planned,
    title."""
    found = guarded(lambda: api.list_projects(status_, limit=limit))
    if len(found) == limit:
        click.echo(f"the newest {limit} project(s); --limit shows more", err=True)
    for project in found:
        planned = "?" if project.scene_count is None else project.scene_count  # a song decides
        # A title may hold a newline: each project stays on its one line.
        click.echo(
            f"{project.project_id}  {project.status:<17} {project.created_at.isoformat()}  "
            f"{project.completed_scenes}/{planned}  {printable(project.title, one_line=True)}"
        )


@click.command(short_help="Download the final video or a scene's clip.")
@click.argument("project_id")
@click.argument("file", required=False, type=click.Path(path_type=Path))
@click.option(
    "--scene",
    "sequence",
    type=int,
    help="A scene's clip (its number, from 1) instead of the final video.",
)
@click.option(
    "--stage",
    type=click.Choice(["working", "original", "lipsync"]),
    help="Which clip of --scene [working].",
)
def fetch(project_id: str, file: Path | None, sequence: int | None, stage: str | None) -> None:
    """Download the final video (or a scene's clip) to FILE.

    FILE defaults to PROJECT_ID-music-video.mp4 (PROJECT_ID-scene-NNN-STAGE.mp4 for a scene)
    in the current directory; a directory receives the file under that name.
    """
    if stage is not None and sequence is None:
        fail("--stage needs --scene", EXIT_INVALID)
    chosen = "final" if sequence is None else (stage or "working")
    dest = file if file is not None else Path.cwd()
    from mvpipe.cli.progress import working

    guarded(lambda: validate_project_id(project_id))  # refused before the spinner shows it
    what = "the final video" if sequence is None else f"scene {sequence}'s {chosen} clip"
    with working(f"fetching {what} of {project_id}", shown=True):
        written = guarded(lambda: api.download(project_id, dest, sequence=sequence, stage=chosen))
    click.echo(f"wrote {written}")
