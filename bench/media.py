"""Media benchmarks: song analysis, cut throughput, final assembly.

    python bench/media.py [--song-seconds 180 --size 1280x720 --fps 24 --scenes 40] [--record]

- Song analysis of a synthesized song: a fresh process's first call (librosa imports and numba
  compiles included) against a warm call, with the process's peak RSS.
- Cut throughput at the output size: seconds of output per second of wall time, one process.
- Assembly of a song-long cut of ~`--scenes` scenes (slots planned on the song's beats): the
  join is a remux, so it must not cost a re-encode.
Prints a markdown table; `--record` also appends it to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

from common import ROOT, record, summary, table

from mvpipe.frame_size import parse_size
from mvpipe.media.assemble import assemble, encode_song
from mvpipe.media.cut import cut_clip
from mvpipe.media.encoding import OutputFormat
from mvpipe.media.slots import plan_slots
from mvpipe.media.synth import synthesize_song
from mvpipe.media.timeline import Timeline


def _child_analysis(seconds: float) -> None:
    """Runs in a fresh interpreter: first call, warm call, peak RSS (JSON on stdout)."""
    from mvpipe.media.analysis import analyse
    from mvpipe.media.audio import decode_mono

    song = synthesize_song(seconds=seconds, bpm=123.0, offset=0.137)
    samples = decode_mono(song.wav, 22050)
    start = time.perf_counter()
    first = analyse(samples, 22050)
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    again = analyse(samples, 22050)
    warm_s = time.perf_counter() - start
    assert again == first
    start = time.perf_counter()
    decode_mono(song.wav, 22050)
    decode_s = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "first": first_s,
                "warm": warm_s,
                "decode": decode_s,
                "peak_mib": peak,
                "beats": len(first.beats),
                "sections": len(first.sections),
                "timeline": first.to_json(),
            }
        )
    )


def _child_warm(seconds: float) -> None:
    """A worker's way: warm() at start-up, then its first real song."""
    from mvpipe.media.analysis import analyse, warm
    from mvpipe.media.audio import decode_mono

    start = time.perf_counter()
    warm()
    warm_up = time.perf_counter() - start
    song = synthesize_song(seconds=seconds, bpm=123.0, offset=0.137)
    samples = decode_mono(song.wav, 22050)
    start = time.perf_counter()
    analyse(samples, 22050)
    after = time.perf_counter() - start
    print(json.dumps({"warm_up": warm_up, "first_after_warm": after}))


def _run_child(*args: str) -> dict[str, float | str | int]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'bench'}"}
    out = subprocess.run(
        [sys.executable, __file__, *args], env=env, check=True, capture_output=True, text=True
    )
    result: dict[str, float | str | int] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _source_clip(path: Path, fmt: OutputFormat, seconds: float) -> Path:
    """A provider-like clip at the output size: moving gradients (not trivially compressible)."""
    import av
    import numpy as np

    with av.open(str(path), mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fmt.fps, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = fmt.width, fmt.height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, fmt.fps)
        yy, xx = np.mgrid[0 : fmt.height, 0 : fmt.width]
        for i in range(round(seconds * fmt.fps)):
            image = np.stack(
                [(xx + i * 8) % 256, (yy + i * 4) % 256, ((xx + yy) // 4 + i * 2) % 256], -1
            ).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def _stereo_song(path: Path, seconds: float) -> Path:
    """The synthesized song as a CD-like 44.1 kHz stereo WAV: what users upload."""
    import wave

    import numpy as np

    from mvpipe.media.audio import decode_mono

    song = synthesize_song(seconds=seconds, bpm=123.0, offset=0.137, sample_rate=44100)
    mono = decode_mono(song.wav, 44100)
    pcm = (np.repeat(mono, 2) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(44100)
        out.writeframes(pcm.tobytes())
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--song-seconds", type=float, default=180.0)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--scenes", type=int, default=40)
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--child", choices=["analysis", "warm"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "analysis":
        return _child_analysis(args.song_seconds)
    if args.child == "warm":
        return _child_warm(args.song_seconds)

    rows: list[tuple[str, ...]] = []
    analysis = _run_child("--child", "analysis", "--song-seconds", str(args.song_seconds))
    warm_up = _run_child("--child", "warm", "--song-seconds", str(args.song_seconds))
    minutes = args.song_seconds / 60
    rows += [
        (
            f"analysis, {minutes:g}-min song, first call in a process",
            f"{analysis['first']:.2f} s",
            "",
        ),
        (f"analysis, {minutes:g}-min song, warm", f"{analysis['warm']:.2f} s", "≤ 10 s"),
        ("analysis peak RSS (process)", f"{analysis['peak_mib']:.0f} MiB", ""),
        ("`warm()` at worker start (fresh process)", f"{warm_up['warm_up']:.2f} s", ""),
        (
            f"analysis, {minutes:g}-min song, first call after `warm()`",
            f"{warm_up['first_after_warm']:.2f} s",
            "≤ 10 s",
        ),
        (f"song decode (PyAV, {minutes:g} min)", f"{analysis['decode']:.2f} s", ""),
    ]

    width, height = parse_size(args.size)
    fmt = OutputFormat(width, height, args.fps)
    with tempfile.TemporaryDirectory(prefix="mvpipe-bench-media-") as tmp:
        work = Path(tmp)
        source = _source_clip(work / "source.mp4", fmt, 8.0)
        speeds = []
        for k in range(3):
            start = time.perf_counter()
            cut_clip(source, work / f"speed{k}.mp4", frames=8 * fmt.fps, fmt=fmt)
            speeds.append(8.0 / (time.perf_counter() - start))
        rows.append(
            (
                f"cut throughput at {fmt.size}@{fmt.fps} (output s per s, median of 3)",
                f"{statistics.median(speeds):.2f}x",
                "≥ 3x",
            )
        )

        song_path = _stereo_song(work / "song.wav", args.song_seconds)
        timeline = Timeline.from_json(str(analysis["timeline"]))
        longest = max(2.5, args.song_seconds / args.scenes * 1.0)
        slots = plan_slots(
            timeline,
            song_seconds=args.song_seconds,
            fps=fmt.fps,
            min_seconds=2,
            max_seconds=longest,
        )
        clips = []
        start = time.perf_counter()
        for slot in slots:
            clip = work / f"cut{slot.index:03d}.mp4"
            cut_clip(source, clip, frames=slot.frames, fmt=fmt)
            clips.append(clip)
        cutting = time.perf_counter() - start
        start = time.perf_counter()
        report = assemble(
            clips, work / "final.mp4", fmt=fmt, song=song_path, song_seconds=args.song_seconds
        )
        assembly = time.perf_counter() - start
        start = time.perf_counter()
        encode_song(song_path, work / "song.m4a", seconds=args.song_seconds)
        song_encode = time.perf_counter() - start
        start = time.perf_counter()
        assemble(
            clips,
            work / "final2.mp4",
            fmt=fmt,
            song=work / "song.m4a",
            song_seconds=args.song_seconds,
        )
        assembly_copy = time.perf_counter() - start
        size_mib = (work / "final.mp4").stat().st_size / 2**20
        what = f"{len(slots)} scenes, {report.video_seconds:.1f} s"
        rows += [
            (f"cutting all {len(slots)} scenes of the video (one process)", f"{cutting:.1f} s", ""),
            (
                f"assembly: {what} + song encoded to AAC (44.1 kHz stereo)",
                f"{assembly:.2f} s",
                "≤ 5 s",
            ),
            ("`encode_song`: the song to AAC once", f"{song_encode:.2f} s", ""),
            (
                f"assembly: {what} + pre-encoded AAC song (copied)",
                f"{assembly_copy:.2f} s",
                "≤ 5 s",
            ),
            ("final video size", f"{size_mib:.1f} MiB", ""),
        ]
    text = table("Media (song analysis, cut, assembly)", rows, ("measure", "value", "target"))
    if args.record:
        record(text)
    else:
        print(text)
    warm = float(warm_up["first_after_warm"])
    summary(f"song analysis, {minutes:g}-min song, first call after warm()", f"{warm:.2f} s",
            "<= 10 s", warm <= 10)  # fmt: skip
    speed = statistics.median(speeds)
    summary(f"cut throughput at {fmt.size}@{fmt.fps}, one process", f"{speed:.2f}x real time",
            ">= 3x", speed >= 3)  # fmt: skip
    summary(
        f"assembly of {what}, song encoded to AAC / pre-encoded",
        f"{assembly:.2f} s / {assembly_copy:.2f} s",
        "<= 5 s",
        max(assembly, assembly_copy) <= 5,
    )


if __name__ == "__main__":
    main()
