"""The local stack's side-by-side start: every process it spawns has an owner at once, so a
failed start or a stop signal while services start or stop leaves nothing running unowned."""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import botocore.session
import pytest

from mvpipe.devstack import cluster
from mvpipe.devstack.cluster import stop_on_signal, stop_signals_as_ctrl_c
from mvpipe.devstack.localstack import (
    LOCAL_CREDENTIAL,
    STOP_SIGNALS,
    LocalStack,
    Service,
    Starting,
    _spawn,
    distinct_free_ports,
    signals_deferred,
    stack_env,
    start_together,
)
from mvpipe.errors import ConfigurationError
from mvpipe.providers.classify import scrub
from tests.helpers import wait_for
from tests.processes import Processes

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def launcher(
    processes: Processes,
    logs: Path,
    name: str,
    argv: list[str],
    check: Callable[[], bool],
    seen: list[Service],
) -> Callable[[], Starting]:
    """A launch of `argv` whose readiness is `check`; each service it spawns is noted in `seen`
    and stopped by the test's fixture, whatever the code under test does."""

    def launch() -> Starting:
        log = logs / f"{name}.log"
        service = processes.adopt(Service(name, _spawn(name, argv, log), log))
        seen.append(service)
        return Starting(service, check, 30, name)

    return launch


def interrupted() -> bool:
    raise KeyboardInterrupt  # a Ctrl-C landing in the wait for a service to be ready


def interrupting(launch: Callable[[], Starting]) -> Callable[[], Starting]:
    """`launch`, with a Ctrl-C right after its spawn (the process not yet handed to its owner)."""

    def interrupted_launch() -> Starting:
        starting = launch()
        os.kill(os.getpid(), signal.SIGINT)
        return starting

    return interrupted_launch


def unhandled(signum: int, frame: object) -> None:
    raise AssertionError(f"signal {signum} reached the test: nothing of the stack handled it")


@pytest.fixture
def handlers_kept() -> Iterator[None]:
    """SIGTERM and SIGHUP fail the test if they reach it (rather than end the test process, or
    go unseen where ignored); the stop signals' handlers as they were after the test
    (`stop_on_signal` leaves its own)."""
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    signal.signal(signal.SIGTERM, unhandled)
    signal.signal(signal.SIGHUP, unhandled)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def sleepers(processes: Processes, tmp_path: Path, *names: str) -> dict[str, Service]:
    """A service of each name, sleeping, stopped by the test's fixture."""
    return {
        name: processes.adopt(
            Service(name, _spawn(name, SLEEPER, tmp_path / f"{name}.log"), tmp_path)
        )
        for name in names
    }


@pytest.mark.parametrize(
    ("failing", "error"),
    [
        ([sys.executable, "-c", "raise SystemExit(3)"], ConfigurationError),  # exits at once
        (SLEEPER, KeyboardInterrupt),  # still starting when Ctrl-C lands
    ],
    ids=["start-fails", "ctrl-c"],
)
def test_services_started_side_by_side_are_owned_from_their_spawn_and_all_stopped(
    tmp_path: Path,
    processes: Processes,
    failing: list[str],
    error: type[BaseException],
) -> None:
    seen: list[Service] = []
    stack = LocalStack(tmp_path)
    ready = launcher(processes, tmp_path, "ready", SLEEPER, lambda: True, seen)
    never = launcher(processes, tmp_path, "slow", SLEEPER, lambda: False, seen)  # much later
    check = interrupted if error is KeyboardInterrupt else (lambda: False)
    broken = launcher(processes, tmp_path, "broken", failing, check, seen)
    # When the second of three side-by-side starts fails (or is interrupted)
    with pytest.raises(error):
        start_together([ready, broken, never], stack.services)
    # Then all three had been spawned at once and each is owned by the stack: the failed one
    # is already stopped, the others stop with the stack
    assert [s.name for s in stack.services] == ["ready", "broken", "slow"] == [s.name for s in seen]
    assert seen[1].proc.poll() is not None
    assert seen[0].proc.poll() is None and seen[2].proc.poll() is None
    stack.stop()
    assert all(s.proc.poll() is not None for s in seen)
    assert stack.services == []


def test_a_stack_whose_stop_of_a_service_fails_still_stops_its_servers(
    tmp_path: Path, processes: Processes
) -> None:
    # Given a stack with a server and a service whose stop raises
    server, other = sleepers(processes, tmp_path, "redis", "worker").values()

    def failing_stop(timeout: float = 30.0) -> None:
        raise OSError("cannot signal it")

    other.stop = failing_stop  # type: ignore[method-assign]
    stack = LocalStack(tmp_path, services=[server, other])
    # When the stack stops, the failure is raised, and the server was stopped all the same
    with pytest.raises(OSError):
        stack.stop()
    assert server.proc.poll() is not None
    assert stack.services == []


def test_a_ctrl_c_landing_between_a_spawn_and_its_owner_waits_for_the_owner(
    tmp_path: Path, processes: Processes
) -> None:
    seen: list[Service] = []
    first = launcher(processes, tmp_path, "first", SLEEPER, lambda: True, seen)
    spawn = launcher(processes, tmp_path, "second", SLEEPER, lambda: True, seen)
    owner: list[Service] = []
    # When a Ctrl-C lands in the second launch, right after its process was spawned
    with pytest.raises(KeyboardInterrupt):
        start_together([first, interrupting(spawn), spawn], owner)
    # Then that process was handed to its owner first (so it is stopped with the rest), and
    # no launch after the Ctrl-C was made
    assert [s.name for s in owner] == ["first", "second"] == [s.name for s in seen]


@pytest.mark.parametrize("meets", ["worker", "moto"])  # a service's stop, a server's
def test_a_ctrl_c_while_the_stack_stops_still_stops_its_servers(
    tmp_path: Path, processes: Processes, meets: str
) -> None:
    # Given a stack with two servers and a service, one of whose stops meets two Ctrl-Cs
    spawned = sleepers(processes, tmp_path, "redis", "moto", "worker")
    stop = spawned[meets].stop

    def stop_meeting_ctrl_c(timeout: float = 30.0) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        # the second once the first is held (two pending signals would be delivered as one)
        wait_for(lambda: said, 30, "the first Ctrl-C held and said")
        os.kill(os.getpid(), signal.SIGINT)
        stop(timeout)

    spawned[meets].stop = stop_meeting_ctrl_c  # type: ignore[method-assign]
    said: list[str] = []
    stack = LocalStack(tmp_path, services=list(spawned.values()), say=said.append)
    # When the stack stops, the Ctrl-C takes effect once everything is stopped
    with pytest.raises(KeyboardInterrupt):
        stack.stop()
    assert all(s.proc.poll() is not None for s in spawned.values())
    assert stack.services == []
    # and meanwhile it was said, once, that the stack is still stopping (the worker may have
    # stopped before the note: 2 or 3 left)
    assert len(said) == 1 and re.fullmatch(r"still stopping: [23] services left \(.*\)", said[0])


def test_a_service_started_again_is_owned_from_its_spawn_in_its_place(
    tmp_path: Path, processes: Processes
) -> None:
    # Given a stack whose Redis was stopped (a drill's restart)
    spawned = sleepers(processes, tmp_path, "redis", "moto")
    old = spawned["redis"]
    old.stop()
    stack = LocalStack(tmp_path, services=[old, spawned["moto"]])
    seen: list[Service] = []
    again = launcher(processes, tmp_path, "redis", SLEEPER, lambda: True, seen)
    # When a Ctrl-C lands right after its new process is spawned
    with pytest.raises(KeyboardInterrupt):
        stack.replace(old, interrupting(again))
    # Then the new process had taken the old one's place first: the stack stops it
    assert stack.services == [seen[0], spawned["moto"]]
    stack.stop()
    assert all(s.proc.poll() is not None for s in seen)


@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["ctrl-c", "sigterm", "sighup"]
)
def test_signals_deferred_delivers_a_held_stop_signal_once_its_handlers_are_back(
    handlers_kept: None, signum: int
) -> None:
    reached: list[str] = []
    with pytest.raises(KeyboardInterrupt), stop_signals_as_ctrl_c():
        before = signal.getsignal(signum)
        with signals_deferred():
            os.kill(os.getpid(), signum)
            reached.append("after the signal")  # held back: the block runs to its end
        assert signal.getsignal(signum) is before
    assert reached == ["after the signal"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["sigterm", "sighup"])
def test_sigterm_and_sighup_stop_a_starting_or_running_stack_as_ctrl_c_does(
    handlers_kept: None, signum: int
) -> None:
    """A starting stack is interrupted (it then stops what it spawned); a running one is told
    to stop (then stops everything): the terminal closed stops it as Ctrl-C would."""
    with pytest.raises(KeyboardInterrupt), stop_signals_as_ctrl_c():
        os.kill(os.getpid(), signum)
    stop = stop_on_signal()
    os.kill(os.getpid(), signum)
    assert stop.is_set()


@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda s: signal.Signals(s).name.lower())
def test_a_stop_signal_repeated_at_once_lets_the_stop_it_started_run_a_later_one_interrupts(
    handlers_kept: None, signum: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second signal before the stop holds them (two SIGHUPs of a closed terminal, Ctrl-C
    pressed twice) would cut the stop short and leave the stack's processes running; one
    after `REPEAT_SECONDS` is a new stop (an interrupt caught somewhere unseen must not leave
    the stack unstoppable)."""
    stopped = []
    with stop_signals_as_ctrl_c():
        try:
            os.kill(os.getpid(), signum)
            raise AssertionError("the first signal did not interrupt")
        except KeyboardInterrupt:
            os.kill(os.getpid(), signum)  # in the stop's first moment, before any hold
            os.kill(os.getpid(), signal.SIGINT)
            stopped.append("the stop ran to its end")
        monkeypatch.setattr(cluster, "REPEAT_SECONDS", 0.0)  # as if the window were over
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signum)
    assert stopped == ["the stop ran to its end"]


def test_a_stack_started_under_nohup_outlives_its_terminal(handlers_kept: None) -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with stop_signals_as_ctrl_c():
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        stop = stop_on_signal()
        os.kill(os.getpid(), signal.SIGHUP)  # ignored: nothing raised
    assert not stop.is_set()


def test_ports_for_servers_started_side_by_side_are_chosen_apart() -> None:
    # a port freed by one pick may come back at the next: two servers must not share one
    picks = iter([5001, 5001, 5002, 5001, 5002, 5003])
    assert distinct_free_ports(3, lambda: next(picks)) == [5001, 5002, 5003]
    ports = distinct_free_ports(2)  # the real source
    assert len(set(ports)) == 2 and all(0 < p < 65536 for p in ports)


def test_the_stacks_variables_never_carry_the_users_aws_credentials(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`mvpipe stack` prints these variables for other shells: a user's real key must not be
    among them (the state server takes any)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAREALUSERKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "a-users-real-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "a-users-real-token")
    monkeypatch.setenv("AWS_SECURITY_TOKEN", "a-users-older-token")
    env = stack_env(6379, 5000, tmp_path)
    assert env["AWS_ACCESS_KEY_ID"] == env["AWS_SECRET_ACCESS_KEY"] == LOCAL_CREDENTIAL
    # set, so the user's are not inherited; botocore takes an empty one for none
    assert env["AWS_SESSION_TOKEN"] == env["AWS_SECURITY_TOKEN"] == ""
    mine = {"AKIAREALUSERKEY", "a-users-real-secret", "a-users-real-token", "a-users-older-token"}
    assert not mine & set(env.values())
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert botocore.session.get_session().get_credentials().token is None
    # The dummy secret is scrubbed from every error text: it must not mangle the usual words
    said = "local: 500 job local-paid failed (localhost)"
    assert scrub(said) == said
