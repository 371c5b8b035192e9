"""Per-scene timeline of one run from a kept workers' log (`makespan.py --keep-log PATH`,
`makespan_song.py --keep-log PATH`): when each scene's lease was won, its job stored and due,
its original recorded and its cut recorded, and how late the completion came after the job was
due (the quota slot sits idle meanwhile: the poll waits for a worker process, or does its work).

    python bench/timeline.py LOG --latency L [--project ID]

Times are seconds from the first lease won of the project (by default the one with the most
leases in the log); "due" is the job stored + L (the local provider's latency, no jitter).
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter
from pathlib import Path

from phases import events, per_scene


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("log", type=Path)
    parser.add_argument("--latency", type=float, required=True)
    parser.add_argument("--project", help="default: the project with the most leases won")
    args = parser.parse_args()
    project = args.project or _busiest(args.log)
    found = events(args.log, project)
    paid = [(t, m) for t, m in found if " stage=generate " in m]  # not a lip-sync's lease
    leases, stored = per_scene(paid, "lease won"), per_scene(paid, "operation stored")
    originals, cuts = per_scene(found, "generate recorded:"), per_scene(found, "cut recorded:")
    # A scene failed, adopted or unfinished has no full row: left out, and counted
    whole = sorted((s for s in leases if s in stored and s in originals), key=leases.__getitem__)
    if not whole:
        raise SystemExit(f"{args.log}: no scene of project {project} with a whole timeline")
    start = min(leases.values())
    print(f"project {project}; seconds from its first lease won")
    print(
        f"{'scene':>5} {'lease':>7} {'stored':>7} {'due':>7} {'original':>8} {'late':>6} {'cut':>7}"
    )
    late = []
    for seq in whole:
        due = stored[seq] + args.latency
        late.append(originals[seq] - due)
        print(
            f"{seq:>5} {leases[seq] - start:7.3f} {stored[seq] - start:7.3f} {due - start:7.3f}"
            f" {originals[seq] - start:8.3f} {late[-1]:6.3f}"
            + (f" {cuts[seq] - start:7.3f}" if seq in cuts else f" {'-':>7}")
        )
    if len(whole) < len(leases):
        missing = len(leases) - len(whole)
        print(f"left out: {missing} scene(s) leased without a job stored or an original")
    median, most = statistics.median(late), max(late)
    print(f"original recorded after due: median {median:.3f} s, max {most:.3f} s")
    print(
        f"last lease {max(leases.values()) - start:.3f} s, last original "
        f"{max(originals.values()) - start:.3f} s, last cut "
        + (f"{max(cuts.values()) - start:.3f} s" if cuts else "-")
    )


def _busiest(log: Path) -> str:
    """The project with the most "lease won" lines."""
    counts: Counter[str] = Counter()
    for line in log.read_text(errors="replace").splitlines():
        if "] lease won project=" in line:
            counts[line.split("project=", 1)[1].split(" ", 1)[0]] += 1
    if not counts:
        raise SystemExit(f"{log}: no lease won in this log")
    return counts.most_common(1)[0][0]


if __name__ == "__main__":
    main()
