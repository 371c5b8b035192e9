"""Processes a test starts in its body, stopped by a fixture (`processes` in conftest) after
the test however it ends: each runs in a process group of its own, which is signalled, waited
on with a timeout, then killed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

from mvpipe.devstack.localstack import Service


def stop_group(
    proc: subprocess.Popen[Any], *, signum: int = signal.SIGTERM, timeout: float = 60.0
) -> None:
    """Stop a process started in a session of its own, and everything left in its group:
    `signum` (after SIGCONT, should it be paused), up to `timeout` s to exit, then SIGKILL.
    Reaped either way, so no zombie outlives the test."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    # The leader gone, its children may remain in its group (whose id stays taken meanwhile).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=timeout)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


class Processes:
    """What a test starts as real processes. The `processes` fixture stops every one after the
    test (`stop_group`, or `Service.stop` for a service of the local stack's), so the test's
    body never has to."""

    def __init__(self) -> None:
        self._stops: list[Callable[[], None]] = []

    def start(
        self,
        argv: list[str],
        *,
        stop_signal: int = signal.SIGTERM,
        stop_timeout: float = 60.0,
        **popen: Any,
    ) -> subprocess.Popen[Any]:
        """`subprocess.Popen(argv, **popen)` in a new session, stopped by `stop_signal` (then
        SIGKILL after `stop_timeout` s)."""
        proc: subprocess.Popen[Any] = subprocess.Popen(argv, start_new_session=True, **popen)
        self._stops.append(lambda: stop_group(proc, signum=stop_signal, timeout=stop_timeout))
        return proc

    def fork(self, child: Callable[[], bool]) -> Callable[[float], int]:
        """Fork a child that runs `child` and exits 0 if it returned True, else 1 (also when it
        raised). Returns a wait for its exit code, failing after its timeout (s); a child still
        running after the test is killed and reaped."""
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit code
            ok = False
            try:
                ok = child()
            finally:
                os._exit(0 if ok else 1)
        reaped: list[int] = []

        def wait(timeout: float) -> int:
            deadline = time.monotonic() + timeout
            while not reaped:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    reaped.append(os.waitstatus_to_exitcode(status))
                elif time.monotonic() > deadline:
                    raise AssertionError(f"forked child {pid} still running after {timeout}s")
                else:
                    time.sleep(0.05)
            return reaped[0]

        def kill() -> None:
            if not reaped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                reaped.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))

        self._stops.append(kill)
        return wait

    def adopt(self, service: Service) -> Service:
        """A service started by the local stack's own functions (`start_beat`, `start_flower`)."""
        self._stops.append(service.stop)
        return service

    def stop_all(self) -> None:
        """Newest first; each is stopped even when stopping another failed (the first error
        is raised once all are stopped)."""
        errors: list[Exception] = []
        while self._stops:
            try:
                self._stops.pop()()
            except Exception as exc:  # the others must still be stopped
                errors.append(exc)
        if errors:
            raise errors[0]
