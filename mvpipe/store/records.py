"""Plain records read from the table, and their conversion to public views."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mvpipe.models import ProjectStatus, ProjectView, SceneStatus, SceneView, micros_to_usd
from mvpipe.states import Counters
from mvpipe.store.table import ItemBase


def _float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)


MAX_ERROR_CHARS = 1000


def clip_error(message: str) -> str:
    """An error text as stored (`lastError`): bounded, so no item outgrows DynamoDB's limit."""
    return message if len(message) <= MAX_ERROR_CHARS else message[: MAX_ERROR_CHARS - 3] + "..."


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class SceneRecord:
    project_id: str
    sequence: int
    prompt: str
    negative_prompt: str | None
    duration_seconds: int
    status: SceneStatus
    clip_key: str | None
    working_clip_key: str | None
    lip_synced_clip_key: str | None
    attempts: int
    last_error: str | None
    lease_token: str | None
    lease_expires_at: float | None
    operation_id: str | None
    completed_at: str | None
    start_seconds: float | None = None
    end_seconds: float | None = None
    lip_sync: bool = False
    lip_sync_operation_id: str | None = None
    lip_sync_attempts: int = 0
    cost_micros: int = 0
    #: the part of `cost_micros` kept by submits whose outcome is unknown (maybe never billed)
    unknown_cost_micros: int = 0
    #: when each paid stage's job was last claimed (UTC ISO time): how long it has run
    generation_started_at: str | None = None
    lip_sync_started_at: str | None = None
    #: failed with its stage's operation kept (its polls were refused): a run polls it again
    operation_kept: bool = False

    @property
    def original_clip_key(self) -> str | None:
        """The model's name for `clip_key`, so a stage's fields name both alike."""
        return self.clip_key

    def value(self, field: str | None) -> Any:
        """A field by name (a stage's output, operation or attempts)."""
        if field is None:
            raise ValueError("no such field")
        return getattr(self, field)

    @classmethod
    def from_item(cls, project_id: str, item: ItemBase) -> SceneRecord:
        return cls(
            project_id=project_id,
            sequence=int(item.sequence or 0),
            prompt=item.prompt or "",
            negative_prompt=item.negative_prompt,
            duration_seconds=int(item.duration_seconds or 0),
            status=SceneStatus(item.status or SceneStatus.PENDING),
            clip_key=item.original_clip_key,
            working_clip_key=item.working_clip_key,
            lip_synced_clip_key=item.lip_synced_clip_key,
            attempts=int(item.attempts or 0),
            last_error=item.last_error,
            lease_token=item.lease_token,
            lease_expires_at=None
            if item.lease_expires_at is None
            else float(item.lease_expires_at),
            operation_id=item.operation_id,
            completed_at=item.completed_at,
            start_seconds=_float_or_none(item.start_seconds),
            end_seconds=_float_or_none(item.end_seconds),
            lip_sync=bool(item.lip_sync),
            lip_sync_operation_id=item.lip_sync_operation_id,
            lip_sync_attempts=int(item.lip_sync_attempts or 0),
            cost_micros=int(item.cost_micros or 0),
            unknown_cost_micros=int(item.unknown_cost_micros or 0),
            generation_started_at=item.generation_started_at,
            lip_sync_started_at=item.lip_sync_started_at,
            operation_kept=bool(item.operation_kept),
        )

    def view(self) -> SceneView:
        return SceneView(
            sequence=self.sequence,
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            duration_seconds=self.duration_seconds,
            start_seconds=self.start_seconds,
            end_seconds=self.end_seconds,
            status=self.status,
            original_video_clip_s3_key=self.clip_key,
            working_video_clip_s3_key=self.working_clip_key,
            lip_synced_video_clip_s3_key=self.lip_synced_clip_key,
            lip_sync=self.lip_sync,
            attempts=self.attempts,
            lip_sync_attempts=self.lip_sync_attempts,
            last_error=self.last_error,
            provider_operation_id=self.operation_id,
            lip_sync_operation_id=self.lip_sync_operation_id,
            cost_usd=micros_to_usd(self.cost_micros) or 0.0,
            completed_at=datetime.fromisoformat(self.completed_at) if self.completed_at else None,
        )


@dataclass(frozen=True)
class ProjectRecord:
    project_id: str
    title: str
    concept: str
    provider: str
    status: ProjectStatus
    requested_scene_count: int
    scene_count: int | None
    completed_scenes: int
    failed_scenes: int
    last_error: str | None
    active_run_id: str | None
    created_at: str
    updated_at: str
    song_key: str | None = None
    song_seconds: float | None = None
    timeline_key: str | None = None
    lip_sync: bool = False
    final_video_key: str | None = None
    budget_micros: int | None = None
    committed_cost_micros: int = 0
    #: the sequences the active run works on; None: every scene
    run_scope: tuple[int, ...] | None = None
    #: the status index's sort key (GSI1SK): where the project stands in its partition
    gsi1sk: str = ""
    #: finalize chains that gave up since a user last ran the project (kept across takeovers)
    finalize_give_ups: int = 0

    @property
    def planned(self) -> bool:
        return self.scene_count is not None

    @property
    def known_scene_count(self) -> int | None:
        """The planned scenes, or those an unplanned project asked for; None for a song's
        project not planned yet, whose beats decide (shown as `?`)."""
        if self.planned:
            return self.scene_count
        return None if self.song_key is not None else self.requested_scene_count

    @classmethod
    def from_item(cls, item: ItemBase) -> ProjectRecord:
        return cls(
            project_id=item.project_id or "",
            title=item.title or "",
            concept=item.concept or "",
            provider=item.provider or "local",
            status=ProjectStatus(item.status or ProjectStatus.PENDING),
            requested_scene_count=int(item.requested_scene_count or 0),
            scene_count=None if item.scene_count is None else int(item.scene_count),
            completed_scenes=int(item.completed_scenes or 0),
            failed_scenes=int(item.failed_scenes or 0),
            last_error=item.last_error,
            active_run_id=item.active_run_id,
            created_at=item.created_at or "",
            updated_at=item.updated_at or "",
            song_key=item.song_key,
            song_seconds=_float_or_none(item.song_seconds),
            timeline_key=item.timeline_key,
            lip_sync=bool(item.lip_sync),
            final_video_key=item.final_video_key,
            budget_micros=None if item.budget_micros is None else int(item.budget_micros),
            committed_cost_micros=int(item.committed_cost_micros or 0),
            run_scope=tuple(sorted(int(n) for n in item.run_scope)) if item.run_scope else None,
            gsi1sk=item.gsi1sk or "",
            finalize_give_ups=int(item.finalize_give_ups or 0),
        )


@dataclass(frozen=True)
class ProjectState:
    """A project with all its scenes, read by one query."""

    project: ProjectRecord
    scenes: tuple[SceneRecord, ...]

    @property
    def counters(self) -> Counters:
        return Counters.of(s.status for s in self.scenes)

    def scene(self, sequence: int) -> SceneRecord | None:
        return next((s for s in self.scenes if s.sequence == sequence), None)

    def view(self) -> ProjectView:
        p = self.project
        return ProjectView(
            project_id=p.project_id,
            title=p.title,
            concept=p.concept,
            provider=p.provider,
            status=p.status,
            scene_count=p.scene_count or 0,
            requested_scene_count=None if p.song_key is not None else p.requested_scene_count,
            completed_scenes=p.completed_scenes,
            failed_scenes=p.failed_scenes,
            last_error=p.last_error,
            created_at=datetime.fromisoformat(p.created_at),
            updated_at=datetime.fromisoformat(p.updated_at),
            song_s3_key=p.song_key,
            song_seconds=p.song_seconds,
            timeline_s3_key=p.timeline_key,
            lip_sync=p.lip_sync,
            final_video_s3_key=p.final_video_key,
            budget_usd=micros_to_usd(p.budget_micros),
            committed_cost_usd=micros_to_usd(p.committed_cost_micros) or 0.0,
            scenes=[s.view() for s in self.scenes],
        )
