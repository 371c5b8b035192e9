"""The local stack's side-by-side start: every process it spawns has an owner at once, so a
failed start or a Ctrl-C while services start leaves nothing running unowned."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mvpipe.devstack.localstack import (
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
    server = processes.adopt(
        Service("redis", _spawn("redis", SLEEPER, tmp_path / "r.log"), tmp_path)
    )
    other = processes.adopt(Service("worker", _spawn("w", SLEEPER, tmp_path / "w.log"), tmp_path))

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

    def interrupted_launch() -> Starting:
        starting = spawn()
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, the process spawned and not yet owned
        return starting

    owner: list[Service] = []
    # When a Ctrl-C lands in the second launch, right after its process was spawned
    with pytest.raises(KeyboardInterrupt):
        start_together([first, interrupted_launch, spawn], owner)
    # Then that process was handed to its owner first (so it is stopped with the rest), and
    # no launch after the Ctrl-C was made
    assert [s.name for s in owner] == ["first", "second"] == [s.name for s in seen]


@pytest.mark.parametrize("meets", ["worker", "moto"])  # a service's stop, a server's
def test_a_ctrl_c_while_the_stack_stops_still_stops_its_servers(
    tmp_path: Path, processes: Processes, meets: str
) -> None:
    # Given a stack with two servers and a service, one of whose stops meets a Ctrl-C
    spawned = {
        name: processes.adopt(
            Service(name, _spawn(name, SLEEPER, tmp_path / f"{name}.log"), tmp_path)
        )
        for name in ("redis", "moto", "worker")
    }
    stop = spawned[meets].stop

    def stop_meeting_ctrl_c(timeout: float = 30.0) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        stop(timeout)

    spawned[meets].stop = stop_meeting_ctrl_c  # type: ignore[method-assign]
    stack = LocalStack(tmp_path, services=list(spawned.values()))
    # When the stack stops, the Ctrl-C takes effect once everything is stopped
    with pytest.raises(KeyboardInterrupt):
        stack.stop()
    assert all(s.proc.poll() is not None for s in spawned.values())
    assert stack.services == []


def test_signals_deferred_delivers_a_held_signal_once_its_handlers_are_back() -> None:
    before = signal.getsignal(signal.SIGINT)
    reached: list[str] = []
    with pytest.raises(KeyboardInterrupt), signals_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        reached.append("after the Ctrl-C")  # held back: the block runs to its end
    assert reached == ["after the Ctrl-C"]
    assert signal.getsignal(signal.SIGINT) is before


def test_ports_for_servers_started_side_by_side_are_chosen_apart() -> None:
    # a port freed by one pick may come back at the next: two servers must not share one
    ports = distinct_free_ports(8)
    assert len(set(ports)) == 8 and all(0 < p < 65536 for p in ports)
    assert distinct_free_ports(0) == []


def test_the_stacks_variables_never_carry_the_users_aws_credentials(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`mvpipe stack` prints these variables for other shells: a user's real key must not be
    among them (the state server takes any)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAREALUSERKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "a-users-real-secret")
    env = stack_env(6379, 5000, tmp_path)
    assert env["AWS_ACCESS_KEY_ID"] == env["AWS_SECRET_ACCESS_KEY"] == "local"
    assert not {"AKIAREALUSERKEY", "a-users-real-secret"} & set(env.values())
