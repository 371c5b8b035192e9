"""Bad input is refused before anything touches the store: with no stack at all the CLI says
what is wrong (exit 2), and the API creates neither table nor bucket. And the bounded listing."""

from __future__ import annotations

import errno
import json
import os
import pwd
import re
import shlex
import shutil
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest

from mvpipe import api
from mvpipe.cli.exits import STORE_HINT, guarded
from mvpipe.deps import reset_context
from mvpipe.devstack.localstack import LocalStack, free_port, port_open, stack_env
from mvpipe.errors import BrokerUnavailable, InvalidInput, NotFound, StoreUnavailable
from mvpipe.media.audio import wav_size
from mvpipe.media.files import writable_directory
from mvpipe.media.synth import SAMPLE_RATE, synthesize_song
from mvpipe.models import MAX_CONCEPT, ProjectSummary
from tests.cli_batch import mvpipe_batch
from tests.helpers import own_storage
from tests.test_cli import mvpipe, on_terminal

#: A `~user` path whose user does not exist: its home directory cannot be known.
NO_USER = "mvpipe-no-such-user"


def _no_such_user() -> str:
    """`NO_USER`, checked absent here: the refusal tested is for a user who does not exist."""
    with pytest.raises(KeyError):
        pwd.getpwnam(NO_USER)
    return NO_USER


def _no_stack_env(tmp_path: Path) -> dict[str, str]:
    """Redis, DynamoDB and S3 all at a port nothing listens on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MVPIPE_")}
    dead = free_port()
    assert not port_open(dead)
    env.update(stack_env(dead, dead, tmp_path / "state"))
    env["MVPIPE_STORE_RETRY_SECONDS"] = "1"  # the one valid request gives up soon
    return env


def test_cli_refuses_bad_input_with_no_stack_running(tmp_path: Path) -> None:
    env = _no_stack_env(tmp_path)
    some = str(uuid.uuid4())
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * (4 * MAX_CONCEPT + 1))
    broken = tmp_path / "scenes.json"
    broken.write_text("[{")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000)  # past the parser's recursion limit
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    dest = tmp_path / "dest"
    dest.mkdir()
    five = tmp_path / "five.json"  # Veo makes 4, 6 and 8 s clips
    five.write_text(json.dumps([{"prompt": "p", "duration_seconds": 5}]))
    veo_five = ("--provider", "veo", "--scene-file", str(five))
    nobody = _no_such_user()
    made = sorted(tmp_path.iterdir())
    cases: list[tuple[tuple[str, ...], str]] = [
        (("status", "not-a-uuid"), "invalid project id"),
        (("run", "not-a-uuid"), "invalid project id"),
        (("run", "not-a-uuid", "--wait"), "invalid project id"),
        (("run", some, "--wait", "--timeout", "-1"), "--timeout"),
        (("cancel", "../../etc"), "invalid project id"),
        (("regenerate", "not-a-uuid", "1"), "invalid project id"),
        (("regenerate", some, "0"), "sequence"),
        (("regenerate", some, "1", "--wait", "--timeout", "nan"), "--timeout"),
        (("estimate", "not-a-uuid"), "invalid project id"),
        (("estimate", some, "--scene", "1000"), "sequence"),
        (("estimate", some, "--timeout", "5"), "--timeout needs --wait"),
        (("run", some, "--timeout", "5"), "--timeout needs --wait"),
        (("regenerate", some, "1", "--timeout", "5"), "--timeout needs --wait"),
        (("budget", "not-a-uuid", "5"), "invalid project id"),
        (("budget", some, "-5"), "budget"),
        (("projects", "--limit", "0"), "limit"),
        (("reconcile", "not-a-uuid"), "invalid project id"),
        (("fetch", "not-a-uuid", str(dest)), "invalid project id"),
        (("fetch", some, str(dest), "--scene", "0"), "sequence"),
        (("create", "--title", "", "--concept", "x"), "title"),
        (("create", "--title", "t", "--concept", "x", "--provider", "nope"), "provider"),
        (("create", "--title", "t", "--concept-file", str(big)), "too large"),
        (("create", "--title", "t", "--concept-file", str(tmp_path / "none")), "does not exist"),
        (("create", "--title", "t", "--concept", "x", "--scene-file", str(broken)), "JSON"),
        (("create", "--title", "t", "--concept", "x", "--scene-file", str(deep)), "too deeply"),
        (("create", "--title", "t", "--concept", "x", "--concept-file", str(a_file)), "not both"),
        (("create", "--title", "t", "--concept", "x", *veo_five), "veo makes no 5 s clip"),
        (("fetch", some, f"~{nobody}/x.mp4"), f"~{nobody} names no home directory"),
        (("stack", "--concurrency", "0"), "--concurrency"),
        (("stack", "--workdir", str(a_file), "--no-flower"), "not a directory"),
        (("stack", "--workdir", "/proc/x", "--no-flower"), "--workdir /proc/x: cannot write"),
        (("demo", "--output", str(a_file)), "not a directory"),
        (("demo", "--output", str(a_file / "no" / "such")), "not a directory"),
    ]
    # A valid request does reach for the store, and finds nothing there: `python -m mvpipe.cli`
    # itself, beside the refusals' batch (one import, a process forked for each command).
    with ThreadPoolExecutor(1) as pool:
        reaching = pool.submit(mvpipe, env, "status", some)
        results = mvpipe_batch(env, *(args for args, _ in cases))
        reached = reaching.result()
    assert reached.returncode == 6, reached.stderr
    assert STORE_HINT in reached.stderr  # where to look, not only that it failed
    assert "Traceback" not in reached.stderr
    for (args, text), result in zip(cases, results, strict=True):
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        assert result.stderr.startswith("error:") and text in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        assert result.stdout == "", (args, result.stdout)
    assert sorted(tmp_path.iterdir()) == made  # no state dir, no demo output, no download
    assert list(dest.iterdir()) == []


def test_a_fetch_on_a_terminal_refuses_an_id_that_reads_as_markup(tmp_path: Path) -> None:
    # Given an id that rich's markup would read as a closing tag, fetched with standard error
    # on a terminal (where a spinner says what is fetched)
    dest = tmp_path / "dest"
    dest.mkdir()
    fetched, shown = on_terminal(_no_stack_env(tmp_path), "fetch", "[/x]", str(dest))
    # Then it is refused as any bad id is, in one line
    assert fetched.returncode == 2, shown
    assert shown.strip() == "error: invalid project id: '[/x]'", shown
    assert list(dest.iterdir()) == []


def _storage_names() -> tuple[set[str], set[str]]:
    """Every table and bucket on the local stack, read straight from it."""
    dynamo = boto3.client("dynamodb", endpoint_url=os.environ["MVPIPE_DYNAMODB_ENDPOINT"])
    s3 = boto3.client("s3", endpoint_url=os.environ["MVPIPE_S3_ENDPOINT"])
    tables = set(dynamo.list_tables()["TableNames"])
    buckets = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    return tables, buckets


def test_api_bad_input_creates_no_table_or_bucket(
    stack: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = own_storage()
    for key, value in names.items():
        monkeypatch.setenv(f"MVPIPE_{key.upper()}", value)
    reset_context()
    some = str(uuid.uuid4())
    refused: list[Callable[[], Any]] = [
        lambda: api.create_project("", "x"),
        lambda: api.create_project("t", "x", provider="nope"),
        lambda: api.create_project("t", "x", scene_count=0),
        lambda: api.create_project("t", "x", scenes=[{"prompt": ""}]),
        lambda: api.create_project("t", "x", budget_usd=-1),
        lambda: api.create_project(
            "t", "x", provider="veo", scenes=[{"prompt": "p", "duration_seconds": 5}]
        ),
        lambda: api.create_project("t", "x", song="a\x00b.wav"),
        lambda: api.create_project("t", "x", song=tmp_path / "a\x00b.wav"),
        lambda: api.get_project("not-a-uuid"),
        lambda: api.run_project("not-a-uuid"),
        lambda: api.cancel_project("not-a-uuid"),
        lambda: api.regenerate_scene(some, 0),
        lambda: api.set_budget(some, -5),
        lambda: api.estimate_micros("not-a-uuid"),
        lambda: api.estimate_micros(some, 1000),
        lambda: api.estimate_cost(some, 0),
        lambda: api.list_projects("bogus"),
        lambda: api.list_projects(limit=0),
        lambda: api.list_projects(limit=10_000),
        lambda: api.wait_project("not-a-uuid"),
        lambda: api.wait_project(some, timeout=float("nan")),
        lambda: api.wait_project(some, timeout=-1),
        lambda: api.wait_project(some, interval=0),
        lambda: api.reconcile("not-a-uuid"),
        lambda: api.download("not-a-uuid", tmp_path),
        lambda: api.download(some, tmp_path, stage="poster"),
        lambda: api.download(some, tmp_path / "missing" / "x.mp4"),
        lambda: api.download(some, f"~{_no_such_user()}/x.mp4"),
        lambda: api.download(some, f"~{_no_such_user()}"),
        lambda: api.download(some, tmp_path / "a\x00b.mp4"),
        lambda: api.download(some, str(tmp_path) + "\x00"),
    ]
    try:
        for call in refused:
            with pytest.raises(InvalidInput):
                call()
        tables, buckets = _storage_names()
        assert names["table"] not in tables and names["bucket"] not in buckets
        assert list(tmp_path.iterdir()) == []
        # The first valid call opens (so creates) them: the check above could see them.
        with pytest.raises(NotFound):
            api.get_project(some)
        tables, buckets = _storage_names()
        assert names["table"] in tables and names["bucket"] in buckets
    finally:
        monkeypatch.undo()
        reset_context()


def test_list_projects_returns_the_newest_up_to_its_limit(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in own_storage().items():
        monkeypatch.setenv(f"MVPIPE_{key.upper()}", value)
    reset_context()
    try:
        ids = [api.create_project(f"P{n}", "x", scene_count=1) for n in range(3)]
        assert [p.project_id for p in api.list_projects(limit=2)] == ids[1:]
        # each in brief, as a view (never the store's record): scenes asked for, none done; a
        # song's project not planned yet has no count (its beats will decide)
        ids.append(api.create_project("S", "x", song=synthesize_song(seconds=6.0, bpm=120).wav))
        listed = api.list_projects("pending")
        assert all(isinstance(p, ProjectSummary) for p in listed)
        assert [(p.title, p.scene_count, p.completed_scenes) for p in listed] == [
            *((f"P{n}", 1, 0) for n in range(3)),
            ("S", None, 0),
        ]
        assert [p.project_id for p in api.list_projects("pending")] == ids
        assert api.list_projects("completed", limit=1) == []
    finally:
        monkeypatch.undo()
        reset_context()


def _spied_redis_server(tmp_path: Path) -> tuple[Path, Path]:
    """A `redis-server` first on PATH that notes each start and then runs the real one: the
    local stack's first process, so a demo that starts anything leaves the note."""
    real = shutil.which("redis-server") or "/usr/bin/redis-server"
    spy = tmp_path / "spy-bin"
    spy.mkdir()
    started = tmp_path / "redis-server-started"
    script = spy / "redis-server"
    script.write_text(f'#!/bin/sh\necho "$@" >> {shlex.quote(str(started))}\nexec {real} "$@"\n')
    script.chmod(0o755)
    return spy, started


def test_the_demo_refuses_before_it_starts_any_process(tmp_path: Path) -> None:
    env = _no_stack_env(tmp_path)
    env.pop("MVPIPE_FLOWER_PORT", None)
    spy, started = _spied_redis_server(tmp_path)
    env["PATH"] = f"{spy}{os.pathsep}{env['PATH']}"
    env["TMPDIR"] = str(tmp_path / "tmp")  # where the demo would put its stack's data
    (tmp_path / "tmp").mkdir()
    # Songs create_project would refuse once the stack is up: more than MAX_SCENES half-second
    # slots (over 499.5 s), a WAV over the byte limit (over 40 s); the default 30 s passes both.
    env["MVPIPE_SLOT_MIN_SECONDS"] = env["MVPIPE_SLOT_MAX_SECONDS"] = "0.5"
    env["MVPIPE_SONG_MAX_BYTES"] = str(wav_size(40, SAMPLE_RATE))
    out = tmp_path / "out"
    cases: list[tuple[tuple[str, ...], str]] = [
        (("demo", "--seconds", "550", "--output", str(out)), "scenes"),
        (("demo", "--seconds", "50", "--output", str(out)), "too large"),
        (("demo", "--seconds", "1", "--output", str(out)), "--seconds"),
        (("demo", "--seconds", "601", "--output", str(out)), "--seconds"),
        (("demo", "--seconds", "nan", "--output", str(out)), "--seconds"),
        (("demo", "--output", "/proc/demo-output.mp4"), "/proc/demo-output.mp4"),
        (("demo", "--output", "/proc/self/demo"), "/proc/self/demo"),
        (("demo", "--output", str(out / "deeper" / "still"), "--bpm", "0"), "BPM"),
    ]
    results = mvpipe_batch(env, *(args for args, _ in cases))
    for (args, text), result in zip(cases, results, strict=True):
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("error:") and text in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        assert result.stdout == "", (args, result.stdout)
    assert not started.exists(), started.read_text()  # no redis-server, so no stack at all
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not out.exists() and not Path("/proc/demo-output.mp4").exists()


def test_the_output_directory_check_leaves_no_directory_it_made_nor_a_probe(
    tmp_path: Path,
) -> None:
    output = tmp_path / "a" / "b"
    writable_directory(output, "--output")
    assert list(tmp_path.iterdir()) == []  # made to write the probe, then removed with it
    output.mkdir(parents=True)
    writable_directory(output, "--output")  # an existing, writable directory passes and stays
    assert output.is_dir() and list(output.iterdir()) == []
    with pytest.raises(InvalidInput, match=re.escape("--output /proc/x.mp4")):
        writable_directory(Path("/proc/x.mp4"), "--output")


def test_the_demos_size_estimate_is_the_synthesized_songs_size() -> None:
    for seconds in (2.0, 3.7):
        assert len(synthesize_song(seconds=seconds).wav) == wav_size(seconds, SAMPLE_RATE)


def test_the_store_hint_is_for_the_store_not_the_broker(capsys: pytest.CaptureFixture[str]) -> None:
    """A broker's message names its own settings; the store's hint would contradict it."""

    def raising(exc: Exception) -> Callable[[], None]:
        def call() -> None:
            raise exc

        return call

    for exc, hinted in (
        (BrokerUnavailable("the broker at redis://127.0.0.1:1 is down"), False),
        (StoreUnavailable("DynamoDB unavailable"), True),
    ):
        with pytest.raises(SystemExit) as ended:
            guarded(raising(exc))
        said = capsys.readouterr().err
        assert ended.value.code == 6 and said.startswith(f"error: {exc}")
        assert (STORE_HINT in said) is hinted, said


def test_only_a_connections_error_says_the_stack_is_unreachable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A refused connection is an outage (exit 6); a local file's error (a full disk) is not,
    and is never reported as one."""

    def raising(exc: Exception) -> Callable[[], None]:
        def call() -> None:
            raise exc

        return call

    with pytest.raises(SystemExit) as ended:
        guarded(raising(ConnectionRefusedError(111, "Connection refused")))
    assert ended.value.code == 6 and "cannot reach a backing service" in capsys.readouterr().err
    full = OSError(errno.ENOSPC, "No space left on device", "/data/.partial-1a2b.mp4")
    with pytest.raises(OSError) as raised:
        guarded(raising(full))
    assert raised.value is full and capsys.readouterr().err == ""


def test_data_nested_past_the_interpreters_depth_is_invalid_input() -> None:
    """Values nested too deeply to print are refused as any bad value, not a RecursionError."""
    deep: list[Any] = []
    inner = deep
    for _ in range(200_000):
        inner.append([])
        inner = inner[0]
    some = str(uuid.uuid4())
    for call in (
        lambda: api.get_project(deep),
        lambda: api.set_budget(some, deep),
        lambda: api.regenerate_scene(some, deep),
        lambda: api.list_projects(limit=deep),
        lambda: api.list_projects(status=deep),  # type: ignore[arg-type]
        lambda: api.create_project("t", "x", scenes=[{"prompt": deep}]),
        lambda: api.create_project("t", "x", scenes=deep),
    ):
        with pytest.raises(InvalidInput):
            call()
