"""Scene transitions: each one conditional write (or one transaction), idempotent for its caller.

The conditions *are* the concurrency design (DESIGN.md invariants 1-3 and 7). A scene's outputs
are filled in stage order; each paid stage (generation, lip-sync) owns an output, an operation id
and an attempt count (`StageFields`), and its transitions take those fields:
- a submission lease is won only on a scene with no output and no operation for that stage that
  is `pending`, or `processing` with no live lease, and only while the project's run is the
  caller's;
- the operation id is recorded only by the lease holder; from then on it owns the stage;
- a stage's output is written after its upload, conditioned on what it was made from (the
  operation id, or the input a free stage like the cut read); the write that records the last
  output a scene needs also sets `completed`.

Each part lives in the module that owns it: the stages' attributes (`stage_fields`), what a claim
tells its caller (`claim_outcomes`), the conditions themselves (`scene_conditions`, pure), the
idempotent write (`scene_writes`), and the transitions by what they do (`scene_leases`,
`scene_outcomes`, `scene_resets`). `SceneStore` is all of the transitions over one table.
"""

from __future__ import annotations

from mvpipe.store.scene_leases import SceneLeases
from mvpipe.store.scene_outcomes import SceneOutcomes
from mvpipe.store.scene_resets import SceneResets


class SceneStore(SceneLeases, SceneOutcomes, SceneResets):
    """A scene's reads and every transition of it (each one conditional write, or one
    transaction with the project's METADATA)."""
