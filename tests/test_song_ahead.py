"""A song analysed when its project is created: a worker on `mvpipe.media` records the timeline
ahead of any run (`mvpipe.prepare_song`), so the estimate is exact at once and the first run
plans without analysing (a run started meanwhile waits for it, within a bound). The message is
only a head start: a broker that cannot take it, or an analysis that cannot be done, leaves the
song to the run's planning, as before."""

from __future__ import annotations

import dataclasses
import functools
import re
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from mvpipe import api
from mvpipe.celery_app import app
from mvpipe.cli.costs import ANALYSING, APPROXIMATE
from mvpipe.deps import get_context
from mvpipe.devstack import failpoints
from mvpipe.devstack.localstack import LocalStack, free_port
from mvpipe.errors import InvalidInput
from mvpipe.messaging.dispatch import MEDIA_QUEUE, CeleryDispatcher
from mvpipe.models import ProjectStatus
from mvpipe.pipeline.timeline import analysis_on_its_way, awaits_analysis
from mvpipe.store.runboard import RunBoard, quick_redis
from tests.cli_batch import mvpipe_batch
from tests.conftest import Workers
from tests.helpers import lip_synced_project, song_project_unanalysed, wait_for
from tests.songs import make_song

pytestmark = pytest.mark.integration

StartWorkers = Callable[..., Workers]


@functools.cache
def song() -> bytes:
    """A 6 s song: analysed in a fraction of a second, cut into a few slots."""
    return make_song("wav", 6.0).data


@pytest.fixture
def song_file(start_workers: StartWorkers, tmp_path: Path) -> tuple[Workers, Path]:
    """Workers on every queue, and the song in a file (what `mvpipe create --song` reads)."""
    workers = start_workers()
    path = tmp_path / "song.wav"
    path.write_bytes(song())
    return workers, path


def waited(workers: Workers, project_id: str) -> bool:
    """Whether a run's planning of `project_id` waited for the analysis its create sent."""
    return f"of project {project_id} waits for its song's analysis" in workers.service.log_text()


def analyses(workers: Workers, project_id: str) -> int:
    """How many times `workers` analysed the song of `project_id` (at its creation or a run's)."""
    return workers.service.log_text().count(f"analysed song project={project_id} ")


def outcome(workers: Workers, project_id: str) -> str | None:
    """What the worker's `prepare_song` for `project_id` returned (None until it has)."""
    found = re.search(
        r"Task mvpipe\.prepare_song\[[^\]]+\] succeeded in [^:]+: "
        rf"\{{'project_id': '{project_id}', 'outcome': '([^']+)'\}}",
        workers.service.log_text(),
    )
    return found.group(1) if found else None


@contextmanager
def silent_port() -> Iterator[int]:
    """A port that takes connections and never answers (a hung broker, a dropping firewall)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def test_with_the_broker_unreachable_a_song_project_is_created_and_its_run_analyses_it(
    song_file: tuple[Workers, Path],
) -> None:
    workers, path = song_file
    create = ("create", "--title", "Offline", "--concept", "la la", "--song", str(path))
    # When `mvpipe create` meets a broker nobody listens on, or one that never answers (the
    # store up): each is bounded (a reply awaited without a bound would hang it for good)
    with silent_port() as silent:
        created = [
            mvpipe_batch({**workers.env, "MVPIPE_BROKER_URL": url}, create, timeout=60)[0]
            for url in (
                f"redis://127.0.0.1:{free_port()}/0",
                f"redis://127.0.0.1:{silent}/0",
            )
        ]
    # Then each project is created (its song is valid), a warning saying its run will analyse
    project_ids = []
    for done in created:
        assert done.returncode == 0, done.stderr
        assert "its song's analysis could not be asked for" in done.stderr, done.stderr
        assert "its first run will analyse it" in done.stderr
        project_ids.append(done.stdout.strip())
        assert api.get_project(project_ids[-1]).timeline_s3_key is None
    # And no analysis is on its way: the estimate is "about" saying a run analyses the song,
    # and `--wait` has nothing to wait for
    for estimated in mvpipe_batch(
        workers.env, *(("estimate", p, "--wait", "--timeout", "30") for p in project_ids)
    ):
        assert estimated.returncode == 0, estimated.stderr  # not timed out (exit 5)
        assert estimated.stdout.startswith("about $"), estimated.stdout
        assert APPROXIMATE in estimated.stderr and ANALYSING not in estimated.stderr
    # And its run (the broker back) analyses the song as its planning's first step
    api.run_project(project_ids[0])
    view = api.wait_project(project_ids[0], timeout=120)
    assert view.status == ProjectStatus.COMPLETED, view.last_error
    assert view.timeline_s3_key is not None
    assert "Task mvpipe.analyse_song[" in workers.service.log_text()
    assert analyses(workers, project_ids[0]) == 1
    assert outcome(workers, project_ids[0]) is None  # no analysis was asked at its creation


def test_a_redis_that_never_answers_holds_neither_create_nor_estimate(
    song_file: tuple[Workers, Path],
) -> None:
    # Given mvpipe's Redis (its marks) answering nothing, the broker and the store up
    workers, path = song_file
    with silent_port() as silent:
        env = {**workers.env, "MVPIPE_REDIS_URL": f"redis://127.0.0.1:{silent}/0"}
        (created,) = mvpipe_batch(
            env, ("create", "--title", "Hung", "--concept", "la", "--song", str(path)), timeout=30
        )
        assert created.returncode == 0, created.stderr
        # When the estimate reads whether an analysis is on its way: within the batch's bound
        # (the run's own client retries ~10 x 10 s), "about", never an error
        (estimated,) = mvpipe_batch(env, ("estimate", created.stdout.strip()), timeout=30)
    assert estimated.returncode == 0, estimated.stderr
    assert estimated.stdout.startswith(("about $", "$")), estimated.stdout
    # And a run's planning, unable to read the mark, takes no analysis for on its way
    unanswered = RunBoard(quick_redis(f"redis://127.0.0.1:{free_port()}/0"))
    blind = dataclasses.replace(get_context(), quick_board=unanswered)
    assert not analysis_on_its_way(blind, created.stdout.strip())


def test_the_estimate_says_the_song_is_being_analysed_and_waits_for_it(
    start_workers: StartWorkers, redis_client: redis.Redis
) -> None:
    # Given workers on every queue but `mvpipe.media`: the analysis waits in its queue
    main = start_workers(queues="mvpipe.plan,mvpipe.video")
    redis_client.delete(MEDIA_QUEUE)  # what earlier tests left there is not this test's
    project_id = api.create_project("Waiting", "la la", song=song())
    assert redis_client.llen(MEDIA_QUEUE) == 1
    # Bad input writes nothing and sends nothing
    with pytest.raises(InvalidInput, match="too short"):
        api.create_project("Short", "la", song=make_song("wav", 3.0).data)
    assert redis_client.llen(MEDIA_QUEUE) == 1
    # When the estimate is asked before the analysis: about, saying why and what to do
    said, waited = mvpipe_batch(
        main.env,
        ("estimate", project_id),
        ("estimate", project_id, "--wait", "--timeout", "0.5"),
    )
    assert said.returncode == 0 and said.stdout.startswith("about $"), said.stdout
    assert ANALYSING in said.stderr, said.stderr
    assert waited.returncode == 5, waited.stderr
    assert "not analysed within 0.5 s" in waited.stderr and "mvpipe.media" in waited.stderr
    # And once a media worker runs, `--wait` prints the exact estimate when the analysis is in
    start_workers(concurrency=1, queues=MEDIA_QUEUE)
    (exact,) = mvpipe_batch(main.env, ("estimate", project_id, "--wait"))
    assert exact.returncode == 0 and exact.stdout.startswith("$"), exact.stdout
    assert exact.stderr == "", exact.stderr
    assert api.get_project(project_id).timeline_s3_key is not None


def test_an_intake_analysis_with_nothing_to_do_or_that_fails_records_nothing_once(
    start_workers: StartWorkers, redis_client: redis.Redis
) -> None:
    # Given, queued before any media worker runs: an analysis that crashes (the first analysis
    # of this worker raises an error nobody expected), a damaged song, a project planned
    # already, one whose run started without waiting for it (its analysis unmarked: a run's
    # planning waits only for a marked one), and one that does not exist
    main = start_workers(queues="mvpipe.plan,mvpipe.video")
    redis_client.delete(MEDIA_QUEUE)  # what earlier tests left there is not this test's
    ctx = get_context()
    crashing = api.create_project("Crashing", "la la", song=song())
    damaged = api.create_project("Damaged", "la la", song=song())
    key = ctx.projects.get(damaged).song_key or ""
    ctx.songs.objects.put(key, song()[:-1000], content_type="audio/wav")
    planned = lip_synced_project(ctx, song(), [0.0, 3.0, 6.0], set())
    running = song_project_unanalysed(ctx, "Running", song())
    run_id = str(uuid.uuid4())
    assert ctx.projects.win_run(running, run_id, ProjectStatus.GENERATING_SCENES) == run_id
    missing = str(uuid.uuid4())
    for unmarked in (planned, running, missing):  # written without one: a create's, as sent
        CeleryDispatcher(app).prepare_song(unmarked)
    assert all(api.estimate_micros(p).awaiting_analysis for p in (crashing, damaged))
    # When a media worker takes them in order
    media = start_workers(concurrency=1, queues=MEDIA_QUEUE, failpoints="before_analysis=raise:1")
    wait_for(lambda: outcome(media, missing), 120, "the last intake analysis to end")
    # Then each ended once, without a retry, and recorded no timeline
    assert {p: outcome(media, p) for p in (crashing, damaged, planned, running, missing)} == {
        crashing: "not analysed",
        damaged: "not analysed",
        planned: "nothing to analyse",
        running: "left to its run",
        missing: "no such project",
    }
    log = media.service.log_text()
    assert not re.search(r"prepare_song\[[^\]]+\] retry", log)
    assert log.count(f"unexpected error in prepare_song {crashing}: FailpointError") == 1
    assert f"song analysis of project {damaged}: InvalidInput: the stored song does not" in log
    assert "Traceback" not in log and "analysed song project=" not in log
    assert all(
        ctx.projects.get(p).timeline_key is None for p in (crashing, damaged, planned, running)
    )
    # and none is awaited any longer: the estimate says a run analyses the song
    assert not any(api.estimate_micros(p).awaiting_analysis for p in (crashing, damaged, running))
    api.cancel_project(running)
    # And the damaged song's run fails its planning saying why, as without the intake analysis
    api.run_project(damaged)
    view = api.wait_project(damaged, timeout=120)
    assert view.status == ProjectStatus.FAILED and "does not match" in (view.last_error or "")
    assert main.service.proc.poll() is None


def test_an_intake_analysis_whose_process_is_lost_is_not_delivered_again(
    start_workers: StartWorkers, redis_client: redis.Redis
) -> None:
    # Given two song projects whose analyses wait for a media worker, the first analysis to
    # begin killing its process (as running out of memory would)
    main = start_workers(queues="mvpipe.plan,mvpipe.video")
    redis_client.delete(MEDIA_QUEUE)  # what earlier tests left there is not this test's
    lost = api.create_project("Lost", "la la", song=song())
    after = api.create_project("After", "la la", song=song())
    assert api.estimate_micros(lost).awaiting_analysis  # its mark set by the create
    # When a media worker takes them, one at a time
    media = start_workers(concurrency=1, queues=MEDIA_QUEUE, failpoints="before_analysis")
    wait_for(lambda: outcome(media, after) == "analysed", 120, "the second analysis")
    wait_for(
        lambda: redis_client.llen(MEDIA_QUEUE) == 0 and redis_client.hlen("unacked") == 0,
        60,
        "every message taken and acknowledged",
    )
    # Then the lost one was not delivered again (a song that kills its worker would loop):
    # its run's planning analyses it, its attempts counted
    assert "WorkerLostError" in media.service.log_text()
    assert outcome(media, lost) is None
    assert get_context().projects.get(lost).timeline_key is None
    # and its estimate waits for no analysis (the worker's own process ended it)
    wait_for(lambda: not api.estimate_micros(lost).awaiting_analysis, 60, "the lost analysis ended")
    assert get_context().projects.get(after).timeline_key is not None
    assert main.service.proc.poll() is None


def test_a_run_started_during_its_intake_analysis_waits_for_it_and_analyses_once(
    start_workers: StartWorkers,
) -> None:
    # Given a song project whose analysis at creation is under way (held there)
    workers = start_workers(failpoints="before_analysis=hold")
    state_dir = Path(workers.env["MVPIPE_STATE_DIR"])
    project_id = api.create_project("At once", "la la", song=song())
    wait_for(lambda: failpoints.held(state_dir, "before_analysis"), 120, "the intake analysis")
    # When its run starts at once, as `mvpipe create ... && mvpipe run` does
    api.run_project(project_id)
    # Then its planning waits for that analysis, holding no process (the worker's other one
    # is free), rather than analyse the song a second time beside it
    wait_for(
        lambda: waited(workers, project_id) or api.get_project(project_id).timeline_s3_key,
        120,
        "the run's planning to wait, or to analyse the song itself",
    )
    assert api.get_project(project_id).timeline_s3_key is None
    failpoints.release(state_dir, "before_analysis")
    # and plans on its timeline once it is recorded: the song analysed once, the run completed
    view = api.wait_project(project_id, timeout=120)
    assert view.status == ProjectStatus.COMPLETED, view.last_error
    assert outcome(workers, project_id) == "analysed"
    assert analyses(workers, project_id) == 1
    assert "Task mvpipe.analyse_song[" not in workers.service.log_text()


def test_a_run_started_before_its_intake_analysis_begins_waits_and_a_cancel_stops_it(
    start_workers: StartWorkers,
) -> None:
    # Given song projects whose analyses at creation wait for a media worker
    main = start_workers(queues="mvpipe.plan,mvpipe.video")
    waiting, cancelled = (api.create_project(t, "la la", song=song()) for t in ("Run", "Stop"))
    # When both are run at once, and one cancelled while its planning waits
    runs = {p: api.run_project(p) for p in (waiting, cancelled)}
    wait_for(lambda: waited(main, waiting) and waited(main, cancelled), 60, "both runs to wait")
    api.cancel_project(cancelled)
    # Then the cancelled run's planning stops at its next look
    stopped = {"project_id": cancelled, "outcome": "run no longer active"}
    assert runs[cancelled].get(timeout=60) == stopped
    # And once a media worker runs, the analyses at creation are done, the waiting run's
    # included (its planning waits for it), and that run plans on its timeline and completes
    media = start_workers(concurrency=1, queues=MEDIA_QUEUE)
    view = api.wait_project(waiting, timeout=120)
    assert view.status == ProjectStatus.COMPLETED, view.last_error
    assert outcome(media, waiting) == "analysed" and analyses(media, waiting) == 1
    assert "Task mvpipe.analyse_song[" not in media.service.log_text()
    assert api.get_project(cancelled).status == ProjectStatus.PENDING


def test_a_run_whose_intake_analysis_never_comes_analyses_the_song_after_the_bound(
    start_workers: StartWorkers,
) -> None:
    # Given a song project marked as analysed on its way whose analysis never comes (a lost
    # message), and one whose analysis ended without a timeline
    workers = start_workers(analysis_wait_seconds="2")
    ctx = get_context()
    lost, ended = (song_project_unanalysed(ctx, t, song()) for t in ("Lost", "Ended"))
    for project_id in (lost, ended):
        ctx.quick_board.analysis_sent(project_id)
    ctx.quick_board.analysis_ended(ended)
    # When both are run
    for project_id in (lost, ended):
        api.run_project(project_id)
    # Then each run analyses the song itself and completes: the lost one's once its wait
    # (`MVPIPE_ANALYSIS_WAIT_SECONDS`) is over, the ended one's at once
    for project_id in (lost, ended):
        view = api.wait_project(project_id, timeout=120)
        assert view.status == ProjectStatus.COMPLETED, view.last_error
        assert analyses(workers, project_id) == 1
    assert waited(workers, lost) and not waited(workers, ended)


def test_an_analysis_is_waited_for_only_while_marked_and_within_the_bound() -> None:
    assert awaits_analysis(0.0, 360.0) and awaits_analysis(359.9, 360.0)
    assert not awaits_analysis(360.0, 360.0)  # a message lost unmarked holds a run no longer
    assert not awaits_analysis(None, 360.0)  # never sent, ended, lapsed, or Redis cannot say
    assert not awaits_analysis(0.0, 0.0)  # MVPIPE_ANALYSIS_WAIT_SECONDS=0: never waited for


def test_song_analysis_is_routed_to_the_media_queue_whoever_sends_it(stack: LocalStack) -> None:
    """By name alone (a send without a queue, a retry, a replaced task): never `mvpipe.plan`.
    After the stack: reading a route binds the app's configuration (its broker) for the rest
    of this test process, and before the stack that is the default Redis, which is not there."""
    for name in ("mvpipe.prepare_song", "mvpipe.analyse_song", "mvpipe.assemble_project"):
        route = app.amqp.router.route({}, name)
        assert (route["queue"].name, route["routing_key"]) == (MEDIA_QUEUE, MEDIA_QUEUE), name
