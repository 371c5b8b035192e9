"""The `mvpipe` command run as a real process against the local stack, and Flower behind auth."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from mvpipe import api
from mvpipe.celery_app import app
from mvpipe.cli.display import print_summary
from mvpipe.deps import get_context
from mvpipe.devstack.localstack import LOCAL_CREDENTIAL, free_port, port_open, start_flower
from mvpipe.media.probe import probe_video
from mvpipe.models import (
    CONTROL,
    ProjectStatus,
    ProjectView,
    SceneStatus,
    SceneView,
    is_project_id,
)
from mvpipe.pipeline.reconcile_scope import FULL_SWEEP_JOB
from tests.cli_batch import mvpipe_batch
from tests.conftest import Workers
from tests.helpers import listening_on, own_storage, wait_for, without_aws_credentials
from tests.processes import Processes
from tests.songs import make_song, make_wav

pytestmark = pytest.mark.integration

StartWorkers = Callable[..., Workers]


def mvpipe(
    env: dict[str, str], *args: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mvpipe.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_create_run_wait_status_fetch_and_projects(
    start_workers: StartWorkers, tmp_path: Path
) -> None:
    # `mvpipe reconcile` below passes over every project: this test's alone.
    workers = start_workers(output_size="160x90", output_fps="12", **own_storage())
    created = mvpipe(
        workers.env, "create", "--title", "CLI", "--concept", "Lines.", "--scenes", "3"
    )
    assert created.returncode == 0, created.stderr
    project_id = created.stdout.strip()
    assert str(uuid.UUID(project_id)) == project_id

    ran = mvpipe(workers.env, "run", project_id, "--wait")
    assert ran.returncode == 0, ran.stderr
    bars = {line.split()[0]: line for line in ran.stderr.splitlines() if line.strip()}
    assert "3/3" in bars["generated"] and "1/1" in bars["assembled"], ran.stderr
    assert "completed" in ran.stdout

    clip = tmp_path / "one.mp4"
    # Read-only once the run is over (and `reconcile` passes over this test's storage alone).
    status, table, fetched, fetched_clip, missing, bad, listed, reconciled, unwritable = (
        mvpipe_batch(
            workers.env,
            ("status", project_id, "--json"),
            ("status", project_id),
            ("fetch", project_id, str(tmp_path)),
            ("fetch", project_id, str(clip), "--scene", "1", "--stage", "original"),
            ("fetch", project_id, "--scene", "1", "--stage", "lipsync"),
            ("fetch", project_id, "--scene", "0"),
            ("projects", "--status", "completed"),
            ("reconcile", "--json"),
            ("fetch", project_id, "/proc/self/x.mp4"),  # no file can be made there, even by root
        )
    )
    view = json.loads(status.stdout)
    assert view["status"] == "completed" and view["completed_scenes"] == 3
    final = view["final_video_s3_key"]
    assert final.startswith(f"projects/{project_id}/final/")
    assert "completed" in table.stdout and "scenes/001/" in table.stdout
    assert final in table.stdout

    assert fetched.returncode == 0, fetched.stderr
    video = tmp_path / f"{project_id}-music-video.mp4"
    assert video.read_bytes()[4:8] == b"ftyp" and str(video) in fetched.stdout
    assert fetched_clip.returncode == 0, fetched_clip.stderr
    assert clip.read_bytes() == _read(view["scenes"][0]["original_video_clip_s3_key"])
    # the provider's clip lasts the length the scene asked for (not a short render held)
    assert probe_video(clip.read_bytes()).video_seconds == view["scenes"][0]["duration_seconds"]
    assert missing.returncode == 3 and "no lipsync clip" in missing.stderr
    assert bad.returncode == 2 and "sequence" in bad.stderr

    assert project_id in listed.stdout
    report = json.loads(reconciled.stdout)
    assert report["total"] == 0, report  # a healthy project: nothing to repair
    # A local file that cannot be written is the user's to fix, not an outage of the stack.
    assert unwritable.returncode == 2, unwritable.stderr
    assert unwritable.stderr.startswith("error: cannot write /proc/self/x.mp4: ")
    assert len(unwritable.stderr.strip().splitlines()) == 1, unwritable.stderr
    assert "backing service" not in unwritable.stderr


def _read(key: str) -> bytes:
    return get_context().clips.read(key)


def on_terminal(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """A command whose standard error is a terminal (a pseudo-terminal read here) and whose
    standard output is a pipe: (the command, what the terminal showed)."""
    terminal, its_end = pty.openpty()
    shown: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(terminal, 4096)
            except OSError:  # EIO: the command's end is closed and all of it read
                return
            if not data:
                return
            shown.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "mvpipe.cli", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=its_end,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=180,
        )
    finally:
        os.close(its_end)
        reader.join(timeout=60)
        os.close(terminal)
    assert not reader.is_alive()
    return done, b"".join(shown).decode(errors="replace")


def test_reconcile_shows_its_progress_on_a_terminal_only_and_keeps_its_output(
    start_workers: StartWorkers,
) -> None:
    # Its own table: the pass examines every project in it.
    workers = start_workers(**own_storage())
    env = {**workers.env, "MVPIPE_FULL_SWEEP_SECONDS": "0.001"}  # each pass examines all three
    created = mvpipe_batch(
        env, *(("create", "--title", f"P{n}", "--concept", "Lines.") for n in range(3))
    )
    assert all(c.returncode == 0 for c in created), [c.stderr for c in created]

    shown, bar = on_terminal(env, "reconcile")
    assert shown.returncode == 0, bar
    assert "projects examined" in bar and "3/3" in bar, bar
    piped, piped_json = mvpipe_batch(env, ("reconcile",), ("reconcile", "--json"))
    assert "projects examined" not in piped.stderr  # a log or a pipe: no progress
    assert shown.stdout == piped.stdout  # the report alone, as without a terminal
    assert "projects examined" not in shown.stdout and "total" in shown.stdout

    as_json, json_shown = on_terminal(env, "reconcile", "--json")
    assert as_json.returncode == 0, json_shown
    assert "projects examined" not in json_shown  # --json: no progress, even on a terminal
    assert json.loads(as_json.stdout) == json.loads(piped_json.stdout)
    assert json.loads(as_json.stdout)["total"] == 0

    # A fetch says what it is fetching while it runs, then fails in one line as before.
    fetched, fetch_shown = on_terminal(env, "fetch", created[0].stdout.strip())
    assert fetched.returncode == 3 and fetched.stdout == ""
    assert "fetching the final video" in fetch_shown and "no final video" in fetch_shown


def test_reconcile_sweep_does_the_sweeps_now_and_shows_their_progress_on_a_terminal_only(
    start_workers: StartWorkers, tmp_path: Path
) -> None:
    # Its own table and bucket: the sweeps cover every project and project folder in them.
    workers = start_workers(**own_storage())
    song = tmp_path / "song.wav"
    song.write_bytes(make_song("wav", 6.0).data)
    created = mvpipe_batch(
        workers.env,
        ("create", "--title", "Sung", "--concept", "x", "--song", str(song)),
        ("create", "--title", "Said", "--concept", "x"),
    )
    assert all(c.returncode == 0 for c in created), [c.stderr for c in created]
    # The full sweep just done (not due again for an hour): a regular pass leaves the two
    # untouched projects to it.
    assert get_context().board.due(FULL_SWEEP_JOB, 3600)

    regular, regular_bar = on_terminal(workers.env, "reconcile")
    assert regular.returncode == 0, regular_bar
    assert "projects examined" in regular_bar and "0/0" in regular_bar, regular_bar
    assert "project folders swept" not in regular_bar

    swept, bar = on_terminal(workers.env, "reconcile", "--sweep")
    assert swept.returncode == 0, bar
    assert "project folders swept" in bar and "1/?" in bar, bar  # the song's project's folder
    assert "projects examined" in bar and "2/2" in bar, bar  # the full sweep, forced
    piped, piped_json = mvpipe_batch(
        workers.env, ("reconcile", "--sweep"), ("reconcile", "--sweep", "--json")
    )
    assert piped.returncode == 0 and piped.stderr == ""  # a log or a pipe: no progress
    assert swept.stdout == piped.stdout and "total" in swept.stdout

    as_json, json_shown = on_terminal(workers.env, "reconcile", "--sweep", "--json")
    assert as_json.returncode == 0, json_shown
    assert "swept" not in json_shown and "examined" not in json_shown  # --json: no progress
    assert json.loads(as_json.stdout) == json.loads(piped_json.stdout)
    assert json.loads(as_json.stdout)["total"] == 0


def test_user_mistakes_are_one_line_and_an_exit_code(stack: object, tmp_path: Path) -> None:
    long_song = tmp_path / "long.wav"
    long_song.write_bytes(make_song("wav", 601.0).data)  # MVPIPE_SONG_MAX_SECONDS [600]
    undecodable = tmp_path / "float16.wav"
    undecodable.write_bytes(make_wav(6.0, tag=3))  # 16-bit float: FFmpeg has no decoder
    some = str(uuid.uuid4())
    create = ("create", "--title", "t", "--concept", "x")
    cases = [
        (("status", "not-an-id"), 2, "invalid project id"),
        (("status", some), 3, "not found"),
        (("run", "../../etc"), 2, "invalid project id"),
        (("create", "--title", "", "--concept", "x"), 2, "title"),
        ((*create, "--provider", "nope"), 2, "provider"),
        (("regenerate", some, "0"), 2, "sequence"),
        ((*create, "--song", str(tmp_path / "missing.wav")), 2, "does not exist"),
        ((*create, "--song", str(long_song)), 2, "song is too long"),
        ((*create, "--song", str(undecodable)), 2, "no decoder for its audio codec"),
        ((*create, "--budget", "-5"), 2, "budget must be between 0 and"),
        (("budget", some, "lots"), 2, "budget must be a number of US dollars"),
        (("budget", some, "-5"), 2, "budget must be between 0 and"),
        (("budget", "not-an-id", "5"), 2, "invalid project id"),
        # Click's own checks: one line too, not its usage block
        ((*create, "--budget", "lots"), 2, "invalid value for '--budget'"),
        ((*create, "--scenes", "0"), 2, "invalid value for '--scenes'"),
        (("run", some, "--wait", "--timeout", "soon"), 2, "invalid value for '--timeout'"),
        (("projects", "--limit", "0"), 2, "invalid value for '--limit'"),
        (("regenerate", some), 2, "missing argument 'SEQUENCE'"),
        (("status", some, "--colour"), 2, "no such option"),
        (("statuz", some), 2, "no such command"),
    ]
    results = mvpipe_batch(dict(os.environ), *(args for args, _, _ in cases))
    for (args, code, text), result in zip(cases, results, strict=True):
        assert result.returncode == code, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith("error:") and text in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stdout == "", result.stdout


def test_create_reads_the_concept_from_standard_input_and_the_scenes_from_a_file(
    stack: object, tmp_path: Path
) -> None:
    scene_file = tmp_path / "scenes.json"
    scene_file.write_text(json.dumps([{"prompt": "a red door"}, {"prompt": "a blue sky"}]))
    created = subprocess.run(
        [
            *(sys.executable, "-m", "mvpipe.cli", "create", "--title", "Files"),
            *("--concept-file", "-", "--scene-file", str(scene_file)),
        ],
        env=dict(os.environ),
        input="Lines\nfrom standard input.",
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert created.returncode == 0, created.stderr
    view = get_context().projects.load(created.stdout.strip()).view()
    assert view.concept == "Lines\nfrom standard input."
    assert [s.prompt for s in view.scenes] == ["a red door", "a blue sky"]

    # A concept file saved with Windows line ends is text: stored with plain newlines.
    crlf = tmp_path / "concept.txt"
    crlf.write_bytes(b"Line one\r\nline two\r\n")
    created = mvpipe(os.environ.copy(), "create", "--title", "CRLF", "--concept-file", str(crlf))
    assert created.returncode == 0, created.stderr
    view = get_context().projects.load(created.stdout.strip()).view()
    assert view.concept == "Line one\nline two\n"


def shown_project(**fields: Any) -> ProjectView:
    """A project as `status` gets it: unplanned, no error, unless `fields` say otherwise."""
    now = datetime.now(UTC)
    base: dict[str, Any] = {
        "project_id": str(uuid.uuid4()),
        "title": "Shown",
        "concept": "x",
        "provider": "local",
        "status": ProjectStatus.PENDING,
        "scene_count": 0,
        "completed_scenes": 0,
        "failed_scenes": 0,
        "last_error": None,
        "created_at": now,
        "updated_at": now,
        "scenes": [],
    }
    return ProjectView(**(base | fields))


def shown_scene(sequence: int, **fields: Any) -> SceneView:
    """A completed scene of two tries as `status` gets it, but for `fields`."""
    base: dict[str, Any] = {
        "prompt": "p",
        "negative_prompt": None,
        "duration_seconds": 4,
        "status": SceneStatus.COMPLETED,
        "original_video_clip_s3_key": None,
        "working_video_clip_s3_key": None,
        "lip_synced_video_clip_s3_key": None,
        "attempts": 2,
        "last_error": None,
        "provider_operation_id": None,
        "completed_at": None,
    }
    return SceneView(sequence=sequence, **(base | fields))


def test_status_says_what_is_not_planned_yet_and_counts_lip_syncs_apart(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a song's project not planned yet, then planned with a lip-synced scene
    view = shown_project(title="Song", song_s3_key="songs/x.wav")
    print_summary(view)
    # Then its scene count is unknown, as `mvpipe projects` says, not 0
    assert re.search(r"scenes \?\s", capsys.readouterr().out)

    scenes = [shown_scene(1, lip_sync=True, lip_sync_attempts=1), shown_scene(2)]
    print_summary(view.model_copy(update={"scene_count": 2, "scenes": scenes}))
    shown = capsys.readouterr().out
    # and a lip-synced scene's tries are its generations + its lip-syncs
    rows = {cells[0]: cells for cells in map(str.split, shown.splitlines()) if cells[0].isdigit()}
    assert re.search(r"scenes 2\s", shown)
    assert rows["1"][2:4] == ["completed", "2+1"] and rows["2"][2:4] == ["completed", "2"]


def test_status_shows_no_control_character_of_an_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given errors whose text would clear the screen and retitle the terminal (a record written
    # before replies were scrubbed of them, or by another hand)
    escapes = "clip refused \x1b[2J\x1b]0;pwned\x07 by\r\nthe \x9b2J provider"
    scene = shown_scene(1, status=SceneStatus.FAILED, last_error=escapes)
    view = shown_project(
        status=ProjectStatus.FAILED, scene_count=1, failed_scenes=1, last_error=escapes
    )
    # When the CLI shows the project
    print_summary(view.model_copy(update={"scenes": [scene]}))
    shown = capsys.readouterr().out
    # Then no control character reaches the terminal, and each error stays on its line
    assert not CONTROL.search(shown), repr(shown)
    errors = [line for line in shown.splitlines() if "clip refused" in line]
    assert len(errors) == 2 and all("provider" in line for line in errors), shown


def test_status_shows_a_title_and_an_error_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    # Given a title and an error that rich would read as markup and emoji names
    written = "[bold]Neon[/bold] :smile: [/x]"
    scene = shown_scene(1, status=SceneStatus.FAILED, last_error=f"refused {written}")
    view = shown_project(title=written, scene_count=1, last_error=f"failed {written}")
    # When the CLI shows the project
    print_summary(view.model_copy(update={"scenes": [scene]}))
    shown = capsys.readouterr().out
    # Then each is shown as written
    assert f"{written!r}" in shown and f"failed {written}" in shown, shown
    assert f"refused {written}" in shown, shown


def test_the_listing_shows_each_project_on_a_line_of_its_own(stack: object) -> None:
    # Given projects whose titles hold a newline, one of them written to look like a row
    row = f"{uuid.uuid4()}  completed         2026-01-01T00:00:00+00:00  3/3  Forged"
    titles = {api.create_project(t, "x"): t for t in (f"Real\n{row}", "Two\nlines\n")}
    # When `mvpipe projects` lists them
    listed = mvpipe(dict(os.environ), "projects")
    assert listed.returncode == 0, listed.stderr
    # Then each line is a project's, and each project is on one line, its title's newlines
    # shown as spaces
    lines = listed.stdout.splitlines()
    assert all(is_project_id(line[:36]) for line in lines), listed.stdout
    ours = {line[:36]: line for line in lines if line[:36] in titles}
    assert len(ours) == len(titles), listed.stdout
    for project_id, title in titles.items():
        assert ours[project_id].endswith(title.replace("\n", " ")), ours[project_id]


def test_missing_aws_credentials_are_named_not_taken_for_an_unreachable_store(
    stack: object, tmp_path: Path
) -> None:
    # Given no AWS credentials anywhere botocore looks (no variables, empty files, no instance
    # role), or a key without its secret, or a profile that is not there
    env = without_aws_credentials(os.environ, tmp_path) | {"MVPIPE_STORE_RETRY_SECONDS": "0.5"}
    some = str(uuid.uuid4())
    for extra in ({}, {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE"}, {"AWS_PROFILE": "nowhere"}):
        # When a command reaches the store
        result = mvpipe(env | extra, "status", some)
        # Then it says which setting to fix, in one line, with the configuration exit code
        assert result.returncode == 6, (extra, result.stderr)
        assert "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, result.stderr
        assert "no usable AWS credentials" in errors[0] and "AWS_PROFILE" in errors[0], errors
        assert "is the store running" not in errors[0], errors
        # at once: no store call was tried again (no try finds credentials), so the command
        # did not wait out the store's outage retry (`MVPIPE_STORE_RETRY_SECONDS`)
        assert "store call failed" not in result.stderr, result.stderr


def test_run_and_regenerate_wait_exit_1_when_the_project_fails(
    start_workers: StartWorkers,
) -> None:
    workers = start_workers(local_faults="permanent=1.0", local_latency="0")
    created = mvpipe(workers.env, "create", "--title", "Fails", "--concept", "x", "--scenes", "1")
    assert created.returncode == 0, created.stderr
    project_id = created.stdout.strip()
    ran = mvpipe(workers.env, "run", project_id, "--wait", "--timeout", "120")
    assert ran.returncode == 1, ran.stderr
    assert "failed" in ran.stdout
    again = mvpipe(workers.env, "regenerate", project_id, "1", "--wait", "--timeout", "120")
    assert again.returncode == 1, again.stderr
    assert "Traceback" not in again.stderr
    assert "failed" in again.stdout and again.stderr.startswith("run ")


class Severable:
    """A TCP forwarder to a local port whose connections can all be cut at once: a store that
    stops answering in the middle of a conversation."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # cut
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            with self.lock:
                self.open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)

    def cut(self) -> None:
        """Refuse new connections and reset every open one."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept
        self.listener.close()
        with self.lock:
            for sock in self.open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


@pytest.fixture
def severable() -> Iterator[Callable[[int], Severable]]:
    """Forwarders to local ports, every one cut after the test (no listener is left open)."""
    made: list[Severable] = []

    def make(upstream: int) -> Severable:
        made.append(Severable(upstream))
        return made[-1]

    yield make
    for store in made:
        store.cut()


def test_run_wait_says_so_in_one_line_when_the_store_stops_answering(
    start_workers: StartWorkers, severable: Callable[[int], Severable], processes: Processes
) -> None:
    workers = start_workers(local_latency="30")
    project_id = mvpipe(
        workers.env, "create", "--title", "Cut", "--concept", "x", "--scenes", "1"
    ).stdout.strip()
    port = int(workers.env["MVPIPE_DYNAMODB_ENDPOINT"].rsplit(":", 1)[1])
    store = severable(port)
    env = {
        **workers.env,
        "MVPIPE_DYNAMODB_ENDPOINT": store.url,
        "MVPIPE_S3_ENDPOINT": store.url,
        "MVPIPE_STORE_RETRY_SECONDS": "1",
    }
    proc = processes.start(
        [sys.executable, "-m", "mvpipe.cli", "run", project_id, "--wait"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    started = proc.stderr.readline()
    assert started.startswith("run "), started
    store.cut()  # while it follows the run
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 6, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "unavailable" in errors[0], err


def test_every_command_has_help(stack: object) -> None:
    env = dict(os.environ)
    commands = ["create", "run", "status", "regenerate", "cancel", "reconcile", "projects", "stack"]
    commands = ["", *commands, "demo", "fetch", "flower", "estimate", "budget"]
    results = mvpipe_batch(env, *((*([c] if c else []), "--help") for c in commands))
    for command, result in zip(commands, results, strict=True):
        assert result.returncode == 0 and "Usage: mvpipe" in result.stdout, command
    helps = dict(zip(commands, (r.stdout for r in results), strict=True))
    # The list of commands says what each does in full (not cut short with "...").
    listed = helps[""].split("Commands:")[1].splitlines()
    assert len([line for line in listed if line.strip()]) == len(commands) - 1, helps[""]
    assert not any(line.rstrip().endswith("...") for line in listed), helps[""]
    assert "Exit codes: 0 done, 1 the project failed, 2 invalid input" in helps[""]
    # Units and defaults where a value has them.
    for command, says in [
        ("create", ["US dollars", "[default: no limit]", "DEFAULT_SCENES, 8", "[1<=x<=999]"]),
        (
            "run",
            ["Seconds to wait", "(default 3600, at most", "exits 0 when the project completed"],
        ),
        ("regenerate", ["Seconds to wait", "its number, from 1"]),
        ("budget", ["US dollars", "`none`: no limit"]),
        ("estimate", ["US dollars", "Seconds to wait", "(default 600, at most"]),
        ("projects", ["[default: 100; 1<=x<=1000]"]),
        ("reconcile", ["MVPIPE_FULL_SWEEP_SECONDS [3600]", "standard error"]),
        ("demo", ["in seconds", "[default: 30.0]", "20 to 400"]),
        ("stack", ["1 to 64", "[default: 2]"]),
        ("flower", ["[default: 127.0.0.1]", "MVPIPE_FLOWER_PASSWORD"]),
    ]:
        text = " ".join(helps[command].split())
        assert all(" ".join(s.split()) in text for s in says), (command, says, helps[command])


def test_flower_requires_auth_shows_scenes_polling_and_lists_their_tasks(
    start_workers: StartWorkers, tmp_path: Path, processes: Processes
) -> None:
    workers = start_workers(local_latency="5")
    port = free_port()
    flower = processes.adopt(
        start_flower(workers.env, tmp_path / "flower.log", port=port, user="ops", password="s3cret")
    )
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{base}/api/workers", timeout=10).status_code == 401
    assert httpx.get(f"{base}/api/workers", auth=("ops", "wrong"), timeout=10).status_code == 401
    created = mvpipe(workers.env, "create", "--title", "Seen", "--concept", "x", "--scenes", "2")
    project_id = created.stdout.strip()
    assert mvpipe(workers.env, "run", project_id).returncode == 0

    def tasks() -> list[dict]:
        response = httpx.get(f"{base}/api/tasks", auth=("ops", "s3cret"), timeout=10)
        assert response.status_code == 200
        return [t for t in response.json().values() if project_id in str(t.get("args"))]

    def polling() -> dict | None:
        """A scene shown as POLLING in Flower, with the same state and meta in the backend."""
        for task in tasks():
            if task["name"] == "mvpipe.generate_scene" and task["state"] == "POLLING":
                stored = app.AsyncResult(task["uuid"])
                if stored.state == "POLLING" and stored.info["project_id"] == project_id:
                    return {"uuid": task["uuid"], "meta": stored.info}
        return None

    seen = wait_for(polling, 60, "Flower to show a scene polling its provider job")
    assert str(seen["meta"]["operation_id"]).startswith("local-")
    assert mvpipe(workers.env, "run", project_id, "--wait").returncode == 0
    assert app.AsyncResult(seen["uuid"]).state == "SUCCESS"

    def listed() -> dict | None:
        found = tasks()
        names = {t["name"] for t in found}
        # plan_scenes replaces itself with the chord, whose body (finalize_project) replaces
        # itself with assemble_project: all share the run id, so Flower shows that id under
        # the last one's name.
        done = {"mvpipe.generate_scene", "mvpipe.assemble_project"}
        return {"tasks": found} if done <= names else None

    found = wait_for(listed, 60, "Flower to list the project's tasks")
    assert all("s3cret" not in json.dumps(t) for t in found["tasks"])
    # its broker view reads the queues (it knows the broker's kind by the URL's scheme)
    queues = httpx.get(f"{base}/api/queues/length", auth=("ops", "s3cret"), timeout=10)
    assert queues.status_code == 200
    assert "mvpipe.video" in {q["name"] for q in queues.json()["active_queues"]}
    assert "s3cret" not in flower.log_text()


def test_flower_listens_on_loopback_unless_told_otherwise(
    stack: object, tmp_path: Path, processes: Processes
) -> None:
    port = free_port()
    env = {**os.environ, "MVPIPE_FLOWER_USER": "ops", "MVPIPE_FLOWER_PASSWORD": "s3cret"}
    with (tmp_path / "flower.log").open("w") as log:
        processes.start(
            [sys.executable, "-m", "mvpipe.cli", "flower", f"--port={port}"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    wait_for(lambda: port_open(port), 60, "Flower to listen")
    assert listening_on(port) == {"0100007F"}  # 127.0.0.1 alone, not every interface


def marked_processes(mark: str) -> list[int]:
    """Processes whose environment, as they were started with it, holds `mark` (`NAME=value`):
    the command, and the state server, workers and their pools, beat and Flower, which inherit
    it (redis-server writes its title over that memory: its port is checked instead)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to read
            if mark.encode() in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
    return found


def redis_on(ports: list[int]) -> list[int]:
    """A redis-server listening on one of `ports` (its title names its address)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            title = cmdline.read_bytes().decode(errors="replace")
            if "redis-server" in title and any(f"127.0.0.1:{p}" in title for p in ports):
                found.append(int(cmdline.parent.name))
    return found


@contextlib.contextmanager
def signals_heeded() -> Iterator[None]:
    """SIGHUP and SIGINT at their defaults meanwhile, should this process ignore them (run
    under `nohup`, or as a shell's background job, which ignores Ctrl-C): a process started
    meanwhile inherits that, and the stack leaves an ignored signal ignored, as a background
    job should."""
    previous = {n: signal.signal(n, signal.SIG_DFL) for n in (signal.SIGHUP, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c-when-up", "sighup-while-starting"]
)
def test_stack_command_starts_everything_and_stops_cleanly_on_a_signal(
    stack: object, tmp_path: Path, processes: Processes, signum: int
) -> None:
    """Ctrl-C once it is up; the terminal closed (SIGHUP) while it starts (SIGTERM, treated
    the same, is in `test_localstack`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MVPIPE_")}
    starting = signum == signal.SIGHUP
    if starting:
        # Flower on a socket file (its own option) never answers on its port: the stack is
        # still starting when the signal lands, however fast the machine.
        env["FLOWER_UNIX_SOCKET"] = str(tmp_path / "flower.sock")
    # Unwarmed, as in every test but the song ones: its 3 pool processes warming song analysis
    # (~4 s of CPU each) slowed every start after the worker's, and the shutdown waited for them.
    env["MVPIPE_WARM_MEDIA"] = "0"
    # What it prints for other shells to export must not carry a user's real secret.
    secret = f"users-real-secret-{uuid.uuid4().hex}"
    env["AWS_SECRET_ACCESS_KEY"] = secret
    mark = f"STACK_UNDER_TEST={uuid.uuid4().hex}"
    env[mark.split("=")[0]] = mark.split("=")[1]
    # Stopped by Ctrl-C also when the test fails: the stack then stops what it started (each of
    # its servers runs in a session of its own, beyond the reach of its group's kill).
    with signals_heeded():
        proc = processes.start(
            [sys.executable, "-m", "mvpipe.cli", "stack", "--workdir", str(tmp_path / "s")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            stop_signal=signal.SIGINT,
            stop_timeout=120,
        )
    ports: list[int] = []
    try:
        lines: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops everything" in line or (starting and line.startswith("state server")):
                break
        servers = [x for x in lines if x.startswith(("redis-server at ", "state server "))]
        ports += [int(x.rsplit(":", 1)[1].split("/")[0]) for x in servers]
        assert len(ports) == 2 and all(port_open(p) for p in ports)  # Redis, the state server
        if not starting:
            output = "".join(lines)
            assert "Flower: http://127.0.0.1:" in output and "beat ready" in output
            assert (
                f"export AWS_SECRET_ACCESS_KEY={LOCAL_CREDENTIAL}" in output
                and secret not in output
            )
        else:  # the workers, beat and Flower spawned (their pools too, maybe), not yet ready
            # the command, the state server, two workers, beat, Flower
            wait_for(lambda: len(marked_processes(mark)) >= 6, 60, "the stack's processes")
        proc.send_signal(signum)
        code = proc.wait(timeout=120)
        if starting:  # told to stop while it started
            assert code == 1 and "error: aborted" in proc.stdout.read()
        else:
            assert code == 0
        wait_for(lambda: not any(port_open(p) for p in ports), 30, "the servers to stop")
        wait_for(lambda: not marked_processes(mark), 30, "every process of the stack to stop")
    finally:  # the command stopped (as the fixture would); what it left, the test does not
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=120)
        for pid in marked_processes(mark) + redis_on(ports):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
