"""Named moments in the pipeline and the store that a drill harness can act on (no-op unless
installed).

The core sits under the harness in the layering, so it cannot import it; the harness installs
its handler here instead (only in the processes a drill starts), and the core only names the
moment it reached.
"""

from __future__ import annotations

from collections.abc import Callable

#: Called with the point's name; `None` (production) makes `reached` one attribute check.
_handler: Callable[[str], None] | None = None


def install(handler: Callable[[str], None] | None) -> None:
    """Route every `reached(name)` to `handler` (`None` makes them no-ops again)."""
    global _handler
    _handler = handler


def reached(name: str) -> None:
    """Tell the installed handler, if any, that this process is at the point `name`."""
    if _handler is not None:
        _handler(name)
