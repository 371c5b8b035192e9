"""`api` for the commands, imported on its first use so `--help` stays instant."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any


class _Lazy:
    """A module imported on its first use."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


if TYPE_CHECKING:
    from mvpipe import api
else:
    api = _Lazy("mvpipe.api")

__all__ = ["api"]
