"""Celery workers forked from one warm interpreter: each test's worker still runs `python -m
celery -A ... worker` with its own argv and environment, in a session and process group of
its own, but skips the ~1 s of third-party imports a fresh interpreter pays (Celery's CLI and
worker, kombu's Redis transport, botocore, pynamodb, PyAV, numpy, Google's GenAI SDK).

The warm parent (`python -m tests.warm_workers`, one per test session) imports those and none of
mvpipe's modules, whose settings come from the environment at import, but `mvpipe.media`'s
(which reads no setting): it runs one song analysis (once no request waits), so librosa is
imported and its numba kernels compiled once, not in each worker's first analysis (~5-6 s of
CPU each). Each child sets its test's environment first, then loads the app as a spawned worker
does (`worker_init` and the pool's `worker_process_init` run in it). The parent is
single-threaded and forks on request (JSON lines on its stdin); it reaps its children and
writes each one's exit code to the file the request named, which `ForkedProcess` reads: the
test owns the child as it owns a spawned one (its group killed, its exit waited on, its exit
code seen).
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

#: The repository's root: `-m tests.warm_workers` is found from there.
ROOT = Path(__file__).resolve().parent.parent

#: What a worker imports before any of mvpipe's modules runs, heaviest first (measured with
#: `python -X importtime`); none of them reads MVPIPE_* settings at import.
PRELOAD = (
    "celery.bin.celery",
    "celery.apps.worker",
    "celery.worker.consumer",
    "celery.concurrency.prefork",
    "celery.concurrency.thread",
    "celery.backends.redis",
    "kombu.transport.redis",
    "flower.app",
    "botocore.session",
    "botocore.client",
    "pynamodb.models",
    "pydantic_settings",
    "httpx",
    "numpy",
    "av",
    # the Gemini planner's and Veo's SDK (~0.5 s), imported by a pool process's first such task
    "google.genai",
)


#: Variables read once, when an interpreter or a native library starts (a fork keeps the
#: parent's): `PYTHONPATH`, `PYTHONHASHSEED`, the locale, the time zone, BLAS threads.
STARTUP_PREFIXES = (
    "PYTHON",
    "LC_",
    "LANG",
    "TZ",
    "OMP_",
    "OPENBLAS_",
    "MKL_",
    "NUMBA_",
    "LIBROSA_",
)


def _read_at_startup(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(STARTUP_PREFIXES)}


class ForkedProcess(subprocess.Popen[bytes]):
    """A child of the warm parent, owned as `subprocess.Popen` owns its own: `poll`, `wait` and
    `send_signal` as Popen's, its exit code read from the file the parent writes when it
    reaps it (only the parent can wait for it)."""

    def __init__(self, args: list[str], pid: int, status: Path) -> None:
        # Popen's own __init__ would spawn: only what its other methods read is set.
        self.args = args
        self.pid = pid
        self.returncode: Any = None
        self.stdin = self.stdout = self.stderr = None
        self._status = status

    def poll(self) -> int | None:
        if self.returncode is None:
            with contextlib.suppress(FileNotFoundError):
                self.returncode = int(self._status.read_text())
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.005
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # reaped: its pid may be another process's by now
            os.kill(self.pid, sig)


class WarmParent:
    """The test session's warm parent: `spawn` is `localstack.launch_worker`'s `spawn`."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self._workdir = workdir
        self._startup = _read_at_startup(env)
        self._lock = threading.Lock()  # one request and its reply at a time
        self._count = 0
        with open(workdir / "warm-parent.log", "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "tests.warm_workers"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                cwd=ROOT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self._proc.pid

    def spawn(
        self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """`argv` (`python -m celery ...`) forked from the warm parent, under `env`."""
        if argv[:3] != [sys.executable, "-m", "celery"]:
            raise ValueError(f"only `python -m celery` forks from the warm parent: {argv}")
        if _read_at_startup(dict(os.environ if env is None else env)) != self._startup:
            # what the interpreter or a native library read when the parent started: a fork
            # would run with the parent's, so such a worker is spawned as the stack spawns it
            # (imported here: the warm parent runs this module and must import no mvpipe one)
            from mvpipe.devstack.localstack import _spawn

            return _spawn(name, argv, log_path, env)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        with self._lock:
            self._count += 1
            status = self._workdir / f"{name}-{self._count}.exit"
            request = {
                "argv": argv,
                "env": dict(os.environ if env is None else env),
                "log": str(log_path),
                "cwd": os.getcwd(),
                "status": str(status),
            }
            self._proc.stdin.write(json.dumps(request).encode() + b"\n")
            self._proc.stdin.flush()
            reply = self._proc.stdout.readline()
        if not reply:
            raise RuntimeError(f"the warm parent exited ({self._proc.poll()}): see its log")
        return ForkedProcess(argv, int(json.loads(reply)["pid"]), status)

    def stop(self) -> None:
        """Its stdin closed, it kills what it still has and exits."""
        from tests.processes import stop_group

        assert self._proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self._proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=30)
        stop_group(self._proc)


def _become_worker(request: dict[str, Any]) -> NoReturn:
    """In the forked child: a session of its own, the test's environment and log, then Celery's
    main as `python -m celery` runs it, and its exit as the interpreter's."""
    os.setsid()
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.closerange(3, 1 << 16)  # the parent's pipes, its wakeup fd, the log's own fd
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["-m", *request["argv"][3:]]  # runpy puts the module's file first, as -m does
    code = 1
    try:
        # As `-m celery` runs it: as __main__ (click names the program from it)
        runpy.run_module("celery", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        atexit._run_exitfuncs()  # as the interpreter would at its exit
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _reap(statuses: dict[int, str]) -> None:
    """Every exited child's code, written where its owner looks (renamed into place whole)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        path = statuses.pop(pid, None)
        if path is not None:
            Path(path + ".tmp").write_text(str(os.waitstatus_to_exitcode(status)))
            os.rename(path + ".tmp", path)


#: The only mvpipe modules the warm parent may hold: `mvpipe.media` touches no setting, the store
#: or Celery (its package says so), nor do the pure rules of the frame it imports, so a child
#: imports every other one under its own environment.
PARENT_MVPIPE = ("mvpipe", "mvpipe.errors", "mvpipe.frame_size", "mvpipe.media")


def _warm_song_analysis() -> None:
    """One analysis of a short synthetic song: librosa imported, its kernels compiled (what
    `mvpipe.media.analysis.warm` does in a worker's pool process), then every object made so
    far frozen, so that no child's garbage collection walks (and copies) them again."""
    from mvpipe.media.analysis import warm

    try:
        warm()
    except Exception as exc:  # only time is lost: each worker warms itself as before
        print(f"warm parent: the song analysis warm-up failed: {exc!r}", file=sys.stderr)
    held = [
        name
        for name in sys.modules
        if name.split(".")[0] == "mvpipe"
        and name not in PARENT_MVPIPE
        and not name.startswith("mvpipe.media.")
    ]
    if held:  # a child would run them under the parent's environment, not its test's
        raise RuntimeError(f"the warm parent imported mvpipe modules that read settings: {held}")
    gc.collect()
    gc.freeze()


def serve() -> None:
    """Fork a worker per request line until stdin closes, then kill those still running."""
    for module in PRELOAD:
        importlib.import_module(module)
    _check_one_thread()
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.set_wakeup_fd(wake_write)
    statuses: dict[int, str] = {}
    try:
        _serve(statuses, wake_read)
    finally:  # stdin closed, or the loop failed: no worker outlives the warm parent
        for pid in statuses:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def _check_one_thread() -> None:
    if threading.active_count() != 1:  # a fork would copy a thread's locks, not the thread
        raise RuntimeError(f"the warm parent must fork from one thread: {threading.enumerate()}")


def _serve(statuses: dict[int, str], wake_read: int) -> None:
    """The request loop: a worker forked per line, each exited one reaped, until stdin ends.
    The song analysis is warmed the first time no request waits: a session's first worker is
    forked at once, and the warm-up runs beside its test (a request meanwhile waits for it)."""
    pending = b""
    warmed = False
    while True:
        readable, _, _ = select.select([0, wake_read], [], [], None if warmed else 0)
        if not readable and not warmed:
            _warm_song_analysis()
            _check_one_thread()
            warmed = True
            continue
        if wake_read in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_read, 4096)
            _reap(statuses)
        if 0 not in readable:
            continue
        chunk = os.read(0, 1 << 16)
        if not chunk:
            break
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child becomes the worker
                try:
                    _become_worker(request)
                finally:
                    os._exit(70)  # never back into the parent's loop
            statuses[pid] = request["status"]
            os.write(1, json.dumps({"pid": pid}).encode() + b"\n")


if __name__ == "__main__":
    serve()
