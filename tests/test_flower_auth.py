"""Flower started straight through the app (`celery -A mvpipe.celery_app flower`, as DESIGN.md
names it), or in the wrong order (`celery flower -A mvpipe.celery_app`, which Celery runs on its
default app, configured by celeryconfig all the same), never runs open: without both credentials
it refuses with one line, and with them it answers only to them, on 127.0.0.1 unless told
otherwise; Flower options that would undo either (a config file, --basic-auth, an empty
--address) are refused."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from mvpipe.devstack.localstack import LocalStack, free_port, port_open
from mvpipe.errors import ConfigurationError
from mvpipe.messaging.flower_auth import basic_auth
from mvpipe.settings import Settings
from tests.helpers import listening_on, wait_for
from tests.processes import Processes

pytestmark = pytest.mark.integration

StartFlower = Callable[..., subprocess.Popen[bytes]]

#: `celery -A <app> flower` as documented; `celery flower -A <app>` and plain `celery flower`
#: never load our app (Celery leaves -A after `flower` to Flower, which only warns about it).
RIGHT_ORDER = ("-A", "mvpipe.celery_app", "flower")
WRONG_ORDERS = [("flower", "-A", "mvpipe.celery_app"), ("flower",)]


def _env(**flower: str) -> dict[str, str]:
    """This process's environment without any Flower credentials or options, plus `flower`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MVPIPE_FLOWER_", "FLOWER_", "CELERY_FLOWER"))
    }
    return {**env, **flower}


@pytest.fixture
def start_flower(stack: LocalStack, tmp_path: Path, processes: Processes) -> StartFlower:
    """Start `celery -A mvpipe.celery_app flower` as a real process; `processes` stops every
    one (its process group) after the test, however it ends."""
    count = 0

    def start(
        env: dict[str, str],
        *args: str,
        command: tuple[str, ...] = RIGHT_ORDER,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        nonlocal count
        with (tmp_path / f"flower-{count}.log").open("wb") as log:
            proc = processes.start(
                [sys.executable, "-m", "celery", *command, *args],
                env=env,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        count += 1
        return proc

    return start


def _log(tmp_path: Path, index: int) -> str:
    return (tmp_path / f"flower-{index}.log").read_text()


def _refused(proc: subprocess.Popen[bytes], port: int) -> int:
    """Wait until Flower has exited or listens; its exit code, once sure it never listened."""
    wait_for(lambda: proc.poll() is not None or port_open(port), 120, "Flower to exit")
    assert not port_open(port), "Flower listens: it started although it should have refused"
    return proc.wait(timeout=30)


@pytest.mark.parametrize(
    ("credentials", "says"),
    [
        ({}, "MVPIPE_FLOWER_USER and MVPIPE_FLOWER_PASSWORD"),
        ({"MVPIPE_FLOWER_USER": "ops"}, "MVPIPE_FLOWER_USER and MVPIPE_FLOWER_PASSWORD"),
        ({"MVPIPE_FLOWER_PASSWORD": "s3cret"}, "MVPIPE_FLOWER_USER and MVPIPE_FLOWER_PASSWORD"),
        # Flower splits its credentials on commas: "ops:a,b" would also let in anyone sending "b"
        ({"MVPIPE_FLOWER_USER": "ops", "MVPIPE_FLOWER_PASSWORD": "a,bcd"}, "','"),
        # Flower's own variable opens nothing when ours are missing
        ({"FLOWER_BASIC_AUTH": "ops:s3cret"}, "MVPIPE_FLOWER_USER and MVPIPE_FLOWER_PASSWORD"),
    ],
)
def test_celery_flower_refuses_to_start_without_credentials(
    start_flower: StartFlower, tmp_path: Path, credentials: dict[str, str], says: str
) -> None:
    port = free_port()
    proc = start_flower(_env(**credentials), f"--port={port}")
    assert proc.wait(timeout=120) != 0
    out = _log(tmp_path, 0)
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], out
    assert "a,bcd" not in out and "s3cret" not in out
    assert not port_open(port)


def test_celery_flower_answers_only_to_its_credentials_on_loopback(
    start_flower: StartFlower, tmp_path: Path
) -> None:
    port = free_port()
    start_flower(_env(MVPIPE_FLOWER_USER="ops", MVPIPE_FLOWER_PASSWORD="s3cret"), f"--port={port}")
    wait_for(lambda: port_open(port), 120, "Flower to listen")
    assert listening_on(port) == {"0100007F"}  # 127.0.0.1 alone, not every interface
    url = f"http://127.0.0.1:{port}/api/workers"
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, auth=("ops", "wrong"), timeout=10).status_code == 401
    assert httpx.get(url, auth=("ops", "s3cret"), timeout=10).status_code == 200
    assert "s3cret" not in _log(tmp_path, 0)


def test_celery_flower_listens_where_told(start_flower: StartFlower, tmp_path: Path) -> None:
    port = free_port()
    env = _env(MVPIPE_FLOWER_USER="ops", MVPIPE_FLOWER_PASSWORD="s3cret")
    start_flower(env, f"--port={port}", "--address=0.0.0.0")
    wait_for(lambda: port_open(port), 120, "Flower to listen")
    assert listening_on(port) == {"00000000"}  # every interface, as asked
    url = f"http://127.0.0.1:{port}/api/workers"
    assert httpx.get(url, timeout=10).status_code == 401  # and still behind its credentials


@pytest.mark.parametrize("command", WRONG_ORDERS, ids=["flower -A app", "flower"])
def test_flower_in_the_wrong_order_refuses_without_credentials(
    start_flower: StartFlower, tmp_path: Path, command: tuple[str, ...]
) -> None:
    port = free_port()
    proc = start_flower(_env(FLOWER_BASIC_AUTH="ops:s3cret"), f"--port={port}", command=command)
    assert _refused(proc, port) == 78
    out = _log(tmp_path, 0)
    last = out.strip().splitlines()[-1]  # after Flower's own warning about a misplaced -A
    assert last.startswith("error:") and "MVPIPE_FLOWER_USER and MVPIPE_FLOWER_PASSWORD" in last
    assert "s3cret" not in out


@pytest.mark.parametrize("command", WRONG_ORDERS, ids=["flower -A app", "flower"])
def test_flower_in_the_wrong_order_answers_only_to_its_credentials_on_loopback(
    start_flower: StartFlower, tmp_path: Path, command: tuple[str, ...]
) -> None:
    port = free_port()
    env = _env(MVPIPE_FLOWER_USER="ops", MVPIPE_FLOWER_PASSWORD="s3cret")
    start_flower(env, f"--port={port}", command=command)
    wait_for(lambda: port_open(port), 120, "Flower to listen")
    assert listening_on(port) == {"0100007F"}
    url = f"http://127.0.0.1:{port}/api/workers"
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, auth=("ops", "s3cret"), timeout=10).status_code == 200


@pytest.mark.parametrize(
    ("args", "config"),
    [
        (("--basic-auth=",), None),  # parses to [""], which admits "Authorization: Basic !"
        (("--basic-auth=eve:eve",), None),
        (("--address=",), None),  # every interface
        ((), "basic_auth = []\n"),  # ./flowerconfig.py, read after the variables
        (("--conf=other.py",), "address = ''\n"),
    ],
    ids=["--basic-auth=", "--basic-auth=eve", "--address=", "flowerconfig.py", "--conf"],
)
def test_flower_options_that_undo_the_guard_are_refused(
    start_flower: StartFlower, tmp_path: Path, args: tuple[str, ...], config: str | None
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    if config is not None:
        conf = next((a.split("=", 1)[1] for a in args if a.startswith("--conf=")), None)
        (cwd / (conf or "flowerconfig.py")).write_text(config)
    port = free_port()
    env = _env(MVPIPE_FLOWER_USER="ops", MVPIPE_FLOWER_PASSWORD="s3cret")
    proc = start_flower(env, f"--port={port}", *args, cwd=cwd)
    assert _refused(proc, port) == 78
    out = _log(tmp_path, 0)
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "basic auth" in lines[0], out
    assert "s3cret" not in out


@pytest.mark.parametrize(
    ("user", "password"), [("ops", "pässword"), ("öps", "s3cret")], ids=["password", "user"]
)
def test_non_ascii_credentials_are_refused(user: str, password: str) -> None:
    """Flower compares credentials with hmac.compare_digest, which takes ASCII text only: a
    non-ASCII one would make every request a server error."""
    settings = Settings(flower_user=user, flower_password=SecretStr(password))
    with pytest.raises(ConfigurationError, match="ASCII"):
        basic_auth(settings)
    ascii_only = Settings(flower_user="ops", flower_password=SecretStr("s3cret"))
    assert basic_auth(ascii_only) == "ops:s3cret"


def test_a_password_too_short_to_scrub_from_errors_is_refused() -> None:
    """Error texts are scrubbed of secrets of 4 characters or more: a shorter password could
    reach a log or `lastError` as written."""
    for short in ("abc", "x"):
        settings = Settings(flower_user="ops", flower_password=SecretStr(short))
        with pytest.raises(ConfigurationError, match="at least 4 characters"):
            basic_auth(settings)
    assert basic_auth(Settings(flower_user="ops", flower_password=SecretStr("abcd"))) == "ops:abcd"
