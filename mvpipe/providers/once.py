"""A value built on its first use, once, however many threads of a worker ask at the same time.

SDK clients are built lazily (a provider is constructed where no credentials are needed) and are
shared by the threads of a threads-pool worker: two threads asking first must not build two.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Once(Generic[T]):
    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._built: list[T] = []  # empty until built: a built None is a value too
        self._lock = threading.Lock()

    def get(self) -> T:
        if not self._built:
            with self._lock:
                if not self._built:
                    self._built.append(self._build())
        return self._built[0]
