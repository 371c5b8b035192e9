"""Crash points for fault drills: `MVPIPE_FAILPOINTS=after_submit,after_upload`.

When a named point is reached, the process is SIGKILLed — once per point and state directory,
across all processes (the first to create the marker file dies), so a drill crashes exactly one
execution at exactly that moment. Unset in production: then `reached` is one dict lookup.
"""

from __future__ import annotations

import os
import signal

from mvpipe.settings import get_settings

#: The moments a drill can crash a worker at.
POINTS = ("after_submit", "after_record", "during_poll", "after_upload")


def reached(name: str) -> None:
    wanted = os.environ.get("MVPIPE_FAILPOINTS")
    if not wanted or name not in wanted.split(","):
        return
    marker = get_settings().state_dir / "failpoints" / name
    marker.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
