"""Files that appear whole or not at all."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mvpipe.errors import InvalidInput

#: The temporary files' names begin so: hidden, and plainly not the finished file.
PARTIAL_PREFIX = ".partial-"


@contextlib.contextmanager
def written_atomically(dst: Path, *, shared: bool = False) -> Iterator[Path]:
    """A temporary path beside `dst`, renamed onto it only if the block succeeds.

    A crash or an error mid-write never leaves a half-written cut or video under the real name,
    which an uploader could mistake for a finished one. The file is its owner's alone (a
    worker's cuts and videos); `shared`, for a file handed to the user, it gets the mode any
    new file gets (0o666 less the umask), as the rename keeps the temporary file's mode.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if shared:
        tmp = _created_beside(dst, 0o666)
    else:
        fd, name = tempfile.mkstemp(prefix=PARTIAL_PREFIX, suffix=dst.suffix, dir=dst.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _created_beside(dst: Path, mode: int) -> Path:
    """A new empty file of a fresh name beside `dst`, created with `mode` (the umask and the
    directory's default ACL apply, as to any new file: `mkstemp` would make it 0o600)."""
    for _ in range(100):
        path = dst.parent / f"{PARTIAL_PREFIX}{secrets.token_hex(8)}{dst.suffix}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            continue
        os.close(fd)
        return path
    raise FileExistsError(f"no free temporary name beside {dst}")


def user_path(value: str | Path, what: str, *, expand: bool = False) -> Path:
    """A path a user gave (`expand`: `~` and `~user` expanded), or `InvalidInput` saying why it
    names no file: a NUL byte, or a `~user` with no home directory (the OS would raise
    ValueError and RuntimeError, read as a crash)."""
    text = str(value)
    if "\x00" in text:
        raise InvalidInput(f"{what} {text!r}: a path cannot hold a NUL byte")
    if not expand:
        return Path(text)
    try:
        return Path(text).expanduser()
    except RuntimeError:
        head = Path(text).parts[0]
        raise InvalidInput(f"{what} {text}: {head} names no home directory") from None


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """A user's file, at most `limit` bytes: a larger one, or one that grows while it is read,
    is refused without reading more than `limit` + 1 bytes of it."""
    path = user_path(path, what)
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


def writable_directory(path: Path, what: str) -> None:
    """A directory a user named (`what`: its option) that a command writes into later: made
    (with its parents), a file written in it and removed, and the directories it made removed
    again. The write itself is the test (permission bits say nothing for root, and nothing of a
    read-only or virtual file system), and a command that fails later leaves nothing behind
    (its own write makes them again). `InvalidInput` says why not."""
    if path.exists() and not path.is_dir():
        raise InvalidInput(f"{what} {path} exists and is not a directory")
    made = [p for p in (path.absolute(), *path.absolute().parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".mvpipe-probe-") as probe:
            probe.write(b"x")
            probe.flush()
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise InvalidInput(f"{what} {path}: cannot write there ({reason})") from None
    finally:
        for directory in made:  # the deepest first
            with contextlib.suppress(OSError):
                directory.rmdir()


def within(data: bytes, limit: int, what: str) -> bytes:
    """`data` if it holds at most `limit` bytes (read as `limit` + 1 at most)."""
    if len(data) > limit:
        raise InvalidInput(f"{what} is too large: more than {limit:,} bytes")
    return data
