"""The local provider on its own: a remote-like job API in a SQLite file (no servers needed)."""

from __future__ import annotations

import io
import itertools
import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest

from mvpipe.errors import (
    InvalidInput,
    PermanentProviderError,
    QuotaExceeded,
    TransientProviderError,
)
from mvpipe.media.probe import probe_video
from mvpipe.providers.base import Brief, JobState, VideoRequest
from mvpipe.providers.local import (
    LocalJobs,
    LocalPlanner,
    LocalVideoProvider,
    job_latency,
    latency_draw,
)
from mvpipe.providers.local_renders import Renders
from mvpipe.providers.render import render_clip
from mvpipe.settings import Settings
from tests.helpers import wait_for
from tests.processes import Processes


def provider(tmp_path: Path, **overrides: object) -> LocalVideoProvider:
    values: dict[str, object] = {
        "local_state": tmp_path / "jobs.sqlite3",
        "local_ledger": tmp_path / "ledger.jsonl",
        "local_latency": 0.2,
        **overrides,
    }
    settings = Settings(**values)  # type: ignore[arg-type]
    return LocalVideoProvider(settings)


def request(sequence: int = 1) -> VideoRequest:
    return VideoRequest("p", sequence, "a neon city", None, 8)


def test_a_job_runs_then_yields_a_playable_mp4_and_one_ledger_line(tmp_path: Path) -> None:
    local = provider(tmp_path)
    operation_id = local.submit(request())
    running = local.poll(operation_id)
    assert running.state == JobState.RUNNING
    assert running.eta_seconds is not None and 0 < running.eta_seconds <= 0.2  # the latency
    status = wait_for(
        lambda: (s := local.poll(operation_id)).finished and s, 10, "the job to finish"
    )
    assert status.state == JobState.SUCCEEDED
    facts = probe_video(local.download(status))
    # as long as the 8 s asked for, as a real provider's clip (a scene's picture moves to its end)
    assert facts.video_codec == "h264" and facts.video_seconds == pytest.approx(8.0)
    lines = (tmp_path / "ledger.jsonl").read_text().splitlines()
    assert [json.loads(x)["operation_id"] for x in lines] == [operation_id]


def test_a_clip_cap_keeps_the_render_short(tmp_path: Path) -> None:
    # Tests and benchmarks cap the render; the cut holds its last frame to the slot.
    local = provider(tmp_path, local_clip_seconds=2, local_latency=0)
    operation_id = local.submit(request())
    status = wait_for(
        lambda: (s := local.poll(operation_id)).finished and s, 10, "the job to finish"
    )
    assert probe_video(local.download(status)).video_seconds == pytest.approx(2.0)


def test_a_jobs_latency_is_spread_by_the_jitter_either_way() -> None:
    assert [job_latency(2.0, 0.5, draw) for draw in (-1, 0, 1)] == [1.0, 2.0, 3.0]
    assert job_latency(2.0, 0.0, 1) == 2.0
    for jitter, draw in ((1.5, 0), (-0.1, 0), (0.5, 1.5)):
        with pytest.raises(InvalidInput):
            job_latency(2.0, jitter, draw)


def test_a_jobs_latency_draw_is_a_pure_function_of_the_seed_and_the_job() -> None:
    jobs = [(f"Small {p} {i}", i + 1, 1) for p in range(10) for i in range(10)]
    draws = [latency_draw(7, *job) for job in jobs]
    # the same seed and jobs: the same draws, in any order the jobs are submitted in
    assert [latency_draw(7, *job) for job in reversed(jobs)] == draws[::-1]
    # different jobs (another prompt, scene or submission of it) get different latencies
    assert len(set(draws)) == len(jobs)
    assert latency_draw(7, "Small 0 0", 1, 2) != latency_draw(7, "Small 0 0", 1, 1)
    # spread over the whole range either way, not bunched
    assert all(-1 <= d <= 1 for d in draws)
    assert min(draws) < -0.8 and max(draws) > 0.8
    assert 40 < sum(d < 0 for d in draws) < 60
    # another seed: another draw for every job
    assert all(latency_draw(8, *job) != d for job, d in zip(jobs, draws, strict=True))


def test_a_seeded_jitter_gives_the_same_jobs_the_same_latencies_again(tmp_path: Path) -> None:
    def latencies(path: Path, seed: int) -> list[float]:
        local = provider(
            path, local_latency=10.0, local_latency_jitter=0.5, local_latency_seed=seed,
            local_max_concurrent=20,
        )  # fmt: skip
        jobs = [local.submit(request(sequence)) for sequence in range(1, 9)]
        with local.jobs.transaction() as db:
            rows = db.execute("SELECT finishes_at - submitted_at FROM jobs ORDER BY sequence")
            found = [row[0] for row in rows]
        stop(local, jobs)
        return found

    first = latencies(tmp_path / "first", 3)
    assert all(5 <= x <= 15 for x in first) and len(set(first)) == len(first)
    # another provider on another job store, the same seed: the same latencies
    assert latencies(tmp_path / "again", 3) == pytest.approx(first, abs=1e-6)
    assert latencies(tmp_path / "other", 4) != pytest.approx(first, abs=1e-6)


def stop(local: LocalVideoProvider, jobs: list[str]) -> None:
    """Cancel a test's jobs before it ends, so their render timers find them unwanted and
    render nothing in the rest of the run."""
    assert all(local.cancel(job) for job in jobs)


def test_jobs_submitted_together_finish_apart_with_a_jitter(tmp_path: Path) -> None:
    local = provider(
        tmp_path, local_latency=10.0, local_latency_jitter=0.5, local_max_concurrent=20
    )
    etas, jobs = [], []
    for sequence in range(1, 13):
        jobs.append(local.submit(request(sequence)))
        status = local.poll(jobs[-1])
        assert status.state == JobState.RUNNING and status.eta_seconds is not None
        etas.append(status.eta_seconds)
    stop(local, jobs)
    assert all(4.5 < eta <= 15 for eta in etas)  # 10 s +- 5 s, less the time since submission
    assert max(etas) - min(etas) > 1  # twelve draws all within a second: ~1e-9
    steady = provider(tmp_path / "steady", local_latency=10.0)
    job = steady.submit(request())
    status = steady.poll(job)
    stop(steady, [job])
    assert status.eta_seconds is not None and 9 < status.eta_seconds <= 10


def test_jobs_survive_a_new_provider_instance(tmp_path: Path) -> None:
    operation_id = provider(tmp_path).submit(request())
    other = provider(tmp_path)  # another worker process, after a crash
    assert other.poll(operation_id).state in (JobState.RUNNING, JobState.SUCCEEDED)


def test_concurrency_limit_answers_429(tmp_path: Path) -> None:
    local = provider(tmp_path, local_max_concurrent=2, local_latency=30)
    jobs = [local.submit(request(1)), local.submit(request(2))]
    with pytest.raises(QuotaExceeded):
        local.submit(request(3))
    assert local.peak_in_flight() == 2
    stop(local, jobs)


def test_transient_faults_advance_with_each_call(tmp_path: Path) -> None:
    local = provider(tmp_path, local_faults="transient=0.5,seed=1")
    outcomes = []
    for _ in range(40):
        try:
            local.submit(request())
            outcomes.append("ok")
        except TransientProviderError as exc:
            # a refusal that surely made no job, as a remote provider's 429: no ledger line,
            # and the reservation goes back (a 5xx would keep it)
            assert isinstance(exc, QuotaExceeded) and exc.refused, exc
            outcomes.append("fault")
    assert 5 < outcomes.count("fault") < 35  # a retry is a new call with a new roll
    assert len(ledger_lines(tmp_path)) == outcomes.count("ok")


def test_a_length_the_local_provider_does_not_make_is_refused_before_any_job(
    tmp_path: Path,
) -> None:
    # the one rule every provider follows: asked for exactly the stored length, or refused
    local = provider(tmp_path, local_latency=0)
    unmade = r"local: a 31 s clip is not one it makes"
    with pytest.raises(PermanentProviderError, match=unmade) as e:
        local.submit(replace(request(), duration_seconds=31))
    assert e.value.refused
    assert ledger_lines(tmp_path) == []
    local.submit(replace(request(), duration_seconds=30))
    assert len(ledger_lines(tmp_path)) == 1


def ledger_lines(tmp_path: Path) -> list[str]:
    path = tmp_path / "ledger.jsonl"
    return path.read_text().splitlines() if path.exists() else []


def test_permanent_faults_end_accepted_jobs_failed(tmp_path: Path) -> None:
    local = provider(tmp_path, local_faults="permanent=1.0", local_latency=0)
    status = local.poll(local.submit(request()))
    assert status.state == JobState.FAILED and status.error


def test_cancel_and_unknown_operations(tmp_path: Path) -> None:
    local = provider(tmp_path, local_latency=30)
    operation_id = local.submit(request())
    assert local.cancel(operation_id)
    assert local.poll(operation_id).state == JobState.CANCELLED
    with pytest.raises(PermanentProviderError):
        local.poll("local-unknown")


def test_local_planner_is_deterministic() -> None:
    brief = Brief("p", "Title", "One.\nTwo.\nThree.", 5)
    first = LocalPlanner().plan(brief)
    assert first == LocalPlanner().plan(brief) and len(first) == 5
    assert "One" in first[0].prompt and "One" in first[3].prompt


def test_cancel_confirms_only_a_job_it_stopped_before_the_video(tmp_path: Path) -> None:
    local = provider(tmp_path, local_latency=0.3)
    running = local.submit(request(1))
    assert local.cancel(running) is True
    assert local.poll(running).state == JobState.CANCELLED
    finished = local.submit(request(2))
    wait_for(lambda: local.poll(finished).finished, 10, "the job to finish")
    assert local.cancel(finished) is False  # too late: the video exists and was paid for
    assert local.poll(finished).state == JobState.SUCCEEDED
    assert local.cancel("local-unknown") is False


def _frames(data: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(data)) as container:
        return [f.to_ndarray(format="rgb24").astype(np.int16) for f in container.decode(video=0)]


def test_a_rendered_clip_drifts_smoothly_and_each_scene_has_its_own_look() -> None:
    """Eight seconds cover a whole swing of the background and back: no frame jumps (the old
    shade wrapped around mid-clip), while another scene's first frame is plainly different."""
    frames = _frames(render_clip("Neon Rain - scene 1 of 8: city lights", 8.0))
    steps = [float(np.abs(b - a).mean()) for a, b in itertools.pairwise(frames)]
    other = _frames(render_clip("Neon Rain - scene 2 of 8: rain on glass", 1.0))[0]
    cut = float(np.abs(other - frames[-1]).mean())
    assert len(frames) == 8 * 12
    assert max(steps) < 2.0, max(steps)
    assert float(np.abs(frames[48] - frames[0]).mean()) > 10  # it does move
    assert cut > 10 * max(steps), (cut, max(steps))


def test_the_job_store_keeps_one_connection_per_thread_and_process(
    tmp_path: Path, processes: Processes
) -> None:
    """Transactions reuse their thread's connection (opening one per call cost ~0.8 ms of CPU);
    a failed one is rolled back and leaves it usable; another thread and a forked child each
    open their own, and every process sees the others' commits."""
    jobs = LocalJobs(tmp_path / "jobs.sqlite3")
    with jobs.transaction() as first:
        LocalJobs.next_call(first, "p", 1, "submit")
    with pytest.raises(RuntimeError), jobs.transaction() as db:
        LocalJobs.next_call(db, "p", 1, "submit")
        raise RuntimeError("the caller failed mid-transaction")
    with jobs.transaction() as again:
        assert again is first
        assert LocalJobs.next_call(again, "p", 1, "submit") == 2  # the failed call rolled back

    def in_thread() -> None:
        with jobs.transaction() as db:
            assert db is not first
            LocalJobs.next_call(db, "p", 1, "submit")

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()

    def in_child() -> bool:
        with jobs.transaction() as db:
            return db is not first and LocalJobs.next_call(db, "p", 1, "submit") == 4

    assert processes.fork(in_child)(60) == 0
    with jobs.transaction() as db:
        assert db is first
        assert LocalJobs.next_call(db, "p", 1, "submit") == 5


def test_a_job_is_rendered_while_it_runs_and_its_poll_hands_that_clip_over(
    tmp_path: Path,
) -> None:
    # As a remote provider makes its clip on its side while the job runs, the local one
    # renders halfway through the job, not in the poll that finds it done (a worker's
    # completion step). The poll hands over the stored clip and removes it.
    local = provider(tmp_path, local_latency=1.0)
    operation_id = local.submit(request())
    stored = local.renders.path(operation_id)
    wait_for(stored.exists, 30, "the clip rendered while the job runs")
    assert probe_video(stored.read_bytes()).video_codec == "h264"
    stored.write_bytes(b"made while the job ran")  # what the poll answers with, if it takes it
    status = wait_for(
        lambda: (s := local.poll(operation_id)).finished and s, 30, "the job to finish"
    )
    assert local.download(status) == b"made while the job ran"
    assert not stored.exists()


def test_short_cancelled_and_failed_jobs_leave_no_render_behind(tmp_path: Path) -> None:
    short = provider(tmp_path / "short")  # 0.2 s: rendered by the poll that finds it done
    operation_id = short.submit(request())
    status = wait_for(
        lambda: (s := short.poll(operation_id)).finished and s, 10, "the short job to finish"
    )
    assert probe_video(short.download(status)).video_codec == "h264"
    assert not short.renders.directory.exists()

    local = provider(tmp_path / "long", local_latency=1.0, local_faults="permanent=1,seed=1")
    failed = local.submit(request(1))
    assert not local.jobs.wanted("jobs", failed)
    other = provider(tmp_path / "long", local_latency=1.0)
    cancelled = other.submit(request(2))
    assert other.cancel(cancelled)
    assert not other.jobs.wanted("jobs", cancelled)
    wait_for(
        lambda: other.poll(cancelled).finished and local.poll(failed).finished,
        30,
        "both jobs past their end",
    )
    # A render the cancel raced with is removed by its own timer once stored: none is left
    wait_for(lambda: not other.renders.path(cancelled).exists(), 30, "no clip of the cancelled")
    assert not local.renders.path(failed).exists()


def test_a_job_cancelled_after_its_render_leaves_no_clip_behind(tmp_path: Path) -> None:
    # A job of an hour (its timer renders at 30 min): the clip it renders halfway is stored
    # here, so the cancel surely comes after the render and before the job's end, however slow
    # the machine
    local = provider(tmp_path, local_latency=3600.0)
    operation_id = local.submit(request())
    assert local.jobs.wanted("jobs", operation_id)
    local.renders.store(operation_id, render_clip("a neon city", 1.0))
    stored = local.renders.path(operation_id)
    assert stored.exists()
    assert local.cancel(operation_id)
    assert not stored.exists()


def test_a_render_stored_after_its_job_ended_is_removed(tmp_path: Path) -> None:
    # A render slower than the second half of its job: the poll found the job done first and
    # rendered the clip itself, so the late file would be nobody's.
    renders = Renders(tmp_path / "renders")
    job_ended = threading.Event()
    asked: list[bool] = []

    def slow_render() -> bytes:
        assert job_ended.wait(30)
        return b"rendered too late"

    def wanted() -> bool:
        asked.append(True)
        return True

    assert renders.schedule("local-late", 0.6, slow_render, wanted)
    due = time.time() + 0.6
    wait_for(lambda: time.time() >= due and asked, 30, "the job's end, its render under way")
    job_ended.set()
    wait_for(lambda: len(asked) == 2, 30, "the render stored and its job asked about again")
    wait_for(lambda: not renders.path("local-late").exists(), 30, "the late render removed")
    assert renders.take("local-late", lambda: b"rendered by the poll") == b"rendered by the poll"
