"""The timeline of a song: what analysis found and what planning cuts slots from.

Plain data with its own JSON form, apart from the analysis, so planning and slotting read a stored
timeline without loading librosa.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from mvpipe.errors import InvalidInput


@dataclass(frozen=True)
class Section:
    """A stretch of the song that sounds alike; sections with the same `label` sound alike too."""

    start: float
    label: str


@dataclass(frozen=True)
class Timeline:
    """What planning needs of a song, in seconds from its start."""

    tempo: float
    beats: list[float]
    bars: list[float]
    sections: list[Section]
    duration: float
    beats_per_bar: int = 4
    version: int = field(default=1)

    def to_json(self) -> str:
        """Stable JSON (sorted keys, rounded to the microsecond) stored beside the song."""
        data = asdict(self)
        data["beats"] = [round(b, 6) for b in self.beats]
        data["bars"] = [round(b, 6) for b in self.bars]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Timeline:
        """Parse and check a stored timeline: a damaged object must not plan a video."""
        try:
            data: dict[str, Any] = json.loads(text)
            timeline = cls(
                tempo=float(data["tempo"]),
                beats=[float(b) for b in data["beats"]],
                bars=[float(b) for b in data["bars"]],
                sections=[Section(float(s["start"]), str(s["label"])) for s in data["sections"]],
                duration=float(data["duration"]),
                beats_per_bar=int(data.get("beats_per_bar", 4)),
                version=int(data.get("version", 1)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(f"not a timeline: {exc}") from exc
        if not (math.isfinite(timeline.duration) and timeline.duration > 0):
            raise InvalidInput("timeline duration must be positive")
        if not math.isfinite(timeline.tempo) or timeline.tempo < 0:
            raise InvalidInput("timeline tempo must be a finite number ≥ 0")
        starts = [s.start for s in timeline.sections]
        if not starts or starts[0] != 0.0 or starts != sorted(starts):
            raise InvalidInput("timeline sections must start at 0 and be sorted")
        for name in ("beats", "bars"):
            values = getattr(timeline, name)
            if any(not (0 <= v <= timeline.duration) for v in values) or values != sorted(values):
                raise InvalidInput(f"timeline {name} must be sorted and inside the song")
        return timeline
