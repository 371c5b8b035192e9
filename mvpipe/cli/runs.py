"""Commands that start, follow and stop a project's run: run, regenerate, cancel."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

import click

from mvpipe.cli.display import print_summary
from mvpipe.cli.exits import (
    EXIT_FAILED,
    EXIT_TIMEOUT,
    fail,
    guarded,
    wait_options,
    wait_seconds,
)
from mvpipe.cli.lazy import api
from mvpipe.errors import Timeout
from mvpipe.models import ProjectStatus, ProjectView

#: How long `--wait` follows a run by default.
RUN_WAIT_SECONDS = 3600.0


@click.command(short_help="Start (or join) a project's run.")
@click.argument("project_id")
@wait_options("Follow the run with a live progress bar until it ends.", RUN_WAIT_SECONDS)
def run(project_id: str, wait: bool, timeout: float | None) -> None:
    """Start (or join) a project's run: plan, generate, cut, lip-sync, assemble; the work runs
    on the cluster's workers, the command returns at once unless --wait.

    With --wait it exits 0 when the project completed, 1 when it failed, 5 on --timeout."""
    seconds = _started(lambda: api.run_project(project_id), wait, timeout)
    if wait:
        _follow_and_exit(project_id, seconds)


@click.command(short_help="Generate one scene again (paid again).")
@click.argument("project_id")
@click.argument("sequence", type=int)
@wait_options("Follow the run until the scene is done.", RUN_WAIT_SECONDS)
def regenerate(project_id: str, sequence: int, wait: bool, timeout: float | None) -> None:
    """Generate scene SEQUENCE (its number, from 1) again: one new paid generation for that
    scene only, and a new paid lip-sync when the scene is lip-synced (`estimate PROJECT_ID
    --scene SEQUENCE` prices both); the run then cuts it and assembles a new final video.

    With --wait it exits 0 when the project completed, 1 when it failed, 5 on --timeout."""
    seconds = _started(lambda: api.regenerate_scene(project_id, sequence), wait, timeout)
    if wait:
        _follow_and_exit(project_id, seconds)


@click.command(short_help="Cancel a project's run; `run` resumes it.")
@click.argument("project_id")
def cancel(project_id: str) -> None:
    """Cancel a project's run: queued work stops, provider jobs in flight are stopped where
    the provider allows; what is done is kept and a later `run` resumes from there."""
    view = guarded(lambda: api.cancel_project(project_id))
    click.echo(f"cancelled; project is {view.status}")


def _started(start: Callable[[], Any], wait: bool, timeout: float | None) -> float:
    """Check --timeout before anything starts, then start and name the run; the seconds
    --wait follows it for."""
    seconds = wait_seconds(wait, timeout, RUN_WAIT_SECONDS)
    result = guarded(start)
    click.echo(f"run {result.id}", err=True)
    return seconds


def _follow_and_exit(project_id: str, timeout: float) -> NoReturn:
    """`--wait`: follow the run, print the project, exit 0 if it completed, else 1."""
    view = follow(project_id, timeout)
    print_summary(view)
    sys.exit(0 if view.status == ProjectStatus.COMPLETED else EXIT_FAILED)


def follow(project_id: str, timeout: float) -> ProjectView:
    """Show each stage's progress until the project's run is over; returns the final view."""
    from mvpipe.cli.progress import StageProgress

    def over() -> ProjectView | None:
        try:
            return api.wait_project(project_id, timeout=0.5)
        except Timeout:
            return None

    progress = StageProgress()
    deadline = time.monotonic() + timeout
    try:
        while True:
            view = guarded(over)
            if view is not None:
                progress.update(view)
                return view
            progress.update(guarded(lambda: api.get_project(project_id)))
            if time.monotonic() > deadline:
                fail(f"project {project_id} still running after {timeout:.0f}s", EXIT_TIMEOUT)
    finally:
        progress.close()
