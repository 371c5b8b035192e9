"""The single-table pynamodb model. Holds no logic: transitions live in projects.py/scene_*.py."""

from __future__ import annotations

from typing import Any

from pynamodb.attributes import (
    BooleanAttribute,
    NumberAttribute,
    NumberSetAttribute,
    UnicodeAttribute,
)
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex
from pynamodb.models import Model

from mvpipe.settings import Settings

METADATA = "METADATA"
SCENE_PREFIX = "SCENE#"
STATUS_INDEX = "GSI1"


def project_pk(project_id: str) -> str:
    return f"PROJECT#{project_id}"


def scene_sk(sequence: int) -> str:
    return f"{SCENE_PREFIX}{sequence:03d}"


class ItemBase(Model):
    """Every attribute any item may carry; a project item and a scene item use different subsets."""

    pk = UnicodeAttribute(hash_key=True, attr_name="PK")
    sk = UnicodeAttribute(range_key=True, attr_name="SK")
    gsi1pk = UnicodeAttribute(null=True, attr_name="GSI1PK")
    gsi1sk = UnicodeAttribute(null=True, attr_name="GSI1SK")
    entity_type = UnicodeAttribute(null=True, attr_name="entityType")
    status = UnicodeAttribute(null=True)
    last_error = UnicodeAttribute(null=True, attr_name="lastError")
    created_at = UnicodeAttribute(null=True, attr_name="createdAt")
    updated_at = UnicodeAttribute(null=True, attr_name="updatedAt")

    # project
    project_id = UnicodeAttribute(null=True, attr_name="projectId")
    title = UnicodeAttribute(null=True)
    concept = UnicodeAttribute(null=True)
    provider = UnicodeAttribute(null=True)
    requested_scene_count = NumberAttribute(null=True, attr_name="requestedSceneCount")
    scene_count = NumberAttribute(null=True, attr_name="sceneCount")
    completed_scenes = NumberAttribute(null=True, attr_name="completedScenes")
    failed_scenes = NumberAttribute(null=True, attr_name="failedScenes")
    active_run_id = UnicodeAttribute(null=True, attr_name="activeRunId")
    song_key = UnicodeAttribute(null=True, attr_name="songS3Key")
    song_seconds = NumberAttribute(null=True, attr_name="songSeconds")
    timeline_key = UnicodeAttribute(null=True, attr_name="timelineS3Key")
    final_video_key = UnicodeAttribute(null=True, attr_name="finalVideoS3Key")
    budget_micros = NumberAttribute(null=True, attr_name="budgetMicros")
    committed_cost_micros = NumberAttribute(null=True, attr_name="committedCostMicros")

    # project (whether it may lip-sync) and scene (whether it does)
    lip_sync = BooleanAttribute(null=True, attr_name="lipSync")
    #: which planner execution wrote the plan (its retried write recognises itself)
    plan_token = UnicodeAttribute(null=True, attr_name="planToken")
    #: the sequences the active run works on (a regeneration); absent: every scene
    run_scope = NumberSetAttribute(null=True, attr_name="runScope")
    #: planner calls since the project was last planned or a user last ran it
    planning_attempts = NumberAttribute(null=True, attr_name="planningAttempts")
    #: finalize chains of the run (and the runs that took it over) that gave up, since a user
    #: last ran the project
    finalize_give_ups = NumberAttribute(null=True, attr_name="finalizeGiveUps")

    # scene
    sequence = NumberAttribute(null=True)
    prompt = UnicodeAttribute(null=True)
    negative_prompt = UnicodeAttribute(null=True, attr_name="negativePrompt")
    duration_seconds = NumberAttribute(null=True, attr_name="durationSeconds")
    original_clip_key = UnicodeAttribute(null=True, attr_name="originalVideoClipS3Key")
    working_clip_key = UnicodeAttribute(null=True, attr_name="workingVideoClipS3Key")
    lip_synced_clip_key = UnicodeAttribute(null=True, attr_name="lipSyncedVideoClipS3Key")
    attempts = NumberAttribute(null=True)
    lease_token = UnicodeAttribute(null=True, attr_name="leaseToken")
    lease_expires_at = NumberAttribute(null=True, attr_name="leaseExpiresAt")
    operation_id = UnicodeAttribute(null=True, attr_name="providerOperationId")
    generation_started_at = UnicodeAttribute(null=True, attr_name="generationStartedAt")
    completed_at = UnicodeAttribute(null=True, attr_name="completedAt")
    start_seconds = NumberAttribute(null=True, attr_name="startSeconds")
    end_seconds = NumberAttribute(null=True, attr_name="endSeconds")
    lip_sync_operation_id = UnicodeAttribute(null=True, attr_name="lipSyncOperationId")
    lip_sync_attempts = NumberAttribute(null=True, attr_name="lipSyncAttempts")
    lip_sync_started_at = UnicodeAttribute(null=True, attr_name="lipSyncStartedAt")
    cost_micros = NumberAttribute(null=True, attr_name="costMicros")
    #: the part of `costMicros` reserved by submits whose outcome is unknown (a 5xx, a timeout)
    unknown_cost_micros = NumberAttribute(null=True, attr_name="unknownCostMicros")
    #: set on a scene failed because its stage's polls were refused to us (401/403/404): the
    #: stage's operation (a job that may be paid) is kept, and a user's next run polls it
    operation_kept = BooleanAttribute(null=True, attr_name="operationKept")


def bind_table(settings: Settings) -> type[ItemBase]:
    """A model class bound to the configured table; each process builds its own (fork safety)."""

    class StatusIndex(GlobalSecondaryIndex[Any]):
        class Meta:
            index_name = STATUS_INDEX
            projection = AllProjection()

        gsi1pk = UnicodeAttribute(hash_key=True, attr_name="GSI1PK")
        gsi1sk = UnicodeAttribute(range_key=True, attr_name="GSI1SK")

    meta = type(
        "Meta",
        (),
        {
            "table_name": settings.table,
            "region": settings.aws_region,
            "host": settings.dynamodb_endpoint,
            "billing_mode": "PAY_PER_REQUEST",
            "connect_timeout_seconds": max(1, int(settings.store_timeout_seconds)),
            "read_timeout_seconds": max(1, int(settings.store_timeout_seconds)),
            # The store's own retry (`Table._call`, bounded by `retry_until`) is the only one:
            # retries inside the client would each add a timeout the lease budget can't see.
            "max_retry_attempts": 0,
            "max_pool_connections": settings.store_connections,
        },
    )
    return type("Item", (ItemBase,), {"Meta": meta, "status_index": StatusIndex()})
