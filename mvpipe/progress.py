"""A live one-line progress display for a running project (used by `mvpipe run --wait`)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from mvpipe.models import ProjectView, SceneStatus


def progress_line(view: ProjectView, elapsed: float, width: int = 30) -> str:
    total = len(view.scenes) or view.scene_count
    done = sum(1 for s in view.scenes if s.status == SceneStatus.COMPLETED)
    failed = sum(1 for s in view.scenes if s.status == SceneStatus.FAILED)
    in_flight = sum(1 for s in view.scenes if s.status == SceneStatus.PROCESSING)
    finished = done + failed
    filled = int(width * finished / total) if total else 0
    bar = "#" * filled + "-" * (width - filled)
    if total and 0 < finished < total:
        eta = f"{elapsed / finished * (total - finished):.0f}s"
    else:
        eta = "--"
    scenes = f"{finished}/{total}" if total else "planning"
    cost = f"${view.committed_cost_usd:,.2f}"
    if view.budget_usd is not None:
        cost += f"/${view.budget_usd:,.2f}"
    return (
        f"[{bar}] {scenes} done={done} failed={failed} in-flight={in_flight} "
        f"cost={cost} status={view.status} elapsed={elapsed:.0f}s eta={eta}"
    )


class ProgressPrinter:
    """Rewrites one terminal line; prints plain lines when not attached to a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.tty = self.stream.isatty()
        self._last = ""

    def update(self, view: ProjectView) -> None:
        line = progress_line(view, time.monotonic() - self.started)
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
        elif line.split(" elapsed=")[0] != self._last.split(" elapsed=")[0]:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._last = line

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
