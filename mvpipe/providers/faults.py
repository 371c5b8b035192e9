"""Reproducible fault schedules for drills, e.g.
`MVPIPE_LOCAL_FAULTS=transient=0.2,permanent=0.05,garbage=0.1,seed=7`. `garbage` polls get a
reply nobody can read (a 200 whose body is not JSON): an error no classification knows.

Whether a call faults is a pure function of (seed, project, sequence, kind of call, call number),
so a drill repeats exactly whatever order the workers happen to run in.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from mvpipe.errors import ConfigurationError


def roll(*parts: object) -> float:
    """A number in [0, 1) that depends only on `parts`: the same draw in every process and
    every run, whatever order the workers happen to make their calls in."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class FaultPlan:
    transient: float = 0.0
    permanent: float = 0.0
    garbage: float = 0.0
    seed: int = 0

    @classmethod
    def parse(cls, spec: str, setting: str = "MVPIPE_LOCAL_FAULTS") -> FaultPlan:
        values: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, sep, raw = part.partition("=")
            if not sep or name not in {"transient", "permanent", "garbage", "seed"}:
                raise ConfigurationError(f"{setting}: cannot read {part!r}")
            try:
                values[name] = float(raw)
            except ValueError:
                raise ConfigurationError(f"{setting}: {name} must be a number") from None
        plan = cls(
            transient=values.get("transient", 0.0),
            permanent=values.get("permanent", 0.0),
            garbage=values.get("garbage", 0.0),
            seed=int(values.get("seed", 0)),
        )
        if not all(0 <= rate <= 1 for rate in (plan.transient, plan.permanent, plan.garbage)):
            raise ConfigurationError(f"{setting}: rates must be within 0..1")
        return plan

    def roll(self, project_id: str, sequence: int, kind: str, call: int) -> float:
        return roll(self.seed, project_id, sequence, kind, call)

    def transient_fault(self, project_id: str, sequence: int, kind: str, call: int) -> bool:
        return self.transient > 0 and self.roll(project_id, sequence, kind, call) < self.transient

    def garbage_fault(self, project_id: str, sequence: int, call: int) -> bool:
        return self.garbage > 0 and self.roll(project_id, sequence, "garbage", call) < self.garbage

    def permanent_fault(self, project_id: str, sequence: int, submission: int) -> bool:
        return (
            self.permanent > 0
            and self.roll(project_id, sequence, "outcome", submission) < self.permanent
        )
