"""Files that appear whole or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def written_atomically(dst: Path) -> Iterator[Path]:
    """A temporary path beside `dst`, renamed onto it only if the block succeeds.

    A crash or an error mid-write never leaves a half-written cut or video under the real name,
    which an uploader could mistake for a finished one.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".partial-", suffix=dst.suffix, dir=dst.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
