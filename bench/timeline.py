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
    leases, stored = per_scene(found, "lease won"), per_scene(found, "operation stored")
    originals, cuts = per_scene(found, "generate recorded:"), per_scene(found, "cut recorded:")
    start = min(leases.values())
    print(f"project {project}; seconds from its first lease won")
    print(
        f"{'scene':>5} {'lease':>7} {'stored':>7} {'due':>7} {'original':>8} {'late':>6} {'cut':>7}"
    )
    late = []
    for seq in sorted(leases, key=leases.__getitem__):
        due = stored[seq] + args.latency
        late.append(originals[seq] - due)
        print(
            f"{seq:>5} {leases[seq] - start:7.3f} {stored[seq] - start:7.3f} {due - start:7.3f}"
            f" {originals[seq] - start:8.3f} {late[-1]:6.3f} {cuts.get(seq, start) - start:7.3f}"
        )
    median, most = statistics.median(late), max(late)
    print(f"original recorded after due: median {median:.3f} s, max {most:.3f} s")
    print(
        f"last lease {max(leases.values()) - start:.3f} s, last original "
        f"{max(originals.values()) - start:.3f} s, last cut {max(cuts.values()) - start:.3f} s"
    )


def _busiest(log: Path) -> str:
    """The project with the most "lease won" lines."""
    counts: Counter[str] = Counter()
    for line in log.read_text(errors="replace").splitlines():
        if "] lease won project=" in line:
            counts[line.split("project=", 1)[1].split(" ", 1)[0]] += 1
    return counts.most_common(1)[0][0]


if __name__ == "__main__":
    main()
