"""A run's phases from the workers' own log lines: planning, generation, cutting, assembly.

Each line is stamped by the logging clock (milliseconds) and names project and scene:
"planned project=…" (the scenes planned, a song analysed first), "generate recorded: …
sequence=n" (scene n's original clip stored), "cut recorded: … sequence=n" (its working clip
stored: the scene completed) and "final video project=…" (the final video recorded, the run
over). Measured from the run's start (wall clock, as the log stamps are):
- planning: until the scenes are planned;
- generation phase: until the last original clip is recorded (planning included);
- cut tail: from the last original to the last cut, the part of cutting not hidden behind the
  generation of other scenes (cuts run on `mvpipe.media` while later scenes still generate);
- assembly: from the last cut to the final video recorded (finalize, the join, the upload).
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

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
    """When a message starting with `prefix` was first logged (NaN: never)."""
    return next((stamp for stamp, message in found if message.startswith(prefix)), math.nan)


@dataclass(frozen=True)
class Phases:
    """Seconds from the run's start to the end of each phase, and the cut's latency per scene
    (original recorded to cut recorded: queueing plus work)."""

    #: NaN when the project came with its scenes (nothing to plan)
    planned: float
    generated: float
    cut: float
    final: float
    cut_latency: list[float]
    #: the song analysis' own duration (its log line), NaN without a song
    analysis: float

    @classmethod
    def of(cls, log: Path, project_id: str, scenes: int, started_at: float) -> Phases:
        found = events(log, project_id)
        originals = per_scene(found, "generate recorded:")
        cuts = per_scene(found, "cut recorded:")
        every = set(range(1, scenes + 1))
        assert set(originals) == set(cuts) == every, (sorted(originals), sorted(cuts))
        analysed = [m for _, m in found if m.startswith("analysed song ")]
        took = re.search(r" in ([\d.]+) s$", analysed[0]) if analysed else None
        return cls(
            planned=first(found, "planned ") - started_at,
            generated=max(originals.values()) - started_at,
            cut=max(cuts.values()) - started_at,
            final=first(found, "final video ") - started_at,
            cut_latency=[cuts[s] - originals[s] for s in sorted(every)],
            analysis=float(took.group(1)) if took else math.nan,
        )

    def rows(self, makespan: float, bound: float) -> list[tuple[str, str]]:
        def share(seconds: float) -> str:
            return f"{seconds:.1f} s ({seconds / makespan:.0%})"

        latency = self.cut_latency
        planning = [] if math.isnan(self.planned) else [("planning", share(self.planned))]
        return [
            *planning,
            ("generation phase (-> last original recorded, planning included)",
             share(self.generated)),
            ("generation phase / bound (target <= 1.15)", f"{self.generated / bound:.2f}"),
            ("cut tail (last original -> last cut)", share(self.cut - self.generated)),
            ("assembly (last cut -> final video recorded)", share(self.final - self.cut)),
            ("cut latency per scene, median / max (queue + work)",
             f"{statistics.median(latency):.2f} s / {max(latency):.2f} s"),
        ]  # fmt: skip

    def shares(self, makespan: float) -> str:
        cut, assembly = self.cut - self.generated, self.final - self.cut
        return f"cut tail {cut / makespan:.0%}, assembly {assembly / makespan:.0%}"
