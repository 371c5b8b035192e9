"""The whole local stack at a shell's service: the servers, a worker on every queue beside the
control worker, beat and Flower, with this process pointed at them (`mvpipe stack`, the demo).

What it starts it announces through `say`, so the caller decides where the words go; it stops
everything it started on the way out, whatever ends the block.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from mvpipe.devstack import localstack

Say = Callable[[str], None]


#: How long after an interrupt a stop signal is taken for a repeat of it (the stop's start holds
#: the stop signals itself within microseconds; two SIGHUPs of a closing terminal come so close).
REPEAT_SECONDS = 1.0


@contextmanager
def stop_signals_as_ctrl_c() -> Iterator[None]:
    """SIGTERM and SIGHUP (the terminal closed) interrupt as Ctrl-C does (KeyboardInterrupt),
    so a stack told to stop while it starts or runs stops what it spawned rather than dying
    with it (each of its processes runs in a session of its own); one ignored (`nohup`) stays
    ignored. A repeat within `REPEAT_SECONDS` of an interrupt does not interrupt again: the stop
    it starts must not be cut short (closing a terminal may send two SIGHUPs; a user presses
    Ctrl-C twice) before the stop holds them itself (`signals_deferred`). Only the main
    thread can set a handler: elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    interrupted: list[float] = []

    def interrupt(number: int, frame: object) -> None:
        # Repeats just after an interrupt: the stop it starts is on its way. Later ones interrupt
        # again (an interrupt caught somewhere unseen must not leave the stack unstoppable).
        now = time.monotonic()
        if interrupted and now - interrupted[-1] < REPEAT_SECONDS:
            return
        interrupted.append(now)
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, interrupt) for signum in localstack.stop_signals()}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def running(
    workdir: Path, *, concurrency: int, flower: bool, beat: bool, say: Say
) -> Iterator[dict[str, str]]:
    """Start redis-server, the state server, the workers, beat and Flower; stop them after.
    Yields the variables that point another process at the stack."""
    from mvpipe.deps import reset_context

    stack = localstack.LocalStack(workdir, say=say)
    with stop_signals_as_ctrl_c(), stack.running():
        env = stack.child_env()
        user = os.environ.get("MVPIPE_FLOWER_USER") or "mvpipe"
        password = os.environ.get("MVPIPE_FLOWER_PASSWORD") or secrets.token_urlsafe(12)
        env.update({"MVPIPE_FLOWER_USER": user})
        os.environ.update(stack.env)
        reset_context()  # this process's API calls go to the stack just started
        logs = workdir / "logs"
        say(f"redis-server at {stack.env['MVPIPE_BROKER_URL']}")
        say(f"state server (DynamoDB + S3) at {stack.env['MVPIPE_DYNAMODB_ENDPOINT']}")
        port = 0
        if flower:
            port = (
                localstack.free_port()
                if os.environ.get("MVPIPE_FLOWER_PORT") is None
                else int(os.environ["MVPIPE_FLOWER_PORT"])
            )
        # Side by side: each process spends a second or two importing (~7.5 s one after another).
        starts: list[Callable[[], localstack.Starting]] = [
            partial(localstack.launch_worker, env, logs / "worker.log", concurrency=concurrency),
            partial(localstack.launch_control_worker, env, logs / "control.log"),
        ]
        if beat:
            starts.append(partial(localstack.launch_beat, env, logs / "beat.log"))
        if flower:
            login = {"user": user, "password": password}
            starts.append(
                partial(localstack.launch_flower, env, logs / "flower.log", port=port, **login)
            )
        localstack.start_together(starts, stack.services)  # the stack owns each once spawned
        say(f"worker ready (concurrency {concurrency}, and a control worker); logs in {logs}")
        if beat:
            say("beat ready (reconcile schedule)")
        if flower:
            say(f"Flower: http://127.0.0.1:{port}  user {user}  password {password}")
        yield stack.env


def stop_on_signal() -> threading.Event:
    """A stop signal (Ctrl-C, SIGTERM, SIGHUP: `localstack.stop_signals`) sets the returned
    event instead of interrupting the shutdown."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    for signum in localstack.stop_signals():
        signal.signal(signum, handler)
    return stop


def hold(stop: threading.Event) -> None:
    """Keep the stack up until `stop` is set (short waits, so the signal handler runs)."""
    while not stop.wait(0.5):
        pass


def serve(
    workdir: Path,
    *,
    concurrency: int,
    flower: bool,
    say: Say,
    ready: Callable[[dict[str, str]], None],
) -> None:
    """`mvpipe stack`: the whole stack with beat, until Ctrl-C, SIGTERM or SIGHUP; `ready` is
    given the stack's variables once it is up."""
    with running(workdir, concurrency=concurrency, flower=flower, beat=True, say=say) as env:
        stop = stop_on_signal()  # before announcing it, so an early Ctrl-C is not lost
        ready(env)
        hold(stop)
