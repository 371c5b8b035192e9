"""Makespan of a music video against the quota bound, with the share of cutting and assembly.

    python bench/makespan_song.py [--song-seconds 180 --slot-max 4 --latency 5 --quota 20
                                   --concurrency 2 --size 1280x720 --fps 24]

A synthesized song (drums and bass at a known tempo) goes in; the song decides the N scenes
(slots on its beats, at most `--slot-max` s each). Bound = ceil(N/P) * L, as in makespan.py.

Method. The makespan is the wall time from `run_project` until no run is active (the final video
recorded). The phases come from the workers' own log lines, each stamped by the logging clock
(milliseconds) and naming project and scene: "planned project=…" (the song analysed and the
scenes planned), "generate recorded: … sequence=n" (scene n's original clip stored), "cut
recorded: … sequence=n" (its working clip stored: the scene completed) and "final video
project=…" (the final video recorded, the run over). So, measured from the run's start:
- planning: until the scenes are planned (song analysis included);
- generation phase: until the last original clip is recorded (the figure the bound is about);
- cut tail: from the last original to the last cut, the part of cutting not hidden behind the
  generation of other scenes (cuts run on `mvpipe.media` while later scenes still generate);
- assembly: from the last cut to the final video recorded (finalize, the join, the upload).
Each share is that phase over the makespan. A short song is run first, unmeasured, so that the
workers' first-call costs (analysis warm-up, connections) are not counted. The cut's latency
per scene (original recorded to cut recorded: queueing plus work) is printed too.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import time
from datetime import datetime
from pathlib import Path

from common import bench_stack, record, table, wait_all, workers

from mvpipe import api
from mvpipe.media.synth import synthesize_song

LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): [^\]]*\] (.*)$")


def events(log: Path, project_id: str) -> list[tuple[float, str]]:
    """(epoch seconds, message) of every worker log line that names the project."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        match = LINE.match(line)
        if match and f"project={project_id}" in match.group(2):
            stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            found.append((stamp, match.group(2)))
    return found


def per_scene(found: list[tuple[float, str]], prefix: str) -> dict[int, float]:
    """Scene -> the last time a message starting with `prefix` was logged for it."""
    times: dict[int, float] = {}
    for stamp, message in found:
        seq = re.search(r" sequence=(\d+) ", message)
        if message.startswith(prefix) and seq:
            times[int(seq.group(1))] = stamp
    return times


def first(found: list[tuple[float, str]], prefix: str) -> float:
    return next(stamp for stamp, message in found if message.startswith(prefix))


def analysis_seconds(found: list[tuple[float, str]]) -> float:
    """The song analysis' own duration, from its "analysed song … in S s" line."""
    message = next(m for _, m in found if m.startswith("analysed song "))
    match = re.search(r" in ([\d.]+) s$", message)
    return float(match.group(1)) if match else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--song-seconds", type=float, default=180.0)
    parser.add_argument("--slot-max", type=float, default=4.0)
    parser.add_argument("--latency", type=float, default=5.0)
    parser.add_argument("--quota", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--no-record", action="store_true", help="print only")
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
        warm_up = api.create_project("Warm-up", "bench", song=synthesize_song(seconds=8.0).wav)
        api.run_project(warm_up)
        wait_all([warm_up], timeout=600)
        project_id = api.create_project("Makespan song", "bench", song=song.wav)
        started_at = time.time()
        started = time.monotonic()
        api.run_project(project_id)
        api.wait_project(project_id, timeout=3600, interval=0.1)
        makespan = time.monotonic() - started
        view = api.get_project(project_id)
        worker.stop()
        found = events(worker.log_path, project_id)
    n = view.scene_count
    assert view.completed_scenes == n and view.final_video_s3_key, view.status
    originals = per_scene(found, "generate recorded:")
    cuts = per_scene(found, "cut recorded:")
    assert set(originals) == set(cuts) == set(range(1, n + 1)), (originals, cuts)
    planned = first(found, "planned ") - started_at
    analysis = analysis_seconds(found)
    generated = max(originals.values()) - started_at
    cut = max(cuts.values()) - started_at
    final = first(found, "final video ") - started_at
    cut_latency = [cuts[s] - originals[s] for s in range(1, n + 1)]
    bound = math.ceil(n / quota) * latency

    def share(seconds: float) -> str:
        return f"{seconds:.1f} s ({seconds / makespan:.0%})"

    rows = [
        ("song / scenes (slot max)", f"{args.song_seconds:g} s / {n} ({args.slot_max:g} s)"),
        (
            "latency / quota / workers / output",
            f"{latency:g} s / {quota} / {conc} / {args.size}@{args.fps}",
        ),
        ("quota bound ceil(N/P)*L", f"{bound:.1f} s"),
        ("makespan (run start -> final video recorded)", f"{makespan:.1f} s"),
        ("makespan / bound", f"{makespan / bound:.2f}"),
        ("planning (song analysis + plan)", share(planned)),
        ("  of which song analysis (its own log line)", f"{analysis:.1f} s"),
        ("generation phase (-> last original recorded, planning included)", share(generated)),
        ("generation phase / bound (target <= 1.15)", f"{generated / bound:.2f}"),
        ("cut tail (last original -> last cut)", share(cut - generated)),
        ("assembly (last cut -> final video recorded)", share(final - cut)),
        (
            "cut latency per scene, median / max (queue + work)",
            f"{statistics.median(cut_latency):.2f} s / {max(cut_latency):.2f} s",
        ),
    ]
    text = table("Makespan of a music video: cutting and assembly", rows, ("measure", "value"))
    if args.no_record:
        print(text)
    else:
        record(text)


if __name__ == "__main__":
    main()
