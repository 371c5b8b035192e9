"""The scene attributes each stage owns, and the order the stages fill their outputs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageFields:
    """The scene attributes one stage owns (model attribute names, also the `SceneRecord`
    names): its output key and, for a paid stage, its operation id and attempt count."""

    output: str
    operation: str | None = None
    attempts: str | None = None
    #: when its job was claimed (a paid stage's): how long the job has run
    started: str | None = None


#: generation: `originalVideoClipS3Key`, `providerOperationId`, `attempts`
ORIGINAL = StageFields("original_clip_key", "operation_id", "attempts", "generation_started_at")
#: the cut: `workingVideoClipS3Key` (free: no operation, no attempts)
WORKING = StageFields("working_clip_key")
#: lip-sync: `lipSyncedVideoClipS3Key`, `lipSyncOperationId`, `lipSyncAttempts`
LIP_SYNCED = StageFields(
    "lip_synced_clip_key", "lip_sync_operation_id", "lip_sync_attempts", "lip_sync_started_at"
)
#: Every output in the order the stages fill them: clearing one clears the later ones too.
OUTPUT_ORDER = (ORIGINAL, WORKING, LIP_SYNCED)
