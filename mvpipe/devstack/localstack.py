"""Starts and stops the local stack as real processes: redis-server, the moto state server,
Celery worker, beat and Flower. Used by `mvpipe stack`, the demo and the test fixtures alike.

Every start waits on a condition (a port answering, a "ready" log line), never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import ParamSpec

from mvpipe.errors import ConfigurationError, Timeout
from mvpipe.queues import MEDIA_QUEUE, PLAN_QUEUE

P = ParamSpec("P")

#: What stops the stack: Ctrl-C, SIGTERM, and SIGHUP (its terminal closed).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: How long a service is given to stop before it is killed.
STOP_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def distinct_free_ports(count: int, pick: Callable[[], int] = free_port) -> list[int]:
    """`count` free ports from `pick`, none twice: services spawned side by side each bind one,
    and a port freed by `free_port` may be handed out again at once (a server losing the bind
    to its sibling would look ready on the sibling's port)."""
    ports: list[int] = []
    while len(ports) < count:
        port = pick()
        if port not in ports:
            ports.append(port)
    return ports


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None
) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.02
    # The check first: a worker may become ready and exit before a look (a drill's failpoint).
    # A port's check is answered by whoever listens there: servers started side by side get
    # ports chosen apart (`distinct_free_ports`), so never by the sibling; another program
    # binding the port between its pick and the server's bind would pass too (the server then
    # exits on its failed bind, after this wait)
    while not check():
        if proc is not None and proc.poll() is not None:
            raise ConfigurationError(f"{what}: process exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise Timeout(f"{what}: not ready after {timeout:.0f}s")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


@dataclass
class Service:
    name: str
    proc: subprocess.Popen
    log_path: Path
    port: int | None = None

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc.poll() is not None:
            return  # reaped: its pid (and group id) may belong to another process by now
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        # Celery's pool children and the like: nothing of ours may outlive the stack.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@dataclass
class Starting:
    """A service spawned and not yet known ready: what `ready` waits for, and for how long."""

    service: Service
    check: Callable[[], bool]
    timeout: float
    what: str

    def ready(self) -> Service:
        """The service once `check` holds; killed if it exits, never gets there, or the wait is
        interrupted: a service that never became ready must not run on unowned."""
        try:
            wait_until(self.check, self.timeout, self.what, self.service.proc)
        except BaseException:
            self.service.kill()
            raise
        return self.service


def stop_signals() -> list[signal.Signals]:
    """`STOP_SIGNALS` but those this process ignores: started under `nohup` (SIGHUP ignored),
    the stack outlives its terminal, as asked."""
    return [s for s in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN]


@contextlib.contextmanager
def signals_deferred(on_held: Callable[[], object] | None = None) -> Iterator[None]:
    """The stop signals held back for a moment: while a process is spawned and handed to its
    owner (between the two it belongs to nobody: it runs in a session of its own, and only its
    owner stops it), or while the stack stops. A signal that came meanwhile is delivered again
    once the handlers are back; `on_held` is called at the first, to say why nothing happens
    yet. Only the main thread runs signal handlers: elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(number: int, frame: object) -> None:
        caught.append(number)
        if len(caught) == 1 and on_held is not None:
            # A note that cannot be written (its terminal closed) must not break what is held
            with contextlib.suppress(Exception):
                on_held()

    held = stop_signals()
    previous = {signum: signal.getsignal(signum) for signum in held}
    for signum in held:
        signal.signal(signum, hold)
    try:
        yield
    finally:
        # Both restored, or neither: a signal between the two would leave the other's handler
        # the one above (its signals lost from then on); one held here comes after.
        signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
        if caught:
            signal.raise_signal(caught[0])


#: How a service's process is started: its name, argv, log and environment (`_spawn`'s signature).
Spawn = Callable[[str, list[str], Path, dict[str, str] | None], subprocess.Popen]


def _spawn(
    name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def redis_server_binary() -> str:
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found is None:
        raise ConfigurationError("redis-server not found: apt-get install -y redis-server")
    return found


def launch_redis(workdir: Path, *, port: int | None = None, appendonly: bool = True) -> Starting:
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        redis_server_binary(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(workdir),
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", "everysec",
        "--databases", "64",
    ]  # fmt: skip
    log = workdir / "redis.log"
    service = Service("redis", _spawn("redis", argv, log), log, port)
    return Starting(service, lambda: port_open(port), 30, "redis-server")


def launch_state_server(workdir: Path, *, port: int | None = None) -> Starting:
    """moto in server mode (requests serialized, see `state_server`): DynamoDB and S3 over real
    HTTP."""
    port = port or free_port()
    argv = [
        sys.executable,
        "-m",
        "mvpipe.devstack.state_server",
        "-H",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    log = workdir / "moto.log"
    service = Service("moto", _spawn("moto", argv, log), log, port)
    return Starting(service, lambda: port_open(port), 60, "moto server")


#: The access key and secret of a local stack (the state server takes any). Not a word that
#: appears in error texts: the secret's value is scrubbed from every one (`classify.scrub`).
LOCAL_CREDENTIAL = "local-stack-dummy"


def stack_env(redis_port: int, moto_port: int, state_dir: Path, *, db: int = 0) -> dict[str, str]:
    """The MVPIPE_* and AWS_* variables that point a process at a local stack.

    The credentials are the stack's own dummies, never the user's: `mvpipe stack` prints these
    variables, and a real secret key has no business with a local server anyway."""
    return {
        "MVPIPE_BROKER_URL": f"redis://127.0.0.1:{redis_port}/{db}",
        "MVPIPE_RESULT_BACKEND": f"redis://127.0.0.1:{redis_port}/{db + 1}",
        "MVPIPE_DYNAMODB_ENDPOINT": f"http://127.0.0.1:{moto_port}",
        "MVPIPE_S3_ENDPOINT": f"http://127.0.0.1:{moto_port}",
        "MVPIPE_STATE_DIR": str(state_dir),
        "AWS_ACCESS_KEY_ID": LOCAL_CREDENTIAL,
        "AWS_SECRET_ACCESS_KEY": LOCAL_CREDENTIAL,
        # nor the user's session token, which would travel with every request (empty: none;
        # botocore reads either variable)
        "AWS_SESSION_TOKEN": "",
        "AWS_SECURITY_TOKEN": "",
        "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    }


def _celery(*args: str, app: str = "mvpipe.celery_app") -> list[str]:
    return [sys.executable, "-m", "celery", "-A", app, *args]


def launch_worker(
    env: dict[str, str],
    log_path: Path,
    *,
    concurrency: int = 2,
    name: str = "worker",
    loglevel: str = "INFO",
    queues: str | None = None,
    pool: str = "prefork",
    spawn: Spawn = _spawn,
) -> Starting:
    """A Celery worker, spawned (`Starting.ready` waits for it); `queues` (comma-separated)
    limits what it consumes, like `-Q`; `pool` is Celery's `-P` (benchmarks compare `threads`
    with the default). It loads the app through `devstack.worker`, so the failpoints that
    `env` names are armed. `spawn` starts the process from its argv (the tests' may fork it
    from an interpreter that has imported Celery already)."""
    argv = _celery(
        "worker",
        "-c", str(concurrency),
        "-P", pool,
        "-n", f"{name}@%h",
        "-l", loglevel,
        "-E",
        "--without-mingle",
        "--without-gossip",
        *(["-Q", queues] if queues else []),
        app="mvpipe.devstack.worker",
    )  # fmt: skip
    start = log_path.stat().st_size if log_path.exists() else 0
    service = Service(name, spawn(name, argv, log_path, env), log_path)
    return Starting(
        service, lambda: " ready." in service.log_text()[start:], 120, f"celery worker {name}"
    )


#: The control worker's queues: every queue but `mvpipe.video`, so it never holds a provider poll.
#: A worker that polls holds each poll's countdown message until it is due; with late acks and
#: prefetch 1 it fetches nothing new while a wave of due polls waits for its pool processes (a
#: Redis BRPOP it sent before the wave still takes one message, held until the wave is over). A
#: run's planning, finalize and assembly would wait behind that wave; beside the worker on every
#: queue, the control worker fetches them at once.
CONTROL_QUEUES = f"{PLAN_QUEUE},{MEDIA_QUEUE}"


def launch_control_worker(
    env: dict[str, str], log_path: Path, *, name: str = "control", spawn: Spawn = _spawn
) -> Starting:
    """The one-process control worker (`CONTROL_QUEUES`), beside a worker on every queue."""
    return launch_worker(
        env, log_path, concurrency=1, name=name, queues=CONTROL_QUEUES, spawn=spawn
    )


def launch_beat(env: dict[str, str], log_path: Path) -> Starting:
    service = Service(
        "beat", _spawn("beat", _celery("beat", "-l", "INFO"), log_path, env=env), log_path
    )
    return Starting(service, lambda: "beat: Starting" in service.log_text(), 60, "celery beat")


def launch_flower(
    env: dict[str, str], log_path: Path, *, port: int, user: str, password: str
) -> Starting:
    argv = [sys.executable, "-m", "mvpipe.cli", "flower", f"--port={port}", "--address=127.0.0.1"]
    # Credentials travel in the environment, never in argv (visible to every local user).
    creds = {"MVPIPE_FLOWER_USER": user, "MVPIPE_FLOWER_PASSWORD": password}
    service = Service(
        "flower", _spawn("flower", argv, log_path, env={**env, **creds}), log_path, port
    )
    return Starting(service, lambda: port_open(port), 60, "flower")


def _when_ready(launch: Callable[P, Starting]) -> Callable[P, Service]:
    """`launch`, then waited for (`Starting.ready`). Its parameters are `launch`'s own: an
    option added to a launch is one of its start too, and a call with one it lacks is refused
    by the type checker."""

    def start(*args: P.args, **kwargs: P.kwargs) -> Service:
        return launch(*args, **kwargs).ready()

    start.__name__ = start.__qualname__ = launch.__name__.replace("launch_", "start_", 1)
    start.__doc__ = f"`{launch.__name__}`, ready (killed if it never becomes ready)."
    return start


start_worker = _when_ready(launch_worker)
start_control_worker = _when_ready(launch_control_worker)
start_beat = _when_ready(launch_beat)
start_flower = _when_ready(launch_flower)


#: The services `LocalStack.start_servers` starts; everything else runs on them.
SERVERS = ("redis", "moto")


def start_together(
    launches: Sequence[Callable[[], Starting]], owner: list[Service]
) -> list[Service]:
    """Spawn every service at once (each spends a second or two importing, on one core), then
    wait for each to be ready; returns them in the order given. Each is put in `owner` as it
    is spawned (the stop signals held back meanwhile), so whoever stops `owner`'s services
    stops it too, whatever happens next: a start that fails (killed by its `ready`), a Ctrl-C
    while they start (it lands in this thread's wait at once)."""
    starting = []
    for launch in launches:
        with signals_deferred():
            starting.append(launch())
            owner.append(starting[-1].service)
    return [each.ready() for each in starting]


def stop_together(services: Sequence[Service]) -> None:
    """Stop services side by side and wait for all."""
    with ThreadPoolExecutor(max(len(services), 1), thread_name_prefix="stop") as pool:
        for stopped in [pool.submit(service.stop) for service in services]:
            stopped.result()


@dataclass
class LocalStack:
    """The whole local stack; a context manager that stops whatever it started. `say` is told
    when a stop signal has to wait for the stack's stop (nothing is said by default)."""

    workdir: Path
    services: list[Service] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    say: Callable[[str], object] = field(default=lambda text: None, repr=False)

    def start_servers(self) -> None:
        """Redis and the state server, side by side, each owned by the stack once spawned."""
        ports = distinct_free_ports(2)  # chosen apart: both bind at once
        launches = [
            partial(launch_redis, self.workdir / "redis", port=ports[0]),
            partial(launch_state_server, self.workdir, port=ports[1]),
        ]
        redis, moto = start_together(launches, self.services)
        self.env = stack_env(redis.port or 0, moto.port or 0, self.workdir / "state")

    def child_env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, **self.env, **extra}

    def replace(self, old: Service, launch: Callable[[], Starting]) -> Service:
        """`old` (stopped) replaced by what `launch` spawns, in its place (the order the stack
        stops in), owned from its spawn as every start's service is; once ready."""
        with signals_deferred():
            starting = launch()
            self.services[self.services.index(old)] = starting.service
        return starting.ready()

    def stop(self) -> None:
        """The services that run on the servers first, side by side (a Celery process's warm
        shutdown takes a second or two), then the servers, the state server before Redis.
        A stop signal waits until all are stopped (then it takes effect); `say` is told so."""
        servers = [s for s in self.services if s.name in SERVERS]
        with signals_deferred(self._still_stopping):
            try:
                stop_together([s for s in self.services if s.name not in SERVERS])
            finally:  # whatever failed above, the servers never outlive the stack
                try:
                    for service in reversed(servers):
                        service.stop()
                finally:
                    self.services.clear()

    def _still_stopping(self) -> None:
        left = sum(s.proc.poll() is None for s in self.services)
        services = "service" if left == 1 else "services"
        self.say(
            f"still stopping: {left} {services} left (each killed if not stopped within"
            f" {STOP_SECONDS:.0f} s)"
        )

    @contextlib.contextmanager
    def running(self) -> Iterator[LocalStack]:
        try:
            self.start_servers()
            yield self
        finally:
            self.stop()
