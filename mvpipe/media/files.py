"""Files that appear whole or not at all."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mvpipe.errors import InvalidInput


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


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """A user's file, at most `limit` bytes: a larger one, or one that grows while it is read,
    is refused without reading more than `limit` + 1 bytes of it."""
    try:
        with path.open("rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise InvalidInput(f"{what} {path} is not a file")
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise InvalidInput(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise InvalidInput(f"{what} {path} is not a file") from None
    except OSError as exc:
        raise InvalidInput(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    return within(data, limit, what)


def within(data: bytes, limit: int, what: str) -> bytes:
    """`data` if it holds at most `limit` bytes (read as `limit` + 1 at most)."""
    if len(data) > limit:
        raise InvalidInput(f"{what} is too large: more than {limit:,} bytes")
    return data
