"""The local provider's clips, rendered while their jobs run.

A remote video API makes its clip on its own machines while the job runs; its poll only hands
over what is done. The local provider renders on the workers' machine, so when it renders
decides whose time it takes: in the poll that found the job done, it sat in the worker's
completion step (~15 ms a clip at its size, one after another as a wave of jobs came due). So a
job with time to spare is rendered halfway through its latency, by a timer thread of the
process that submitted it, into a file beside the provider's job store; the poll that finds
the job done takes that file, and renders inline only when it is missing (a job too short to
render ahead, a process gone before its timer fired).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

#: Jobs shorter than this are rendered by the poll that finds them done, as before.
MIN_AHEAD_SECONDS = 0.5

_OPERATION = re.compile(r"^[A-Za-z0-9-]{1,100}$")


class Renders:
    """Clips rendered ahead, one file per operation id, shared by every process."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, operation_id: str) -> Path:
        if not _OPERATION.match(operation_id):
            raise ValueError(f"not a local operation id: {operation_id!r}")
        return self.directory / f"{operation_id}.mp4"

    def schedule(
        self,
        operation_id: str,
        latency: float,
        render: Callable[[], bytes],
        wanted: Callable[[], bool],
    ) -> bool:
        """Render halfway through a job of `latency` seconds on a daemon timer (the process
        goes on meanwhile); `wanted` is asked first (a cancelled or failed job needs no clip),
        and again once the clip is stored: a job cancelled meanwhile, or one whose end came
        first (its poll rendered the clip itself), would leave the file to nobody. False when
        the job is too short to render ahead."""
        if latency < MIN_AHEAD_SECONDS:
            return False
        due = time.time() + latency

        def run() -> None:
            with contextlib.suppress(Exception):  # whatever is missing, the poll renders
                if wanted():
                    self.store(operation_id, render())
                    if not wanted() or time.time() >= due:
                        self.discard(operation_id)

        timer = threading.Timer(latency / 2, run)
        timer.daemon = True
        timer.start()
        return True

    def store(self, operation_id: str, clip: bytes) -> None:
        """Written whole or not at all: a reader never sees half a clip."""
        final = self.path(operation_id)
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}")
        partial.write_bytes(clip)
        os.replace(partial, final)

    def discard(self, operation_id: str) -> None:
        """Drop the clip of a job that will never be polled done (cancelled)."""
        with contextlib.suppress(FileNotFoundError):
            self.path(operation_id).unlink()

    def take(self, operation_id: str, render: Callable[[], bytes]) -> bytes:
        """The clip rendered ahead (its file removed), else one rendered now."""
        path = self.path(operation_id)
        try:
            clip = path.read_bytes()
        except FileNotFoundError:
            return render()
        self.discard(operation_id)
        return clip
