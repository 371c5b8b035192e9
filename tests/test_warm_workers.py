"""Workers forked from the test session's warm parent (`tests.warm_workers`) are owned like
spawned ones: a session and process group of their own, none of the parent's pipes, their exit
code seen by the test, and the same exit and output as `python -m celery` for the same argv."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from mvpipe.devstack.localstack import LocalStack, Starting, launch_worker
from mvpipe.errors import ConfigurationError
from tests.conftest import Workers
from tests.warm_workers import ForkedProcess, WarmParent

pytestmark = pytest.mark.integration


def _fds(pid: int) -> set[str]:
    """What each of the process's file descriptors points at (`pipe:[inode]` for a pipe)."""
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed since it was listed
            found.add(os.readlink(fd))
    return found


def test_a_forked_worker_leads_its_own_group_and_holds_none_of_its_parents_pipes(
    start_workers: Callable[..., Workers], warm_parent: WarmParent
) -> None:
    service = start_workers(concurrency=1).service
    pid = service.proc.pid
    assert os.getsid(pid) == pid and os.getpgid(pid) == pid
    assert Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(
        warm_parent.pid
    )
    parents_pipes = {fd for fd in _fds(warm_parent.pid) if fd.startswith("pipe:")}
    assert parents_pipes  # its requests, its replies, its wakeup
    assert not parents_pipes & _fds(pid)
    assert os.readlink(f"/proc/{pid}/fd/0") == os.devnull
    assert os.readlink(f"/proc/{pid}/fd/2") == str(service.log_path)
    service.kill()
    assert service.proc.returncode == -signal.SIGKILL


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_worker_whose_interpreter_reads_other_settings_at_its_start_is_spawned(
    start_workers: Callable[..., Workers], warm_parent: WarmParent
) -> None:
    """`PYTHONHASHSEED`, `PYTHONPATH`, the locale...: read when an interpreter starts, so a fork
    of the warm parent would run with the parent's; such a worker is spawned instead."""
    other = start_workers(concurrency=1, env={"PYTHONHASHSEED": "123"}).service
    assert _parent_of(other.proc.pid) == os.getpid()
    assert other.proc.pid != warm_parent.pid and not isinstance(other.proc, ForkedProcess)


def test_a_worker_that_cannot_start_exits_as_a_spawned_one_does(
    stack: LocalStack, warm_parent: WarmParent, tmp_path: Path
) -> None:
    def failed(starting: Starting) -> tuple[int | None, str]:
        with pytest.raises(ConfigurationError, match="process exited with code"):
            starting.ready()
        return starting.service.proc.returncode, starting.service.log_text()

    env = dict(os.environ)
    forked = failed(
        launch_worker(env, tmp_path / "forked.log", pool="nosuch", spawn=warm_parent.spawn)
    )
    spawned = failed(launch_worker(env, tmp_path / "spawned.log", pool="nosuch"))
    assert forked == spawned
    assert forked[0] == 2 and "python -m celery" in forked[1]  # click's usage error


def test_only_celery_commands_fork_from_the_warm_parent(
    warm_parent: WarmParent, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="only `python -m celery`"):
        warm_parent.spawn("x", ["/bin/true"], tmp_path / "x.log")
