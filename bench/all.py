"""Every benchmark in sequence on one commit; BENCHMARKS.md's summary rewritten from that run.

    python bench/all.py [--skip drill] [--drill-repeat 10] [--only NAME,NAME] [--quick]
                        [--output BENCHMARKS.md]

Each script runs in its own process on its own fresh stack, with the sizes BENCHMARKS.md quotes
(`PLAN` below), one after the other so that no two compete for the cores. Their tables are
collected from their output (they print them; `BENCH_NO_RECORD=1` stops them appending to
BENCHMARKS.md themselves) together with the summary lines they print (`common.summary`). Then
BENCHMARKS.md gets:
- its summary (between the `bench/all.py summary` markers near the top) rewritten: one row per
  figure, with the commit, the dates, the machine and the exact commands of the run;
- one section appended at the bottom with every table of the run, as printed.
A benchmark left out (`--skip`, `--only`) keeps its rows from the previous run, labelled with
that run's commit and date, so the summary never mixes runs silently. The drill takes about an
hour at `--drill-repeat 10` on 2 cores; the rest an estimated 30 to 40 minutes (the makespan
runs cut at `ORCHESTRATION`'s small size, the music video and the rest at 1280x720; every project
is assembled; the time each script took is printed and recorded).

`--quick` runs every script at smoke sizes, only to show that they work: it writes nothing
unless `--output` names a file (a scratch copy of BENCHMARKS.md, say).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from common import ROOT, SUMMARY_TAG, machine

START = "<!-- bench/all.py summary: start -->"
END = "<!-- bench/all.py summary: end -->"
DATA = re.compile(r"<!-- bench/all.py data: (.*?) -->")


@dataclass(frozen=True)
class Bench:
    """One script run: a name for --skip/--only, the script, its full and its smoke arguments
    (None: not run by --quick, another entry already smokes the script)."""

    name: str
    script: str
    full: tuple[str, ...]
    quick: tuple[str, ...] | None


def _makespan(scenes: int, latency: int, baseline: int) -> Bench:
    args = ("--scenes", str(scenes), "--latency", str(latency), "--quota", "20")
    return Bench(
        f"makespan-{scenes}x{latency}s",
        "makespan.py",
        (*args, "--concurrency", "2", "--baseline-scenes", str(baseline), "--size", ORCHESTRATION),
        ("--scenes", "8", "--latency", "1", "--quota", "4", "--baseline-scenes", "2")
        if baseline
        else None,
    )


#: The cut's output size of the makespan runs: small, so that the cut stays in the loop but its
#: encode is cheap and the figure measures the orchestration (at 1280x720 every scene's x264
#: encode competes with generation for the same two processes); the music video
#: (`makespan_song.py`) is measured at 1280x720 beside it. The overhead runs twice: as a user's
#: scenes are (8 s cut to 1280x720, the encode most of the CPU) and at this size with 1 s scenes,
#: which measures our own CPU per scene (issue 15's target 4).
ORCHESTRATION = "160x90"

#: The sizes BENCHMARKS.md quotes. Makespan at N=200, L=5 s with the blocking baseline (the
#: figure quoted since issue 7), and at three corners of issue 15's range (N 20..200, L 2..10 s):
#: small projects, where fixed overhead shows, and many short jobs, where cutting competes with
#: generation for the workers' CPU. N=200 at L=10 s, the easiest corner, is left out for time.
PLAN = (
    _makespan(200, 5, 40),
    _makespan(20, 2, 0),
    _makespan(20, 10, 0),
    _makespan(200, 2, 0),
    Bench("makespan-song", "makespan_song.py", (),
          ("--song-seconds", "20", "--latency", "1", "--quota", "4", "--size", "320x180")),
    Bench("overhead", "overhead.py", ("--scenes", "500"), ("--scenes", "20")),
    Bench("overhead-orchestration", "overhead.py",
          ("--scenes", "500", "--output-size", ORCHESTRATION, "--duration", "1"), None),
    Bench("pools", "pools.py", (), ("--scenes", "10", "--latencies", "0", "1")),
    Bench("scaling", "scaling.py", ("--sizes", "10", "100", "999"), ("--sizes", "5", "10")),
    Bench("media", "media.py", (),
          ("--song-seconds", "20", "--size", "320x180", "--scenes", "6")),
    Bench("fairness", "fairness.py", (),
          ("--quota", "4", "--large", "12", "--small", "1", "--smalls", "3", "--latency", "1")),
    Bench("fairness-jitter", "fairness.py", ("--jitter", "0.5"),
          ("--quota", "4", "--large", "12", "--small", "1", "--smalls", "3", "--latency", "1",
           "--jitter", "0.5")),
    Bench("load", "load.py", (),
          ("--projects", "4", "--scenes", "2", "--latency", "0.5", "--reconcile", "2")),
    Bench("capacity", "capacity.py", (), ("--scenes", "5", "--parked", "40")),
    Bench("drill", "drill.py", ("--scenes", "8", "--seed", "1"),
          ("--repeat", "1", "--scenes", "3", "--kinds", "crash:after_submit,kill-worker")),
)  # fmt: skip


@dataclass
class Outcome:
    bench: Bench
    argv: list[str]
    seconds: float
    code: int
    output: list[str] = field(default_factory=list)
    rows: list[dict[str, object]] = field(default_factory=list)


def run(bench: Bench, args: tuple[str, ...]) -> Outcome:
    """Run one script, echoing its output as it comes; keep its tables and summary rows."""
    argv = [sys.executable, str(ROOT / "bench" / bench.script), *args]
    env = {**os.environ, "BENCH_NO_RECORD": "1"}
    print(f"\n=== {bench.name}: {shown(argv)}", flush=True)
    started = time.monotonic()
    outcome = Outcome(bench, argv, 0.0, 0)
    with subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.startswith(SUMMARY_TAG):
                row = json.loads(line[len(SUMMARY_TAG) :])
                outcome.rows.append({"bench": bench.name, **row})
            else:
                outcome.output.append(line.rstrip("\n"))
    outcome.code = proc.returncode
    outcome.seconds = time.monotonic() - started
    return outcome


def shown(argv: list[str]) -> str:
    """A command as a reader would type it, from the repository's root."""
    return " ".join(["python", str(Path(argv[1]).resolve().relative_to(ROOT)), *argv[2:]])


def commit() -> tuple[str, bool]:
    """(the commit checked out, whether code differs from it: BENCHMARKS.md not counted)."""
    head = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.splitlines()
    return head, any(not line.endswith("BENCHMARKS.md") for line in status)


def verdict(met: object) -> str:
    if met is None:
        return ""  # reported, no target
    return "met" if met else "**missed**"


def summary_block(
    outcomes: list[Outcome], carried: list[dict[str, object]], meta: dict[str, object]
) -> str:
    rows = [
        row | {"commit": meta["commit"], "date": meta["date"]} for o in outcomes for row in o.rows
    ]
    ran = {o.bench.name for o in outcomes}
    carried_names = {str(row["bench"]) for row in carried}
    lines = [
        START,
        "## Summary: one run of one commit",
        "",
        f"`{meta['command']}` on commit `{meta['commit']}`"
        + (" **with uncommitted changes**" if meta["dirty"] else "")
        + f", {meta['date']} to {meta['end']}; {meta['machine']}. Each script ran alone on its own"
        " fresh stack, in this order (the full tables are in the section of this run at the"
        " bottom):",
        "",
        *(
            f"- `{shown(o.argv)}`: {o.seconds:.0f} s"
            + ("" if o.code == 0 else f", **failed (exit code {o.code})**")
            for o in outcomes
        ),
    ]
    missing = [b.name for b in PLAN if b.name not in ran and b.name not in carried_names]
    if missing:
        lines += ["", f"Not run, and in no earlier run of bench/all.py: {', '.join(missing)}."]
    if carried:
        lines += [
            "",
            "Not run this time; their rows are the previous run's, labelled with it: "
            + ", ".join(sorted({str(r["bench"]) for r in carried}))
            + ".",
        ]
    lines += [
        "",
        "| benchmark | measure | value | target | verdict |",
        "|---|---|---|---|---|",
    ]
    for row in [*rows, *carried]:
        name = str(row["bench"])
        if row["commit"] != meta["commit"] or row["date"] != meta["date"]:
            name += f" ({row['commit']}, {row['date']})"
        cells = [name, row["measure"], row["value"], row["target"], verdict(row["met"])]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    lines += ["", f"<!-- bench/all.py data: {json.dumps([*rows, *carried])} -->", END]
    return "\n".join(lines)


def tables_section(outcomes: list[Outcome], meta: dict[str, object]) -> str:
    parts = [f"\n## Run of `{meta['commit']}` by bench/all.py ({meta['date']})\n"]
    for o in outcomes:
        parts.append(f"`{shown(o.argv)}` ({o.seconds:.0f} s, exit code {o.code}):\n")
        tables = [i for i, line in enumerate(o.output) if line.startswith("### ")]
        if tables:  # from its first table on (progress lines before it left out)
            parts.append("\n".join(o.output[tables[0] :]).strip() + "\n")
        else:
            parts.append("```\n" + "\n".join(o.output).strip() + "\n```\n")
    return "\n".join(parts)


def rewrite(path: Path, outcomes: list[Outcome], meta: dict[str, object]) -> None:
    """The summary replaced (or put under the title), the run's tables appended."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    ran = {o.bench.name for o in outcomes}
    previous = DATA.search(text)
    old: list[dict[str, object]] = json.loads(previous.group(1)) if previous else []
    planned = {b.name for b in PLAN}  # a benchmark dropped from the plan is not carried
    carried = [row for row in old if row["bench"] in planned - ran]
    block = summary_block(outcomes, carried, meta)
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        title, _, rest = text.partition("\n")
        text = f"{title}\n\n{block}\n{rest}"
    path.write_text(text.rstrip("\n") + "\n" + tables_section(outcomes, meta), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    names = [b.name for b in PLAN]
    parser.add_argument("--skip", default="", help=f"comma-separated, of: {', '.join(names)}")
    parser.add_argument("--only", default="", help="comma-separated: run just these")
    parser.add_argument("--drill-repeat", type=int, default=10, help="rounds per fault kind")
    parser.add_argument("--quick", action="store_true", help="smoke sizes; writes no figures")
    parser.add_argument("--output", type=Path, help="default: BENCHMARKS.md (not with --quick)")
    args = parser.parse_args()
    skip, only = set(filter(None, args.skip.split(","))), set(filter(None, args.only.split(",")))
    unknown = (skip | only) - set(names)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    output = args.output or (None if args.quick else ROOT / "BENCHMARKS.md")
    head, dirty = commit()
    if dirty:
        print(f"warning: the checkout differs from {head}; the run is labelled so", flush=True)
    started = datetime.now(UTC)
    outcomes = []
    for bench in PLAN:
        if bench.name in skip or (only and bench.name not in only):
            continue
        if args.quick:
            if bench.quick is not None:
                outcomes.append(run(bench, bench.quick))
            continue
        extra = ("--repeat", str(args.drill_repeat)) if bench.name == "drill" else ()
        outcomes.append(run(bench, (*bench.full, *extra)))
    meta: dict[str, object] = {
        "command": shown([sys.executable, *sys.argv]),
        "commit": head + ("+" if dirty else ""),
        "dirty": dirty,
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "end": datetime.now(UTC).strftime("%H:%M UTC"),
        "machine": machine(),
    }
    if output is not None:
        rewrite(output, outcomes, meta)
        print(f"\nwrote the summary and the tables of this run to {output}")
    failed = [o.bench.name for o in outcomes if o.code != 0]
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
