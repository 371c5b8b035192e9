"""Project transitions on the METADATA item, each one conditional write.

A project is visible only once METADATA exists: `create` writes the scenes first, METADATA last.
`activeRunId` is the run guard: exactly one run at a time, won and released by conditions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence

from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action
from pynamodb.transactions import TransactWrite

from mvpipe.errors import NotFound
from mvpipe.models import ProjectSpec, ProjectStatus, SceneSpec, SceneStatus
from mvpipe.states import Counters
from mvpipe.store.dynamo import Table
from mvpipe.store.records import (
    ProjectRecord,
    ProjectState,
    SceneRecord,
    clip_error,
    utc_now_iso,
)
from mvpipe.store.table import METADATA, SCENE_PREFIX, ItemBase, project_pk, scene_sk

#: Scene writes per transaction of a plan, beside its METADATA check (DynamoDB allows 100).
_TRANSACT_SCENES = 99


def _put_scene(item: ItemBase, condition: Condition, tx: TransactWrite) -> None:
    tx.save(item, condition=condition)


def _delete_scene(
    model: type[ItemBase], pk: str, sk: str, condition: Condition, tx: TransactWrite
) -> None:
    tx.delete(model(pk, sk), condition=condition)


def final_video_cleared(model: type[ItemBase]) -> list[Action]:
    """Invariant 8: the actions that forget the project's final video, for a write to METADATA
    that also changes a scene's outputs (one transaction, so the two never disagree)."""
    return [model.final_video_key.remove()]


class ProjectStore:
    def __init__(self, table: Table) -> None:
        self.table = table
        self.m = table.model

    # -- reads ---------------------------------------------------------------------------------
    def load(self, project_id: str) -> ProjectState:
        """The project and its scenes in one query; `NotFound` until METADATA exists."""
        items = self.table.query_project(project_id)
        meta = next((i for i in items if i.sk == METADATA), None)
        if meta is None:
            raise NotFound(f"project {project_id} not found")
        scenes = tuple(
            SceneRecord.from_item(project_id, i) for i in items if i.sk.startswith(SCENE_PREFIX)
        )
        return ProjectState(ProjectRecord.from_item(meta), scenes)

    def get(self, project_id: str) -> ProjectRecord:
        item = self.table.get(project_pk(project_id), METADATA)
        if item is None:
            raise NotFound(f"project {project_id} not found")
        return ProjectRecord.from_item(item)

    def list_by_status(self, status: ProjectStatus) -> list[ProjectRecord]:
        return [ProjectRecord.from_item(i) for i in self.table.iter_by_status(status)]

    def newest_of_status(self, status: ProjectStatus, limit: int) -> list[ProjectRecord]:
        """The `limit` most recently created projects of `status`, newest first."""
        return [ProjectRecord.from_item(i) for i in self.table.newest_of_status(status, limit)]

    def walk_status(
        self, status: ProjectStatus, after: tuple[str, str] | None, until: str, *, page: int
    ) -> Iterator[ProjectRecord]:
        """The projects of `status` in the status index's order (GSI1SK, then id) from after
        `after` = (GSI1SK, id) up to GSI1SK `until`, read `page` at a time as the walk reaches
        them: a walk that stops early has read at most one page past where it stopped."""
        while True:
            items, more = self.table.status_page(status, page, after, until)
            records = [ProjectRecord.from_item(i) for i in items]
            yield from records
            if not more or not records:
                return
            after = (records[-1].gsi1sk, records[-1].project_id)

    # -- creation and planning -----------------------------------------------------------------
    def create(self, project_id: str, spec: ProjectSpec, *, song_key: str | None = None) -> None:
        """Scenes first, METADATA last: the project becomes visible whole or not at all."""
        now = utc_now_iso()
        if spec.scenes is not None:
            self.table.batch_put(self._scene_items(project_id, spec.scenes, now))
        meta = self.m(
            project_pk(project_id),
            METADATA,
            entity_type="project",
            project_id=project_id,
            title=spec.title,
            concept=spec.concept,
            provider=spec.provider,
            status=ProjectStatus.PENDING,
            gsi1pk=ProjectStatus.PENDING,
            gsi1sk=now,
            requested_scene_count=spec.requested_scene_count,
            scene_count=None if spec.scenes is None else len(spec.scenes),
            completed_scenes=0,
            failed_scenes=0,
            song_key=song_key,
            song_seconds=None if spec.song is None else spec.song.seconds,
            lip_sync=spec.lip_sync,
            budget_micros=spec.budget_micros,
            committed_cost_micros=0,
            created_at=now,
            updated_at=now,
        )
        self.table.put(meta, condition=self.m.pk.does_not_exist())

    def exists(self, project_id: str) -> bool:
        return self.table.get(project_pk(project_id), METADATA) is not None

    def existing(self, project_ids: list[str]) -> set[str]:
        """Which of `project_ids` have METADATA (a batch read, not one read each)."""
        found = self.table.existing([(project_pk(p), METADATA) for p in project_ids])
        return {pk.removeprefix(project_pk("")) for pk, _ in found}

    def take_back(self, project_id: str) -> bool:
        """Delete the scene items of a `create` whose METADATA was refused: they belong to no
        project anyone can see. A project that has METADATA keeps everything (False)."""
        items = self.table.query_project(project_id)
        if any(i.sk == METADATA for i in items):
            return False
        self.table.batch_delete([(i.pk, i.sk) for i in items if i.sk.startswith(SCENE_PREFIX)])
        return True

    def save_plan(
        self, project_id: str, run_id: str, specs: Sequence[SceneSpec], *, token: str
    ) -> bool:
        """Replace any partial scenes, then mark the project planned (sceneCount) last.

        Every scene write is conditioned on the project still being unplanned under `run_id`
        (a ConditionCheck on METADATA in each transaction) and on the scene holding no lease,
        operation or clip: a second planner of the same run (a duplicate root task, a takeover
        after a stall) can never reset a scene that is already being paid for. False when the
        plan was not written because the project moved on.

        `token` names this planner's execution: a retry of a final write that had landed
        finds its own token and reports success (invariant 7); another planner of the same run
        finds a foreign one and starts nothing.
        """
        m = self.m
        pk = project_pk(project_id)
        unplanned = m.pk.exists() & (m.active_run_id == run_id) & m.scene_count.does_not_exist()
        untouched = (
            m.lease_token.does_not_exist()
            & m.operation_id.does_not_exist()
            & m.original_clip_key.does_not_exist()
        )
        wanted = {scene_sk(n) for n in range(1, len(specs) + 1)}
        stale = [
            i.sk
            for i in self.table.query_project(project_id)
            if i.sk.startswith(SCENE_PREFIX) and i.sk not in wanted
        ]
        writes: list[Callable[[TransactWrite], None]] = [
            functools.partial(_delete_scene, m, pk, sk, untouched) for sk in stale
        ]
        writes += [
            functools.partial(_put_scene, item, untouched)
            for item in self._scene_items(project_id, specs, utc_now_iso())
        ]
        for start in range(0, len(writes), _TRANSACT_SCENES):
            chunk = writes[start : start + _TRANSACT_SCENES]

            def build(
                tx: TransactWrite, chunk: list[Callable[[TransactWrite], None]] = chunk
            ) -> None:
                tx.condition_check(m, pk, METADATA, condition=unplanned)
                for write in chunk:
                    write(tx)

            if self.table.transact(build) is not None:
                return self._planned_by(project_id, run_id, token)
        if self._update_meta(
            project_id,
            [
                m.scene_count.set(len(specs)),
                m.plan_token.set(token),
                m.planning_attempts.remove(),
                *self._status_actions(ProjectStatus.PROCESSING),
            ],
            (m.active_run_id == run_id) & m.scene_count.does_not_exist(),
        ):
            return True
        return self._planned_by(project_id, run_id, token)

    def _planned_by(self, project_id: str, run_id: str, token: str) -> bool:
        item = self.table.get(project_pk(project_id), METADATA)
        return (
            item is not None
            and item.active_run_id == run_id
            and item.scene_count is not None
            and item.plan_token == token
        )

    def record_timeline(self, project_id: str, song_key: str, timeline_key: str) -> bool:
        """Point METADATA at the song's timeline; True also when it already points there.

        Conditioned on the song it was made from, so a timeline never describes another song.
        `updatedAt` stays: the timeline is derived from the song, and a project analysed at its
        creation has nothing for reconcile's regular passes to repair (`needs_regular_pass`).
        """
        m = self.m
        if self._update_meta(
            project_id,
            [m.timeline_key.set(timeline_key)],
            (m.song_key == song_key)
            & (m.timeline_key.does_not_exist() | (m.timeline_key == timeline_key)),
        ):
            return True
        current = self.get(project_id)
        return current.song_key == song_key and current.timeline_key == timeline_key

    def _scene_items(self, project_id: str, specs: Sequence[SceneSpec], now: str) -> list[ItemBase]:
        if any(spec.duration_seconds is None for spec in specs):
            # the length a price is reserved on is chosen before storing (mvpipe.durations)
            raise ValueError("a scene is stored with the clip length its provider makes")
        return [
            self.m(
                project_pk(project_id),
                scene_sk(n),
                entity_type="scene",
                project_id=project_id,
                sequence=n,
                prompt=spec.prompt,
                negative_prompt=spec.negative_prompt,
                duration_seconds=spec.duration_seconds,
                start_seconds=spec.start_seconds,
                end_seconds=spec.end_seconds,
                lip_sync=spec.lip_sync,
                status=SceneStatus.PENDING,
                attempts=0,
                created_at=now,
                updated_at=now,
            )
            for n, spec in enumerate(specs, start=1)
        ]

    # -- the run guard -------------------------------------------------------------------------
    def win_run(self, project_id: str, run_id: str, status: ProjectStatus) -> str:
        """Try to make `run_id` the active run; returns the run that is active afterwards."""
        m = self.m
        if self._update_meta(
            project_id,
            [
                m.active_run_id.set(run_id),
                m.run_scope.remove(),
                m.planning_attempts.remove(),  # a user's run gives planning its attempts back
                m.finalize_give_ups.remove(),  # and finalize its give-ups
                m.last_error.remove(),
                *self._status_actions(status),
            ],
            m.active_run_id.does_not_exist(),
        ):
            return run_id
        current = self.get(project_id).active_run_id
        if current is None:  # released between our write and read: try once more
            return self.win_run(project_id, run_id, status)
        return current

    def take_over_run(
        self, project_id: str, old_run: str, new_run: str, status: ProjectStatus
    ) -> bool:
        """Replace a stale run; its scope (`runScope`) stays, so the new run does its work."""
        m = self.m
        if self._update_meta(
            project_id,
            [m.active_run_id.set(new_run), *self._status_actions(status)],
            m.active_run_id == old_run,
        ):
            return True
        return self.get(project_id).active_run_id == new_run

    def settle(
        self,
        project_id: str,
        *,
        observed_run: str | None,
        counters: Counters,
        status: ProjectStatus,
        release: bool,
        last_error: str | None = None,
        recount_cost: tuple[int, int] | None = None,
        observed_version: str | None = None,
    ) -> bool:
        """Write derived counters and status (and release the run), unless METADATA moved on.

        `recount_cost` = (committed as read, the scenes' sum): the committed sum is repaired
        only if nothing was reserved since the read, so a recount never lowers it under a
        claim that landed meanwhile (invariants 4 and 9).

        `observed_version` = METADATA's `updatedAt` as read with the scenes the counters were
        counted from: the write lands only if no other settle landed since (every one sets
        `updatedAt`; so do a budget, timeline, takeover or cancel write, which costs a settle
        racing with it one more read). Two recounts race while a run works (a finalize, a
        reconcile pass, a duplicate finalize); the one read earlier must not write its older
        counters and status over the later one's (invariant 4). A project's METADATA comes
        first in its Query (key order), so the version read is never newer than the scenes
        read with it."""
        m = self.m
        actions: list[Action] = [
            m.completed_scenes.set(counters.completed_scenes),
            m.failed_scenes.set(counters.failed_scenes),
            *self._status_actions(status),
        ]
        if counters.scene_count:
            actions.append(m.scene_count.set(counters.scene_count))
        actions.append(
            m.last_error.set(clip_error(last_error)) if last_error else m.last_error.remove()
        )
        if release:
            actions += [m.active_run_id.remove(), m.run_scope.remove()]
        guard = (
            m.active_run_id.does_not_exist()
            if observed_run is None
            else m.active_run_id == observed_run
        )
        if recount_cost is not None:
            observed, actual = recount_cost
            actions.append(m.committed_cost_micros.set(actual))
            committed = m.committed_cost_micros
            same = committed == observed
            guard &= (same | committed.does_not_exist()) if observed == 0 else same
        if observed_version is not None:
            at = m.updated_at
            guard &= (at == observed_version) if observed_version else at.does_not_exist()
        run_after = None if release else observed_run
        error_after = clip_error(last_error) if last_error else None

        def done(p: ProjectRecord) -> bool:
            return (
                p.active_run_id == run_after
                and p.status == status
                and p.completed_scenes == counters.completed_scenes
                and p.failed_scenes == counters.failed_scenes
                and p.last_error == error_after
                and (recount_cost is None or p.committed_cost_micros == recount_cost[1])
            )

        return self._update_meta(project_id, actions, guard, done=done)

    def count_planning_attempt(self, project_id: str, run_id: str) -> int | None:
        """Count one planner call of `run_id` (kept across takeovers, so a plan that always
        crashes ends); None when the run is not the project's unplanned run any more."""
        m = self.m
        condition = (m.active_run_id == run_id) & m.scene_count.does_not_exist()
        return self._count(project_id, "planning_attempts", condition)

    def count_finalize_give_up(
        self, project_id: str, run_id: str, error: str, *, by: int = 1
    ) -> int | None:
        """Count a finalize chain of `run_id` that gave up (`by`: as that many), noting why
        (kept across takeovers, so a finalize that always crashes ends); None when `run_id` is
        not the active run."""
        m = self.m
        noted = [m.last_error.set(clip_error(error))]
        active = m.active_run_id == run_id
        return self._count(project_id, "finalize_give_ups", active, noted, by=by)

    def _count(
        self,
        project_id: str,
        counter: str,
        condition: Condition,
        actions: Sequence[Action] = (),
        *,
        by: int = 1,
    ) -> int | None:
        """Add `by` (one) to METADATA's number attribute `counter` (its name in the model) if
        `condition` holds; the count after, or None.

        Not idempotent: a retried write whose first attempt landed counts twice (one try
        fewer for a project during a store outage, never one more)."""
        attribute = getattr(self.m, counter)
        if not self._update_meta(project_id, [attribute.add(by), *actions], condition):
            return None
        return int(getattr(self.table.get(project_pk(project_id), METADATA), counter) or 0)

    def note_planning_error(self, project_id: str, run_id: str, error: str) -> bool:
        """Keep why planning last failed, for the `lastError` of a planning that gives up."""
        m = self.m
        return self._update_meta(
            project_id, [m.last_error.set(clip_error(error))], m.active_run_id == run_id
        )  # idempotent as it stands: the same write again still holds

    def fail_planning(self, project_id: str, run_id: str, error: str) -> bool:
        m = self.m
        message = clip_error(f"planning failed: {error}")
        return self._update_meta(
            project_id,
            [
                m.last_error.set(message),
                m.active_run_id.remove(),
                m.run_scope.remove(),
                *self._status_actions(ProjectStatus.FAILED),
            ],
            m.active_run_id == run_id,
            done=lambda p: (
                p.active_run_id is None
                and p.status == ProjectStatus.FAILED
                and p.last_error == message
            ),
        )

    # -- the final video -----------------------------------------------------------------------
    def record_final_video(
        self, project_id: str, run_id: str, key: str, counters: Counters
    ) -> bool:
        """The run's last write: the final video's key, `completed`, the recount, the run
        released, all conditioned on `run_id` still being the active run (invariant 8). A
        retried write that finds its own key recorded and no run reports success."""
        m = self.m
        actions: list[Action] = [
            m.final_video_key.set(key),
            m.scene_count.set(counters.scene_count),
            m.completed_scenes.set(counters.completed_scenes),
            m.failed_scenes.set(counters.failed_scenes),
            m.last_error.remove(),
            m.active_run_id.remove(),
            m.run_scope.remove(),
            *self._status_actions(ProjectStatus.COMPLETED),
        ]
        return self._update_meta(
            project_id,
            actions,
            m.active_run_id == run_id,
            done=lambda p: (
                p.final_video_key == key
                and p.active_run_id is None
                and p.status == ProjectStatus.COMPLETED
            ),
        )

    def forget_final_video(self, project_id: str, key: str) -> bool:
        """The recorded final video's object is gone: forget its key, and with no run active
        the project waits for one (`pending`) to assemble it again."""
        m = self.m
        return self._update_meta(
            project_id,
            [*final_video_cleared(m), *self._status_actions(ProjectStatus.PENDING)],
            (m.final_video_key == key) & m.active_run_id.does_not_exist(),
            done=lambda p: p.final_video_key != key,
        )

    # -- plumbing ------------------------------------------------------------------------------
    def _status_actions(self, status: ProjectStatus) -> list[Action]:
        m = self.m
        return [m.status.set(status), m.gsi1pk.set(status), m.updated_at.set(utc_now_iso())]

    def _update_meta(
        self,
        project_id: str,
        actions: list[Action],
        condition: Condition,
        *,
        done: Callable[[ProjectRecord], bool] | None = None,
    ) -> bool:
        """One conditional UpdateItem; on a failed condition, success if METADATA already is
        what `done` says this write meant to make (its earlier attempt landed: invariant 7)."""
        pk = project_pk(project_id)
        cond = self.m.pk.exists() & condition
        if self.table.update(pk, METADATA, actions, cond):
            return True
        item = self.table.get(pk, METADATA)
        if item is None:
            raise NotFound(f"project {project_id} not found")
        return done is not None and done(ProjectRecord.from_item(item))
