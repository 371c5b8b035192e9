"""Shared test helpers: condition waits, ledger reading and the docs/DESIGN.md invariant checks."""

from __future__ import annotations

import itertools
import json
import math
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import redis

from mvpipe.deps import Context, get_context
from mvpipe.devstack.drills import paid_generations
from mvpipe.devstack.invariants import violations
from mvpipe.media.synth import synthesize_song
from mvpipe.models import ProjectSpec, ProjectStatus, SceneSpec, SceneStatus
from mvpipe.pipeline.create import create_project as write_project
from mvpipe.pipeline.intake import project_intake
from mvpipe.providers.local import LocalJobs
from mvpipe.store.clips import clip_key, working_key
from mvpipe.store.table import project_pk, scene_sk

T = TypeVar("T")


def without_aws_credentials(env: Mapping[str, str], tmp_path: Path) -> dict[str, str]:
    """`env` with no AWS credentials anywhere botocore looks: no AWS_* variables, empty
    credential and config files, no instance role (the metadata service off); a region, so
    that only the credentials are missing."""
    empty = tmp_path / "aws-empty"
    empty.write_text("")
    return {k: v for k, v in env.items() if not k.startswith("AWS_")} | {
        "AWS_SHARED_CREDENTIALS_FILE": str(empty),
        "AWS_CONFIG_FILE": str(empty),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def wait_for(check: Callable[[], T], timeout: float = 60.0, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def create_key_table(client: Any, name: str) -> None:
    """A PK/SK string-keyed on-demand table named `name` (what the product's table keys on),
    for tests that speak to a DynamoDB endpoint with a bare client."""
    client.create_table(
        TableName=name,
        KeySchema=[
            {"AttributeName": "PK", "KeyType": "HASH"},
            {"AttributeName": "SK", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "PK", "AttributeType": "S"},
            {"AttributeName": "SK", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )


def listening_on(port: int) -> set[str]:
    """The local addresses (hex, as the kernel lists them) with a socket listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def wait_broker_idle(client: redis.Redis, timeout: float, what: str) -> None:
    """Wait until no message is queued, held by a worker (reserved, or waiting for its
    countdown) or running.

    With late acknowledgement a running step publishes its next one before it is acknowledged,
    so while work remains some message is in a queue or in `unacked`. The one gap, a message
    just popped from its queue and not yet recorded as unacked, lasts far less than the poll's
    interval: two idle looks in a row are needed.
    """

    def empty() -> bool:
        queues = (k for k in client.scan_iter("mvpipe.*") if client.type(k) == b"list")
        return not client.hlen("unacked") and not any(client.llen(k) for k in queues)

    looks = [False]

    def twice() -> bool:
        looks.append(empty())
        return looks[-1] and looks[-2]

    wait_for(twice, timeout, what)


def ledger(path: Path, project_id: str | None = None) -> list[dict]:
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in lines if project_id is None or e["project_id"] == project_id]


generations_per_scene = paid_generations


def provider_calls(state: Path, project_id: str, kind: str) -> dict[int, int]:
    """How many calls of `kind` the local provider (its store at `state`) counted for each of
    the project's scenes: a `submit` that was refused counts, an `accepted` one is a job."""
    with LocalJobs(state).transaction() as db:
        rows = db.execute(
            "SELECT sequence, n FROM calls WHERE project_id = ? AND kind = ?", (project_id, kind)
        ).fetchall()
    return {int(sequence): int(n) for sequence, n in rows}


def own_storage() -> dict[str, str]:
    """`start_workers` settings for a table and bucket of a test's own: for a test whose pass
    over every project (beat's first reconcile, `mvpipe reconcile`) would otherwise cover all
    that earlier tests left in the shared ones."""
    name = f"mvpipe-own-{uuid.uuid4().hex[:8]}"
    return {"table": name, "bucket": name}


def assert_invariants(project_id: str) -> None:
    """Invariants 1, 4 and 5 of docs/DESIGN.md, checked against the store and S3 directly."""
    found = violations(get_context(), project_id)
    assert not found, found


def new_project(
    ctx: Context, scenes: int = 3, *, run: bool = True, budget_micros: int | None = None
) -> tuple[str, str]:
    """A planned project written straight through the store (and its run won, unless `run` is
    False): (project id, run id)."""
    project_id = str(uuid.uuid4())
    spec = ProjectSpec(
        title="Test",
        concept="A concept",
        provider="local",
        requested_scene_count=scenes,
        scenes=tuple(
            SceneSpec(prompt=f"scene {n}", duration_seconds=8) for n in range(1, scenes + 1)
        ),
        budget_micros=budget_micros,
    )
    ctx.projects.create(project_id, spec)
    run_id = str(uuid.uuid4())
    if run:
        assert ctx.projects.win_run(project_id, run_id, ProjectStatus.PROCESSING) == run_id
    return project_id, run_id


def song_project_unanalysed(ctx: Context, title: str, song: bytes, **options: Any) -> str:
    """A song project written as `api.create_project` writes it, without the song analysis a
    create asks a media worker for: for a test that plans it by hand, or removes what an
    analysis reads or writes (a worker analysing it meanwhile would race the test)."""
    intake = project_intake(ctx.settings, title, "Sung.", song=song, **options)
    project_id = str(uuid.uuid4())
    write_project(ctx, project_id, intake.spec, intake.song)
    return project_id


def lip_synced_project(ctx: Context, song: bytes, boundaries: list[float], marked: set[int]) -> str:
    """A project with `song`, planned straight through the store (no song analysis: its slots
    are `boundaries`, the scenes in `marked` lip-synced), with no run: `run_project` makes it."""
    project_id = song_project_unanalysed(ctx, "Lip-sync", song, lip_sync=True)
    specs = [
        SceneSpec(
            prompt=f"scene {n}",
            duration_seconds=math.ceil(end - start),
            start_seconds=start,
            end_seconds=end,
            lip_sync=n in marked,
        )
        for n, (start, end) in enumerate(itertools.pairwise(boundaries), start=1)
    ]
    run_id = str(uuid.uuid4())
    assert ctx.projects.win_run(project_id, run_id, ProjectStatus.PROCESSING) == run_id
    assert ctx.projects.save_plan(project_id, run_id, specs, token=uuid.uuid4().hex)
    state = ctx.projects.load(project_id)
    assert ctx.projects.settle(
        project_id,
        observed_run=run_id,
        counters=state.counters,
        status=ProjectStatus.PENDING,
        release=True,
    )
    return project_id


def waiting_for_lip_sync(ctx: Context) -> str:
    """A project whose lip-synced scene 2 was left between its cut and its lip-sync (original
    and working clips recorded, `processing` with no lease and no lip-sync operation) by a run
    that ended there (cancelled), with no run active now."""
    song = synthesize_song(seconds=5.0, bpm=120.0, sections=1)
    project_id = lip_synced_project(ctx, song.wav, [0.0, 2.5, 5.0], {2})
    m = ctx.table.model
    original = clip_key(project_id, 2, "op")
    ctx.table.update(
        project_pk(project_id),
        scene_sk(2),
        [
            m.status.set(SceneStatus.PROCESSING),
            m.original_clip_key.set(original),
            m.working_clip_key.set(working_key(project_id, 2, original, "0123456789abcdef")),
        ],
        None,
    )
    return project_id


def commands_under(
    client: redis.Redis, prefix: str, act: Callable[[], object], *, whole: bool = False
) -> list[str]:
    """The commands `act` sends to the keys under `prefix`, those its scripts run included, as
    MONITOR shows them (a marker read after it says where they end): their names, or `whole`
    commands with their arguments."""
    marker = f"{prefix}:end-{uuid.uuid4()}"
    seen: list[str] = []
    with client.monitor() as monitor:
        act()
        client.get(marker)
        for entry in monitor.listen():
            command = entry["command"]
            if command == f"GET {marker}":
                return seen
            if prefix in command:
                seen.append(command if whole else command.split()[0].upper())
    raise AssertionError("MONITOR stopped before the marker")
