"""The Procfile and its Procfile.env (`honcho start -e Procfile.env`) describe one stack: every
process reaches the Redis and the state server the Procfile starts, and its Redis line runs on
a fresh checkout (where its data directory does not exist yet)."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from mvpipe.devstack.localstack import LOCAL_CREDENTIAL, free_port, port_open
from mvpipe.settings import Settings
from tests.helpers import wait_for
from tests.processes import Processes

ROOT = Path(__file__).resolve().parent.parent


def _procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    entries = (line.split(":", 1) for line in lines if line and not line.startswith("#"))
    return {name: command.strip() for name, command in entries}


def _procfile_env() -> dict[str, str]:
    lines = (ROOT / "Procfile.env").read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def _port(pattern: str, command: str) -> int:
    found = re.search(pattern, command)
    assert found is not None, command
    return int(found.group(1))


def test_every_process_of_the_procfile_reaches_the_servers_it_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    procs, env = _procfile(), _procfile_env()
    assert {"redis", "state", "worker", "control", "beat", "flower"} <= procs.keys()
    for key in list(Settings.model_fields):
        monkeypatch.delenv(f"MVPIPE_{key.upper()}", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    redis_port, state_port = (
        _port(r"--port (\d+)", procs["redis"]),
        _port(r" -p (\d+)", procs["state"]),
    )
    assert settings.broker_url.startswith(f"redis://127.0.0.1:{redis_port}/")
    assert settings.result_backend.startswith(f"redis://127.0.0.1:{redis_port}/")
    assert settings.dynamodb_endpoint == settings.s3_endpoint == f"http://127.0.0.1:{state_port}"
    # Dummies: the state server takes any key, and no real one belongs in a checked-in file.
    assert env["AWS_ACCESS_KEY_ID"] == env["AWS_SECRET_ACCESS_KEY"] == LOCAL_CREDENTIAL
    assert env["AWS_SESSION_TOKEN"] == env["AWS_SECURITY_TOKEN"] == ""  # not the user's


@pytest.mark.parametrize("state_dir", ["set", "unset"])
def test_the_procfiles_redis_starts_where_its_data_directory_does_not_exist_yet(
    tmp_path: Path, processes: Processes, state_dir: str
) -> None:
    """With Procfile.env's MVPIPE_STATE_DIR, or without it (a plain `honcho start`: then where
    mvpipe keeps its state by default)."""
    assert Settings.model_fields["state_dir"].default == Path.home() / ".mvpipe"
    command = _procfile()["redis"]
    port = free_port()
    env = {"PATH": os.environ["PATH"]}
    if state_dir == "set":
        data = tmp_path / "fresh" / "state"
        env["MVPIPE_STATE_DIR"] = str(data)
    else:
        env["HOME"] = str(tmp_path / "home")
        data = tmp_path / "home" / ".mvpipe"  # the default, as the settings' `state_dir`
    argv = shlex.split(command.replace("--port 6379", f"--port {port}"))
    processes.start(argv, env=env, cwd=tmp_path)
    wait_for(lambda: port_open(port), 30, "the Procfile's redis-server")
    assert data.is_dir()
