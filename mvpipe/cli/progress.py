"""Live progress of a run, one bar per stage (used by `mvpipe run --wait`), drawn by rich; and
the progress of a long command (`counted`, `working`), shown on a terminal only.

`stage_counts` is the pure part (what each bar shows); `StageProgress` draws it. On a terminal the
bars update in place; elsewhere (a log, a pipe) rich prints them once, when the run is over.
Their text is shown as written, never read as rich's markup: it may quote a user's input.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from mvpipe.models import ProjectView, SceneStatus


@dataclass(frozen=True)
class StageCount:
    """How many of a stage's outputs exist, out of how many the project needs."""

    stage: str
    done: int
    total: int


def stage_counts(view: ProjectView) -> list[StageCount]:
    """Generated, cut, lip-synced (only when some scene lip-syncs) and assembled."""
    scenes = view.scenes
    total = len(scenes) or view.scene_count
    counts = [
        StageCount("generated", sum(1 for s in scenes if s.original_video_clip_s3_key), total),
        StageCount("cut", sum(1 for s in scenes if s.working_video_clip_s3_key), total),
    ]
    lip_sync = [s for s in scenes if s.lip_sync]
    if lip_sync:
        done = sum(1 for s in lip_sync if s.lip_synced_video_clip_s3_key)
        counts.append(StageCount("lip-synced", done, len(lip_sync)))
    counts.append(StageCount("assembled", 1 if view.final_video_s3_key else 0, 1))
    return counts


def scene_summary(view: ProjectView) -> str:
    failed = sum(1 for s in view.scenes if s.status == SceneStatus.FAILED)
    working = sum(1 for s in view.scenes if s.status == SceneStatus.PROCESSING)
    if not view.scenes:
        return f"{view.status} (planning)"
    return f"{view.status}: {working} in progress, {failed} failed"


def cost_note(view: ProjectView) -> str:
    """The money, short enough for a bar's note: committed, and of what budget."""
    spent = f"cost ${view.committed_cost_usd:,.2f}"
    return spent if view.budget_usd is None else f"{spent} of ${view.budget_usd:,.2f}"


def money(view: ProjectView) -> str:
    """What the project has committed, against its budget if it has one."""
    spent = f"${view.committed_cost_usd:,.2f} committed"
    if view.budget_usd is None:
        return f"{spent}, no budget"
    return f"{spent} of a ${view.budget_usd:,.2f} budget"


class StageProgress:
    """One bar per stage plus the project's status, redrawn from each view it is given."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.console = Console(file=stream, stderr=stream is None)
        self.progress = Progress(
            TextColumn("{task.description:<11}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}", markup=False),
            TimeElapsedColumn(),
            console=self.console,
        )
        self.tasks: dict[str, TaskID] = {}
        self.progress.start()

    def update(self, view: ProjectView) -> None:
        notes = {"generated": scene_summary(view), "assembled": cost_note(view)}
        for count in stage_counts(view):
            task = self.tasks.get(count.stage)
            if task is None:
                task = self.progress.add_task(count.stage, total=count.total or None, note="")
                self.tasks[count.stage] = task
            self.progress.update(
                task,
                completed=count.done,
                total=count.total or None,
                note=notes.get(count.stage, ""),
            )

    def close(self) -> None:
        self.progress.stop()


def _terminal(shown: bool) -> Console | None:
    """Standard error's console when progress is wanted there: asked for (`shown`; not with
    --json) and a terminal (a log or a pipe gets nothing, so what it reads is unchanged)."""
    console = Console(stderr=True)
    return console if shown and console.is_terminal else None


class Tell:
    """One bar's callback: told how many are done, and of how many (None: not known yet)."""

    def __init__(self, bar: Progress, task: TaskID) -> None:
        self.bar, self.task = bar, task

    def __call__(self, done: int, of: int | None = None) -> None:
        self.bar.update(self.task, completed=done, total=of)


@contextmanager
def counted(*descriptions: str, shown: bool) -> Iterator[list[Tell] | None]:
    """A bar per description on standard error while the block runs, each told (done, of) by
    its callback, yielded in the same order; None when no bar is shown (see `_terminal`)."""
    console = _terminal(shown)
    if console is None:
        yield None
        return
    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    tells = [Tell(bar, bar.add_task(description, total=None)) for description in descriptions]
    with bar:
        yield tells


@contextmanager
def working(description: str, *, shown: bool) -> Iterator[None]:
    """A spinner with the time spent on standard error while the block runs (see `_terminal`):
    for a step that cannot count its progress, such as a download read whole."""
    console = _terminal(shown)
    if console is None:
        yield
        return
    with console.status(Text(description)):  # shown as written: a user's id is no markup
        yield
