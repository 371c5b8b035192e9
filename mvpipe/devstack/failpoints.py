"""Crash and hold points for fault drills: `MVPIPE_FAILPOINTS=after_submit,before_record=hold`.

When a named point is reached, the process is SIGKILLed — once per point and state directory,
across all processes (the first to create the marker file dies), so a drill crashes exactly one
execution at exactly that moment. On Celery's threads pool the process is the whole worker: every
execution its threads were running dies with it, as they would in a crash of that worker (nothing
restarts it: a drill starts another). A point named `name=hold` instead stops that one execution
there until the drill says go (`release`), so the drill can break something (pause the state
server) exactly while the execution is at that point. A point named `name=raise` raises
`FailpointError` (an error mvpipe does not expect) every time it is reached: a bug that never
goes away, for drills of what a task does when it gives up. `name=raise:N` raises the first N
times it is reached, across all processes (counted by marker files, as the kills are), then
lets every execution go on: a bug repaired after N tries, with no drill racing to repair it.
`name=kill:N` kills the first N processes that reach it (counted alike): work whose every try
kills its process (a song or clip whose decode runs out of memory), its tries counted by the
drill (`killed`); N larger than any bound the core keeps, its tries end only when it gives up.

The core names its points through `mvpipe.hooks`; `arm` routes them here, once, in a process
whose environment names any (the local stack's workers load `devstack.worker`, which arms them).
A production worker never imports this package: its `hooks.reached` stays one attribute check.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from pathlib import Path

from mvpipe import hooks
from mvpipe.settings import get_settings

#: The moments a drill can crash a worker at.
POINTS = (
    "after_submit",
    "after_record",
    "during_poll",
    "after_upload",
    "during_cut",
    "during_assembly",
)
#: The lip-sync stage's own crash points (the same moments of the same paid machine).
LIPSYNC_POINTS = ("lipsync_after_submit", "lipsync_during_poll", "lipsync_after_upload")
#: The modes that act on the first N reaches only (`name=mode:N`).
COUNTED = ("raise", "kill")
#: How long a held execution waits for the drill before it goes on by itself.
HOLD_SECONDS = 120.0


class FailpointError(RuntimeError):
    """Raised at a `name=raise` point: not an `MvpipeError`, so the core meets it as a bug."""


def _modes(wanted: str) -> dict[str, str]:
    """`name[=mode]` entries, comma-separated; a bare name kills."""
    modes = {}
    for entry in filter(None, wanted.split(",")):
        name, _, mode = entry.partition("=")
        kind, counted, times = mode.partition(":")
        if counted and not (kind in COUNTED and times.isdigit() and int(times) > 0):
            # Said when armed: met at the point, a bad count would look like the core's bug
            raise ValueError(f"failpoint {name}: {mode!r} is not raise:N or kill:N with N >= 1")
        modes[name] = mode or "kill"
    return modes


def marker_dir(state_dir: Path) -> Path:
    return state_dir / "failpoints"


def arm() -> None:
    """Route the core's points here if `MVPIPE_FAILPOINTS` names any (read once, here)."""
    modes = _modes(os.environ.get("MVPIPE_FAILPOINTS", ""))
    hooks.install(functools.partial(_reached, modes) if modes else None)


def _reached(modes: dict[str, str], name: str) -> None:
    mode = modes.get(name)
    if mode is None:
        return
    markers = marker_dir(get_settings().state_dir)
    markers.mkdir(parents=True, exist_ok=True)
    if mode == "raise":  # every time; the marker only tells the drill it was reached
        (markers / name).touch()
        raise FailpointError(f"failpoint {name} raised")
    kind, counted, times = mode.partition(":")
    if counted:
        if not _take_one_of(markers, f"{name}.{kind}", int(times)):
            return
        (markers / name).touch()
        if kind == "raise":
            raise FailpointError(f"failpoint {name} raised")
        os.kill(os.getpid(), signal.SIGKILL)
    try:
        fd = os.open(markers / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    if mode == "hold":
        deadline = time.monotonic() + HOLD_SECONDS
        while not (markers / f"{name}.go").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _take_one_of(markers: Path, turns: str, times: int) -> bool:
    """Whether this reach is one of the first `times` of `turns` (each creates the marker of its
    turn, which no other process can then create)."""
    for turn in range(1, times + 1):
        try:
            os.close(os.open(markers / f"{turns}-{turn}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        return True
    return False


def raised(state_dir: Path, name: str) -> int:
    """How many times the `name=raise:N` point has raised so far."""
    return len(list(marker_dir(state_dir).glob(f"{name}.raise-*")))


def killed(state_dir: Path, name: str) -> int:
    """How many processes the `name=kill:N` point has killed so far."""
    return len(list(marker_dir(state_dir).glob(f"{name}.kill-*")))


def held(state_dir: Path, name: str) -> bool:
    """Whether an execution has reached the hold point `name` (it waits there for `release`)."""
    return (marker_dir(state_dir) / name).exists()


def release(state_dir: Path, name: str) -> None:
    """Let the execution held at `name` go on."""
    (marker_dir(state_dir) / f"{name}.go").touch()
