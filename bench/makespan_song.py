"""Makespan of a music video against the quota bound, with the share of cutting and assembly.

    python bench/makespan_song.py [--song-seconds 180 --slot-max 4 --latency 5 --quota 20
                                   --concurrency 2 --size 1280x720 --fps 24 --keep-log PATH
                                   --after-analysis]

A synthesized song (drums and bass at a known tempo) goes in; the song decides the N scenes
(slots on its beats, at most `--slot-max` s each). Bound = ceil(N/P) * L, as in makespan.py.

Method: the makespan is the wall time from `run_project` until no run is active (the final
video recorded); the phases (planning, generation phase, cut tail, assembly) come from the
workers' own log lines, as `phases.py` explains, and each share is that phase over the makespan.
A short song is run first, unmeasured, so that the workers' first-call costs (analysis warm-up,
connections) are not counted.

Creating the project sends its song's analysis to the workers (`mvpipe.prepare_song`). By
default the run starts at once after the create, as a script would: its planning finds no
timeline yet and waits for that analysis (it does not analyse the song a second time: the row
"song analyses" counts them), so its planning still includes the rest of an analysis.
`--after-analysis` starts the run once the timeline is recorded (what a user who asked for the
exact estimate first, or ran the project later, gets): its planning only reads the timeline,
and the analysis row is then the analysis at creation, before the run.
"""

from __future__ import annotations

import argparse
import math
import shutil
import time
from pathlib import Path

from common import bench_stack, record, summary, table, wait_all, workers
from phases import Phases, events

from mvpipe import api
from mvpipe.media.synth import synthesize_song


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--song-seconds", type=float, default=180.0)
    parser.add_argument("--slot-max", type=float, default=4.0)
    parser.add_argument("--latency", type=float, default=5.0)
    parser.add_argument("--quota", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--keep-log", type=Path, help="copy the workers' log here (a timeline)")
    parser.add_argument(
        "--after-analysis",
        action="store_true",
        help="start the run once the song's analysis at creation is recorded (not at once)",
    )
    args = parser.parse_args()
    latency, quota, conc = args.latency, args.quota, args.concurrency
    settings = {
        "local_latency": str(latency),
        "local_max_concurrent": str(quota),
        "provider_concurrency": str(quota),
        "local_clip_seconds": "1",
        "slot_max_seconds": str(args.slot_max),
        "output_size": args.size,
        "output_fps": str(args.fps),
    }
    song = synthesize_song(seconds=args.song_seconds, bpm=123.0, offset=0.137)
    with bench_stack(**settings) as (stack, workdir):
        worker = workers(stack, workdir, conc)
        # Unmeasured: the workers' first song (analysis compiled and warmed, clients connected).
        first = api.create_project("Warm-up", "bench", song=synthesize_song(seconds=8.0).wav)
        api.run_project(first)
        wait_all([first], timeout=600)
        project_id = api.create_project("Makespan song", "bench", song=song.wav)
        if args.after_analysis:
            analysed_by(project_id, time.monotonic() + 600)
        started_at = time.time()
        started = time.monotonic()
        api.run_project(project_id)
        api.wait_project(project_id, timeout=3600, interval=0.1)
        makespan = time.monotonic() - started
        view = api.get_project(project_id)
        worker.stop()
        log = worker.log_path
        n = view.scene_count
        assert view.completed_scenes == n and view.final_video_s3_key, view.status
        phases = Phases.of(log, project_id, n, started_at)
        analyses = sum(m.startswith("analysed song ") for _, m in events(log, project_id))
        if args.keep_log:
            shutil.copyfile(log, args.keep_log)
            print(f"workers' log kept in {args.keep_log}; run started at {started_at:.3f}")
    bound = math.ceil(n / quota) * latency

    rows = [
        ("song / scenes (slot max)", f"{args.song_seconds:g} s / {n} ({args.slot_max:g} s)"),
        (
            "latency / quota / workers / output",
            f"{latency:g} s / {quota} / {conc} / {args.size}@{args.fps}",
        ),
        ("quota bound ceil(N/P)*L", f"{bound:.1f} s"),
        ("makespan (run start -> final video recorded)", f"{makespan:.1f} s"),
        ("makespan / bound", f"{makespan / bound:.2f}"),
        *phases.rows(makespan, bound),
        (
            "song analysis (its own log line; "
            + ("at creation, before the run)" if args.after_analysis else "part of planning)"),
            f"{phases.analysis:.1f} s",
        ),
        ("song analyses (at creation and by the run's planning)", str(analyses)),
    ]
    record(table("Makespan of a music video: cutting and assembly", rows, ("measure", "value")))
    sizes = f"{args.song_seconds:g} s song, N={n}, L={latency:g} s, P={quota}, {args.size}"
    when = ", song analysed at creation" if args.after_analysis else ""
    summary(
        f"music video: generation phase / quota bound ({sizes}{when})",
        f"{phases.generated / bound:.2f}x ({phases.generated:.1f} s vs {bound:.1f} s)",
        "<= 1.15 (issue 15)",
        phases.generated / bound <= 1.15,
    )
    summary(
        "music video: makespan, and the share of cutting and assembly",
        f"{makespan:.1f} s = {makespan / bound:.2f}x bound; {phases.shares(makespan)}",
        "reported (issue 11)",
    )


def analysed_by(project_id: str, deadline: float) -> None:
    """Wait until the project's timeline is recorded (by the analysis its create sent)."""
    while api.get_project(project_id).timeline_s3_key is None:
        if time.monotonic() > deadline:
            raise SystemExit(f"the song of {project_id} was not analysed: no media worker?")
        time.sleep(0.05)


if __name__ == "__main__":
    main()
