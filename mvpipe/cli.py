"""The `mvpipe` command line. Errors are one clear line and a documented exit code.

Exit codes: 0 done, 1 the project failed, 2 invalid input, 3 not found, 4 conflict,
5 timed out, 6 a service or setting is unavailable.
"""

from __future__ import annotations

import importlib
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from mvpipe.errors import (
    ConfigurationError,
    Conflict,
    InvalidInput,
    MvpipeError,
    NotFound,
    StoreUnavailable,
    Timeout,
)
from mvpipe.media.files import read_bounded, within
from mvpipe.models import (
    DEFAULT_LIST_LIMIT,
    MAX_CONCEPT,
    ProjectStatus,
    ProjectView,
    validate_seconds,
)

T = TypeVar("T")


class _Lazy:
    """A module imported on its first use, so `--help` stays instant."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


if TYPE_CHECKING:
    from mvpipe import api
else:
    api = _Lazy("mvpipe.api")

EXIT_FAILED, EXIT_INVALID, EXIT_NOT_FOUND, EXIT_CONFLICT, EXIT_TIMEOUT, EXIT_UNAVAILABLE = (
    1,
    2,
    3,
    4,
    5,
    6,
)
_EXIT_CODES: list[tuple[type[MvpipeError], int]] = [
    (InvalidInput, EXIT_INVALID),
    (NotFound, EXIT_NOT_FOUND),
    (Conflict, EXIT_CONFLICT),
    (Timeout, EXIT_TIMEOUT),
    (StoreUnavailable, EXIT_UNAVAILABLE),
    (ConfigurationError, EXIT_UNAVAILABLE),
]


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def guarded(fn: Callable[[], T]) -> T:
    """Run an API call; user mistakes and outages become one line and an exit code."""
    try:
        return fn()
    except MvpipeError as exc:
        code = next((c for t, c in _EXIT_CODES if isinstance(exc, t)), EXIT_FAILED)
        _fail(str(exc), code)
    except OSError as exc:  # connection refused and the like: the stack is not running
        _fail(f"cannot reach a backing service: {exc}", EXIT_UNAVAILABLE)


#: The largest --scene-file read: 999 scenes with full prompts fit with room to spare.
MAX_SCENE_FILE_BYTES = 16 * 1024 * 1024
#: The most worker processes `mvpipe stack` starts.
MAX_CONCURRENCY = 64


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    """A user's file (`-`: standard input), at most `limit` bytes."""
    if str(path) == "-":
        return within(sys.stdin.buffer.read(limit + 1), limit, what)
    return read_bounded(path, limit, what)


def _read_concept(path: Path) -> str:
    """The concept from a file: UTF-8 text (its length is checked with the rest of the spec)."""
    data = _read_bounded(path, 4 * MAX_CONCEPT, "--concept-file")  # 4 bytes per character at most
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"--concept-file {path} is not UTF-8 text") from None


def _read_scenes(path: Path) -> Any:
    """The scene specs from a JSON file (checked by the API like any other scenes)."""
    data = _read_bounded(path, MAX_SCENE_FILE_BYTES, "--scene-file")
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"--scene-file is not valid JSON: {exc}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mvpipe")
def main() -> None:
    """mvpipe: generate music videos scene by scene on a Celery cluster.

    Configuration comes from MVPIPE_* environment variables (see the README).
    """


@main.command()
@click.option("--title", required=True, help="The video's title.")
@click.option("--concept", help="Concept or lyrics (or use --concept-file).")
@click.option(
    "--concept-file",
    type=click.Path(path_type=Path, allow_dash=True),
    help="Read the concept/lyrics from a file (- reads standard input).",
)
@click.option("--scenes", "scene_count", type=int, help="Number of scenes [MVPIPE_DEFAULT_SCENES].")
@click.option(
    "--scene-file",
    type=click.Path(path_type=Path, allow_dash=True),
    help="JSON list of scene specs (- reads standard input); skips planning.",
)
@click.option("--provider", help="Video provider: local, veo or replicate [MVPIPE_PROVIDER].")
@click.option(
    "--song",
    type=click.Path(path_type=Path),
    help="Audio file (WAV, MP3, M4A/AAC, FLAC, OGG); its beats decide the scenes.",
)
@click.option("--lip-sync", is_flag=True, help="Let the planner mark scenes for lip-sync (--song).")
@click.option("--budget", "budget_usd", type=float, help="Spending limit in US dollars.")
def create(
    title: str,
    concept: str | None,
    concept_file: Path | None,
    scene_count: int | None,
    scene_file: Path | None,
    provider: str | None,
    song: Path | None,
    lip_sync: bool,
    budget_usd: float | None,
) -> None:
    """Create a project and print its id."""
    if concept_file is not None:
        concept = guarded(lambda: _read_concept(concept_file))
    if concept is None:
        _fail("give --concept or --concept-file", EXIT_INVALID)
    scenes = None if scene_file is None else guarded(lambda: _read_scenes(scene_file))
    project_id = guarded(
        lambda: api.create_project(
            title,
            concept,
            scene_count=scene_count,
            scenes=scenes,
            provider=provider,
            song=song,
            lip_sync=lip_sync,
            budget_usd=budget_usd,
        )
    )
    click.echo(project_id)


@main.command()
@click.argument("project_id")
@click.option("--wait/--no-wait", default=False, help="Follow the run with a live progress bar.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds to wait with --wait.")
def run(project_id: str, wait: bool, timeout: float) -> None:
    """Start (or join) a project's run."""
    _started(lambda: api.run_project(project_id), wait, timeout)
    if wait:
        _follow_and_exit(project_id, timeout)


def _started(start: Callable[[], Any], wait: bool, timeout: float) -> None:
    """Check --timeout (when waiting) before anything starts, then start and name the run."""
    if wait:
        guarded(lambda: validate_seconds(timeout, "--timeout"))
    result = guarded(start)
    click.echo(f"run {result.id}", err=True)


def _follow_and_exit(project_id: str, timeout: float) -> NoReturn:
    """`--wait`: follow the run, print the project, exit 0 if it completed, else 1."""
    view = follow(project_id, timeout)
    _print_summary(view)
    sys.exit(0 if view.status == ProjectStatus.COMPLETED else EXIT_FAILED)


def follow(project_id: str, timeout: float) -> ProjectView:
    """Show each stage's progress until the project's run is over; returns the final view."""
    from mvpipe.progress import StageProgress

    def over() -> ProjectView | None:
        try:
            return api.wait_project(project_id, timeout=0.5)
        except Timeout:
            return None

    progress = StageProgress()
    deadline = time.monotonic() + timeout
    try:
        while True:
            view = guarded(over)
            if view is not None:
                progress.update(view)
                return view
            progress.update(guarded(lambda: api.get_project(project_id)))
            if time.monotonic() > deadline:
                _fail(f"project {project_id} still running after {timeout:.0f}s", EXIT_TIMEOUT)
    finally:
        progress.close()


@main.command()
@click.argument("project_id")
@click.option("--json", "as_json", is_flag=True, help="Print the full project as JSON.")
def status(project_id: str, as_json: bool) -> None:
    """Show a project: its song, final video and each scene's slot, stages and keys."""
    view = guarded(lambda: api.get_project(project_id))
    if as_json:
        click.echo(view.model_dump_json(indent=2))
    else:
        _print_summary(view)


def _print_summary(view: ProjectView) -> None:
    from rich.console import Console
    from rich.table import Table

    from mvpipe.progress import money

    console = Console(highlight=False, markup=False)  # titles and errors are shown as written
    if not console.is_terminal:
        console.width = 240  # a pipe or a log: keep every key on one line
    prefix = f"projects/{view.project_id}/"

    def short(key: str | None) -> str:
        return "-" if key is None else key.removeprefix(prefix)

    console.print(f"project   {view.project_id}  {view.title!r}")
    console.print(
        f"status    {view.status}   scenes {view.scene_count}   completed {view.completed_scenes}"
        f"   failed {view.failed_scenes}   provider {view.provider}"
    )
    console.print(f"cost      {money(view)}")
    if view.song_s3_key:
        seconds = f"  ({view.song_seconds:.2f} s)" if view.song_seconds else ""
        console.print(f"song      {view.song_s3_key}{seconds}")
    console.print(f"final     {view.final_video_s3_key or '-'}")
    if view.last_error:
        console.print(f"error     {view.last_error}")
    if not view.scenes:
        return
    table = Table(box=None, pad_edge=False)
    for name, justify in (
        ("seq", "right"),
        ("slot (s)", "left"),
        ("status", "left"),
        ("tries", "right"),
        ("original", "left"),
        ("working", "left"),
        ("lip-synced", "left"),
        ("last error", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for scene in view.scenes:
        slot = "-"
        if scene.start_seconds is not None and scene.end_seconds is not None:
            slot = f"{scene.start_seconds:.3f}..{scene.end_seconds:.3f}"
        lip = short(scene.lip_synced_video_clip_s3_key) if scene.lip_sync else "(none)"
        table.add_row(
            str(scene.sequence),
            slot,
            str(scene.status),
            str(scene.attempts),
            short(scene.original_video_clip_s3_key),
            short(scene.working_video_clip_s3_key),
            lip,
            scene.last_error or "",
        )
    console.print(table)


@main.command()
@click.argument("project_id")
@click.argument("sequence", type=int)
@click.option("--wait/--no-wait", default=False, help="Follow the run until the scene is done.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds to wait with --wait.")
def regenerate(project_id: str, sequence: int, wait: bool, timeout: float) -> None:
    """Generate one scene again (a new paid generation for that scene only)."""
    _started(lambda: api.regenerate_scene(project_id, sequence), wait, timeout)
    if wait:
        _follow_and_exit(project_id, timeout)


@main.command()
@click.argument("project_id")
def cancel(project_id: str) -> None:
    """Cancel a project's run; a later `run` resumes it."""
    view = guarded(lambda: api.cancel_project(project_id))
    click.echo(f"cancelled; project is {view.status}")


@main.command()
@click.argument("project_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--sweep", is_flag=True, help="Also sweep for stray scene items and songs now.")
def reconcile(project_id: str | None, as_json: bool, sweep: bool) -> None:
    """Repair what crashes left behind (beat runs this on a schedule for every project)."""
    report = guarded(lambda: api.reconcile(project_id, sweep_strays=sweep or None))
    if as_json:
        click.echo(report.model_dump_json(indent=2))
        return
    for name, value in report.model_dump().items():
        click.echo(f"{name:<18} {value}")


@main.command()
@click.option(
    "--status",
    "status_",
    type=click.Choice([s.value for s in ProjectStatus]),
    help="Only projects with this status (served by the status index).",
)
@click.option(
    "--limit",
    default=DEFAULT_LIST_LIMIT,
    show_default=True,
    help="Show at most this many, the newest (newest last).",
)
def projects(status_: str | None, limit: int) -> None:
    """List the newest projects, newest last."""
    records = guarded(lambda: api.list_projects(status_, limit=limit))
    if len(records) == limit:
        click.echo(f"the newest {limit} project(s); --limit shows more", err=True)
    for record in records:
        click.echo(
            f"{record.project_id}  {record.status:<17} {record.created_at}  "
            f"{record.completed_scenes}/{record.scene_count or record.requested_scene_count}  "
            f"{record.title}"
        )


@main.command()
@click.argument("project_id")
@click.option("--scene", "sequence", type=int, help="What regenerating this scene would cost.")
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as JSON.")
def estimate(project_id: str, sequence: int | None, as_json: bool) -> None:
    """What a run would still pay: every paid stage still missing."""
    from mvpipe.pricing import MICROS_PER_USD

    found = guarded(lambda: api.estimate_micros(project_id, sequence))
    dollars = found.micros / MICROS_PER_USD
    if as_json:
        payload = {"usd": dollars, "jobs": found.jobs, "exact": found.exact}
        click.echo(json.dumps(payload))
        return
    approx = "" if found.exact else "about "
    click.echo(f"{approx}${dollars:,.2f} for {found.jobs} paid job(s)")


@main.command(context_settings={"ignore_unknown_options": True})  # so "-5" is a value
@click.argument("project_id")
@click.argument("usd")
def budget(project_id: str, usd: str) -> None:
    """Set a project's budget in US dollars (`none`: no limit); `run` then continues."""
    value: float | None = None
    if usd.strip().lower() != "none":
        try:
            value = float(usd)
        except ValueError:
            _fail(f"budget must be a number of US dollars or 'none', not {usd!r}", EXIT_INVALID)
    from mvpipe.progress import money

    view = guarded(lambda: api.set_budget(project_id, value))
    click.echo(f"cost      {money(view)}")


# -- the local stack ---------------------------------------------------------------------------
@contextmanager
def local_stack(
    workdir: Path, *, concurrency: int, flower: bool, beat: bool
) -> Iterator[dict[str, str]]:
    """Start redis-server, the moto state server, the workers, beat and Flower; stop them
    after."""
    from mvpipe.deps import reset_context
    from mvpipe.devstack import localstack

    stack = localstack.LocalStack(workdir)
    with stack.running():
        env = stack.child_env()
        user = os.environ.get("MVPIPE_FLOWER_USER") or "mvpipe"
        password = os.environ.get("MVPIPE_FLOWER_PASSWORD") or secrets.token_urlsafe(12)
        env.update({"MVPIPE_FLOWER_USER": user})
        os.environ.update(stack.env)
        reset_context()
        logs = workdir / "logs"
        click.echo(f"redis-server at {stack.env['MVPIPE_BROKER_URL']}", err=True)
        click.echo(
            f"state server (DynamoDB + S3) at {stack.env['MVPIPE_DYNAMODB_ENDPOINT']}", err=True
        )
        stack.services.append(
            localstack.start_worker(env, logs / "worker.log", concurrency=concurrency)
        )
        stack.services.append(localstack.start_control_worker(env, logs / "control.log"))
        click.echo(
            f"worker ready (concurrency {concurrency}, and a control worker); logs in {logs}",
            err=True,
        )
        if beat:
            stack.services.append(localstack.start_beat(env, logs / "beat.log"))
            click.echo("beat ready (reconcile schedule)", err=True)
        if flower:
            port = (
                localstack.free_port()
                if os.environ.get("MVPIPE_FLOWER_PORT") is None
                else int(os.environ["MVPIPE_FLOWER_PORT"])
            )
            stack.services.append(
                localstack.start_flower(
                    env, logs / "flower.log", port=port, user=user, password=password
                )
            )
            click.echo(
                f"Flower: http://127.0.0.1:{port}  user {user}  password {password}", err=True
            )
        yield stack.env


def _stop_on_signal() -> threading.Event:
    """Ctrl-C / SIGTERM set the returned event instead of interrupting the shutdown."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


@main.command()
@click.option(
    "--workdir", type=click.Path(path_type=Path), help="Where the stack keeps data and logs."
)
@click.option("--concurrency", default=2, show_default=True, help="Worker processes.")
@click.option("--no-flower", is_flag=True, help="Do not start Flower.")
def stack(workdir: Path | None, concurrency: int, no_flower: bool) -> None:
    """Start the whole local stack (Redis, state server, worker, beat, Flower) until Ctrl-C."""
    guarded(lambda: _check_concurrency(concurrency))
    workdir = workdir or Path(tempfile.mkdtemp(prefix="mvpipe-stack-"))
    with local_stack(workdir, concurrency=concurrency, flower=not no_flower, beat=True) as env:
        stop = _stop_on_signal()  # before announcing it, so an early Ctrl-C is not lost
        click.echo("\nPoint other shells at this stack with:", err=True)
        for key, value in env.items():
            click.echo(f"export {key}={value}")
        click.echo("\nRunning; Ctrl-C stops everything.", err=True)
        while not stop.wait(0.5):
            pass
    click.echo("stack stopped", err=True)


def _check_concurrency(value: int) -> None:
    if not 1 <= value <= MAX_CONCURRENCY:
        raise InvalidInput(f"--concurrency must be from 1 to {MAX_CONCURRENCY}, not {value}")


#: The demo's settings, chosen so it finishes in about a minute on 2 cores (each can be
#: overridden from the environment): short slots, a quick local provider, 720p output.
DEMO_SETTINGS = {
    "MVPIPE_LOCAL_LATENCY": "1.5",
    "MVPIPE_SLOT_MAX_SECONDS": "4",
    "MVPIPE_OUTPUT_SIZE": "1280x720",
    "MVPIPE_OUTPUT_FPS": "24",
}
DEMO_CONCEPT = (
    "City lights bloom after midnight.\nRain writes stories on the glass.\n"
    "A train hums through the dark.\nMorning breaks over the river."
)


@main.command()
@click.option("--seconds", default=30.0, show_default=True, help="Length of the synthesized song.")
@click.option("--bpm", default=120.0, show_default=True, help="Tempo of the synthesized song.")
@click.option(
    "--keep", is_flag=True, help="Keep the stack running afterwards (explore it in Flower)."
)
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=Path("demo-output"),
    show_default=True,
    help="Where the music video (and each scene's working clip) is written.",
)
@click.option(
    "--lip-sync/--no-lip-sync",
    default=True,
    show_default=True,
    help="Let the planner mark performance scenes for lip-sync.",
)
def demo(seconds: float, bpm: float, keep: bool, output: Path, lip_sync: bool) -> None:
    """Make a music video end to end on the local stack from a synthesized song, then stop.

    The song (drums and bass) is made by code; its beats decide the scenes; each scene gets a
    clip from the local provider, cut to its slot; every third scene is lip-synced (the local
    lip-sync draws a mouth and a level meter that follow the song); the clips and the song
    become OUTPUT/music-video.mp4 (H.264 + AAC).
    """
    from mvpipe.media.synth import synthesize_song

    guarded(lambda: _check_output(output))
    song = guarded(lambda: synthesize_song(seconds=seconds, bpm=bpm))
    workdir = Path(tempfile.mkdtemp(prefix="mvpipe-demo-"))
    try:
        for key, value in DEMO_SETTINGS.items():
            os.environ.setdefault(key, value)
        os.environ.setdefault("MVPIPE_LOCAL_LEDGER", str(workdir / "ledger.jsonl"))
        with local_stack(workdir, concurrency=2, flower=True, beat=True):
            project_id = guarded(
                lambda: api.create_project(
                    "Neon Rain", DEMO_CONCEPT, song=song.wav, lip_sync=lip_sync
                )
            )
            click.echo(
                f"\ncreated project {project_id} with a {seconds:g} s song at {bpm:g} BPM"
                f" ({len(song.beats)} beats); running it",
                err=True,
            )
            guarded(lambda: api.run_project(project_id))
            view = follow(project_id, 600)
            click.echo("")
            _print_summary(view)
            if view.status == ProjectStatus.COMPLETED:
                guarded(lambda: _write_demo_output(view, output))
            if keep:
                click.echo(f"\nmore: mvpipe fetch {project_id} --scene 1 (with the stack's env)")
                stop = _stop_on_signal()
                click.echo("Stack kept running; Ctrl-C stops it.", err=True)
                while not stop.wait(0.5):
                    pass
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # data and logs of a finished demo
    sys.exit(0 if view.status == ProjectStatus.COMPLETED else EXIT_FAILED)


def _check_output(output: Path) -> None:
    """The demo's output directory can be made and written (checked before the stack starts):
    its nearest existing ancestor is a writable directory."""
    if output.exists() and not output.is_dir():
        raise InvalidInput(f"--output {output} exists and is not a directory")
    nearest = output.absolute()
    while not nearest.exists():
        nearest = nearest.parent
    if not nearest.is_dir():
        raise InvalidInput(f"--output {output}: {nearest} is not a directory")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise InvalidInput(f"--output {output}: {nearest} is not writable")


def _write_demo_output(view: ProjectView, output: Path) -> None:
    """The final video (and any working clips) into `output`, with how to play it; a failed
    write is one line (exit 2), not a traceback."""
    try:
        _write_outputs(view, output)
    except OSError as exc:
        raise InvalidInput(f"cannot write the demo's output to {output}: {exc}") from None


def _write_outputs(view: ProjectView, output: Path) -> None:
    from mvpipe.media.probe import probe_video

    output.mkdir(parents=True, exist_ok=True)
    video = api.download(view.project_id, output / "music-video.mp4")
    scenes = output / "scenes"
    shutil.rmtree(scenes, ignore_errors=True)  # clips of an earlier demo are not this video's
    for scene in view.scenes:
        if scene.working_video_clip_s3_key:
            scenes.mkdir(exist_ok=True)
            target = scenes / f"scene-{scene.sequence:03d}.mp4"
            api.download(view.project_id, target, sequence=scene.sequence, stage="working")
        if scene.lip_synced_video_clip_s3_key:
            target = scenes / f"scene-{scene.sequence:03d}-lipsync.mp4"
            api.download(view.project_id, target, sequence=scene.sequence, stage="lipsync")
    click.echo(f"\nmusic video: {video.resolve()}")
    click.echo(f"             {probe_video(video).describe()}")
    if scenes.exists():
        click.echo(f"scene clips: {scenes.resolve()}/")
    click.echo(f"play it:     ffplay {video}")
    click.echo("             (or mpv / vlc with the same path, or open the file in a web browser)")


@main.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Interface to listen on; 0.0.0.0 opens it to the network.",
)
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower(address: str, flower_args: tuple[str, ...]) -> None:
    """Start Flower behind basic auth (refuses without MVPIPE_FLOWER_USER/PASSWORD), on
    127.0.0.1 unless --address says otherwise; other arguments go to Flower."""
    from mvpipe.settings import get_settings

    s = get_settings()
    if not s.flower_user or s.flower_password is None or not s.flower_password.get_secret_value():
        _fail(
            "set MVPIPE_FLOWER_USER and MVPIPE_FLOWER_PASSWORD; Flower never runs open",
            EXIT_UNAVAILABLE,
        )
    auth = f"{s.flower_user}:{s.flower_password.get_secret_value()}"
    argv = [sys.executable, "-m", "celery", "-A", "mvpipe.celery_app", "flower"]
    argv += [f"--address={address}", *flower_args]
    os.execve(sys.executable, argv, {**os.environ, "FLOWER_BASIC_AUTH": auth})


@main.command()
@click.argument("project_id")
@click.argument("file", required=False, type=click.Path(path_type=Path))
@click.option("--scene", "sequence", type=int, help="A scene's clip instead of the final video.")
@click.option(
    "--stage",
    type=click.Choice(["working", "original", "lipsync"]),
    help="Which clip of --scene [working].",
)
def fetch(project_id: str, file: Path | None, sequence: int | None, stage: str | None) -> None:
    """Download the final video (or a scene's clip) to FILE.

    FILE defaults to PROJECT_ID-music-video.mp4 (PROJECT_ID-scene-NNN-STAGE.mp4 for a scene)
    in the current directory; a directory receives the file under that name.
    """
    if stage is not None and sequence is None:
        _fail("--stage needs --scene", EXIT_INVALID)
    chosen = "final" if sequence is None else (stage or "working")
    dest = file if file is not None else Path.cwd()
    written = guarded(lambda: api.download(project_id, dest, sequence=sequence, stage=chosen))
    click.echo(f"wrote {written}")


if __name__ == "__main__":
    main()
