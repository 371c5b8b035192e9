"""The invariants check itself (`devstack.invariants`), on projects held in memory: each rule of
docs/DESIGN.md it states must find the state that breaks it, and pass the state that keeps it."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import cast

import pytest

from mvpipe.deps import Context
from mvpipe.devstack.invariants import violations
from mvpipe.models import ProjectStatus, SceneStatus
from mvpipe.settings import Settings
from mvpipe.store.clips import clip_key, lipsync_key, working_key
from mvpipe.store.records import ProjectRecord, ProjectState, SceneRecord
from tests.test_listing import PENDING
from tests.test_stages import PID
from tests.test_stages import scene as bare_scene

HASH = "0123456789abcdef"
PROJECT = dataclasses.replace(PENDING, project_id=PID, scene_count=1)


def scene(**fields: object) -> SceneRecord:
    """Scene 1, completed from operation "op-new": its clip and a cut of it."""
    original = clip_key(PID, 1, "op-new")
    done = bare_scene(
        sequence=1,
        status=SceneStatus.COMPLETED,
        clip_key=original,
        working_clip_key=working_key(PID, 1, original, HASH),
        attempts=1,
        operation_id="op-new",
        completed_at=PENDING.created_at,
    )
    return dataclasses.replace(done, **fields)  # type: ignore[arg-type]


def found(project: ProjectRecord, *scenes: SceneRecord) -> list[str]:
    """`violations` of a project and scenes held in memory, every key they name stored."""
    state = ProjectState(project, scenes)
    stored = {
        key
        for s in scenes
        for key in (s.clip_key, s.working_clip_key, s.lip_synced_clip_key)
        if key is not None
    }
    ctx = SimpleNamespace(
        settings=Settings(),
        projects=SimpleNamespace(load=lambda _: state),
        clips=SimpleNamespace(exists=lambda key: key in stored),
    )
    return violations(cast(Context, ctx), PID)


UNPLANNED = dataclasses.replace(PROJECT, scene_count=None, status=ProjectStatus.FAILED)


def test_a_project_failed_before_its_plan_must_say_why() -> None:
    assert found(dataclasses.replace(UNPLANNED, last_error="planning failed: no model")) == []
    assert found(UNPLANNED) == [
        "project failed before it was planned, without lastError saying why"
    ]


def test_a_working_clip_must_be_cut_from_the_recorded_original() -> None:
    completed = dataclasses.replace(PROJECT, completed_scenes=1)
    assert found(completed, scene()) == []
    # the cut of an earlier operation's clip, recorded beside a newer original
    stale = working_key(PID, 1, clip_key(PID, 1, "op-old"), HASH)
    assert found(completed, scene(working_clip_key=stale)) == [
        f"scene 1: working_clip_key {stale!r} is not made from original_clip_key "
        f"{clip_key(PID, 1, 'op-new')!r}"
    ]
    # a key of no cut at all, and a cut without its original
    loose = f"projects/{PID}/scenes/001/cut.mp4"
    assert len(found(completed, scene(working_clip_key=loose))) == 1
    orphan = dataclasses.replace(scene(clip_key=None), status=SceneStatus.PROCESSING)
    assert found(PROJECT, orphan) == [
        f"scene 1: working_clip_key {orphan.working_clip_key!r} recorded without its input "
        "original_clip_key"
    ]


def test_a_paid_output_must_be_its_recorded_operation_s() -> None:
    completed = dataclasses.replace(PROJECT, completed_scenes=1)
    synced = scene(
        lip_sync=True,
        lip_sync_operation_id="lip-new",
        lip_synced_clip_key=lipsync_key(PID, 1, "lip-new"),
    )
    assert found(completed, synced) == []
    old = lipsync_key(PID, 1, "lip-old")
    assert found(completed, dataclasses.replace(synced, lip_synced_clip_key=old)) == [
        f"scene 1: lip_synced_clip_key {old!r} is not operation 'lip-new''s output "
        f"{lipsync_key(PID, 1, 'lip-new')!r}"
    ]
    # the original too: a clip recorded under another operation than the stored one
    assert len(found(completed, scene(operation_id="op-other"))) == 1
    # an output whose operation id is not stored names no operation to check it against
    assert found(completed, scene(operation_id=None)) == []


@pytest.mark.parametrize(
    ("status", "scenes", "why"),
    [
        # every scene failed, nothing open: failed, not pending
        (ProjectStatus.PENDING, [SceneStatus.FAILED], "nothing is open and a scene failed"),
        # a scene still pending: not failed
        (ProjectStatus.FAILED, [SceneStatus.FAILED, SceneStatus.PENDING], "project failed"),
        # no run: never processing
        (ProjectStatus.PROCESSING, [SceneStatus.PENDING], "with no run active"),
    ],
)
def test_the_project_status_follows_its_scenes_both_ways(
    status: ProjectStatus, scenes: list[SceneStatus], why: str
) -> None:
    records = [
        dataclasses.replace(
            scene(),
            sequence=n,
            status=s,
            clip_key=None,
            working_clip_key=None,
            operation_id=None,
            last_error="x" if s == SceneStatus.FAILED else None,
        )
        for n, s in enumerate(scenes, start=1)
    ]
    failed = scenes.count(SceneStatus.FAILED)
    project = dataclasses.replace(
        PROJECT, status=status, scene_count=len(scenes), failed_scenes=failed
    )
    assert [why in v for v in found(project, *records)] == [True]
