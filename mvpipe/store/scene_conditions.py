"""The conditions a scene's transitions are written under, and the same questions asked of a
record read back after a write did not hold. Pure: builds expressions, does no I/O."""

from __future__ import annotations

from typing import Any

from pynamodb.expressions.condition import Condition

from mvpipe.models import SceneStatus
from mvpipe.states import lease_expired
from mvpipe.store.records import SceneRecord
from mvpipe.store.stage_fields import StageFields
from mvpipe.store.table import ItemBase


def paid_attributes(m: type[ItemBase], stage: StageFields) -> tuple[Any, Any, Any]:
    """The model attributes (output, operation, attempts) of a paid stage."""
    if stage.operation is None or stage.attempts is None:
        raise ValueError(f"{stage.output} is not a paid stage's output")
    return getattr(m, stage.output), getattr(m, stage.operation), getattr(m, stage.attempts)


def open_at(m: type[ItemBase], now: float) -> Condition:
    """`pending`, or `processing` with no live lease (expired, or none: between stages)."""
    return (m.status == SceneStatus.PENDING) | (
        (m.status == SceneStatus.PROCESSING)
        & (m.lease_expires_at.does_not_exist() | (m.lease_expires_at < now))
    )


def at_limit(m: type[ItemBase], stage: StageFields, max_attempts: int, now: float) -> Condition:
    """Open (see `open_at`) with no output and no operation of the paid `stage`, and no
    submissions of it left."""
    output, operation, attempts = paid_attributes(m, stage)
    return (
        operation.does_not_exist()
        & output.does_not_exist()
        & (attempts >= max_attempts)
        & open_at(m, now)
    )


def unowned(scene: SceneRecord, stage: StageFields, now: float) -> bool:
    """No output, no operation, no live lease: the stage waits for a submitter (read from a
    record, as `open_at` and the claim's condition ask it)."""
    waiting = scene.status == SceneStatus.PENDING or (
        scene.status == SceneStatus.PROCESSING and lease_expired(scene.lease_expires_at, now)
    )
    return waiting and scene.value(stage.operation) is None and scene.value(stage.output) is None


def can_claim(
    scene: SceneRecord, stage: StageFields, max_attempts: int, now: float, requires: str | None
) -> bool:
    """What a claim's scene condition asks, read from a record."""
    return (
        unowned(scene, stage, now)
        and (scene.value(stage.attempts) or 0) < max_attempts
        and (requires is None or scene.value(requires) is not None)
    )


def exhausted(scene: SceneRecord, stage: StageFields, max_attempts: int, now: float) -> bool:
    return unowned(scene, stage, now) and (scene.value(stage.attempts) or 0) >= max_attempts
