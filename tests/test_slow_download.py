"""A finished job's output downloaded slowly, on the real stack (moto server, Celery workers,
Replicate's real SDK against the stand-in): the download may outlast the poll's liveness mark
(a large output, a slow link), so the poll marks the scene alive for the whole download first.
Otherwise reconcile, finding the mark lapsed mid-download, would start a second poll chain
fetching the same output again (twice the memory, and each round's poll counted twice)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from mvpipe import api
from mvpipe.deps import get_context
from mvpipe.devstack.localstack import LocalStack
from mvpipe.models import ProjectSpec, SceneSpec, SceneStatus
from tests.conftest import Workers
from tests.helpers import assert_invariants, wait_for
from tests.standins import (
    REPLICATE_MODEL,
    ProviderStandIn,
    configured_standin,
    output_of,
    replicate_env,
)

pytestmark = pytest.mark.integration

StartWorkers = Callable[..., Workers]
MODEL = REPLICATE_MODEL
#: the stand-in's drip framing sends a KiB at a time, at least this long after the last
DRIP_PIECE_SECONDS = 0.05
#: the output's 1 KiB pieces: ~9.6 s of drip, twice the 4 s at most the checks wait for, so
#: they and the reconcile pass run while it is still under way (asserted)
OUTPUT_PIECES = 192


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch, stack: LocalStack) -> Iterator[ProviderStandIn]:
    with configured_standin(monkeypatch, replicate_env("5")) as server:
        yield server


def downloads(standin: ProviderStandIn) -> int:
    return sum(1 for r in standin.requests if r.kind == "file")


def test_a_download_longer_than_the_liveness_keeps_its_scene_alive(
    standin: ProviderStandIn, start_workers: StartWorkers
) -> None:
    # Given workers whose poll liveness mark lasts about 3 s (the least the settings allow
    # beside a 2 s provider call and a 1 s store call), a whole-download deadline of two
    # minutes, and a finished job whose output comes a KiB every 50 ms (about 9.6 s)
    standin.output, standin.output_framing = output_of(OUTPUT_PIECES * 1024), "drip"
    start_workers(
        env={"MVPIPE_POLL_SECONDS": "0.1"},
        backoff_base="0.1",
        backoff_max="0.2",
        liveness_slack_seconds="2.5",
        provider_timeout_seconds="2",
        store_timeout_seconds="1",
        download_timeout_seconds="120",
    )
    ctx = get_context()
    liveness = ctx.settings.liveness_seconds("replicate")
    assert liveness <= 3.1
    project_id = str(uuid.uuid4())
    spec = ProjectSpec(
        title="Slow output",
        concept="x",
        provider="replicate",
        requested_scene_count=1,
        scenes=(SceneSpec(prompt="a paid shot", duration_seconds=5),),
    )
    ctx.projects.create(project_id, spec)
    api.run_project(project_id)
    # When the download has run for longer than the liveness (a piece at least every 50 ms)
    pieces = int((liveness + 1) / DRIP_PIECE_SECONDS)
    wait_for(lambda: standin.pieces_sent > pieces, 60, f"{pieces} pieces of the output sent")
    assert downloads(standin) == 1
    # Then the scene's mark outlasts the liveness (it covers the download's deadline)
    mark = ctx.board._key("live", "scene", project_id, 1)
    assert ctx.board.client.pttl(mark) > liveness * 1000, ctx.board.client.pttl(mark)
    # and a reconcile pass run now starts no second poll chain
    report = api.reconcile(project_id)
    assert report.orphaned_polls == 0 and report.resumed_stages == 0, report
    assert standin.pieces_sent < OUTPUT_PIECES  # all the above ran mid-download
    # And the scene completes on the one job, its output fetched once
    view = api.wait_project(project_id, timeout=120)
    assert view.scenes[0].status == SceneStatus.COMPLETED, view.scenes[0].last_error
    assert standin.created["replicate"] == 1 and view.scenes[0].attempts == 1
    assert downloads(standin) == 1
    assert_invariants(project_id)
