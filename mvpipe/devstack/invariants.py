"""docs/DESIGN.md's invariants (1, 4, 5, 8, 9) as a check anyone can run against a project.

Each rule is stated here as the design states it, not through the production rule that sets the
status (`states.project_status`): a check that asked the code under test would agree with it.

Returns the violations found, empty when the project is sound. Read-only.
"""

from __future__ import annotations

import re

from mvpipe.deps import Context
from mvpipe.models import ProjectStatus, SceneStatus
from mvpipe.pipeline.assemble import final_key
from mvpipe.pipeline.cut import output_format
from mvpipe.pipeline.stages import Stage, needed_stages
from mvpipe.states import Counters
from mvpipe.store.clips import working_key
from mvpipe.store.records import ProjectRecord, ProjectState, SceneRecord

#: The inputs hash a working clip's key ends with (`store.clips.working_key`).
_CUT_HASH = re.compile(r"-cut-([0-9a-f]{8,64})\.mp4$")


def violations(ctx: Context, project_id: str) -> list[str]:
    found: list[str] = []
    state = ctx.projects.load(project_id)
    for scene in state.scenes:
        # Invariant 1: completed exactly when every output its stages need is recorded and
        # its object exists (original and working always; lip-synced when lipSync).
        outputs = {stage.name: stage.output(scene) for stage in needed_stages(scene)}
        has_all = all(key is not None and ctx.clips.exists(key) for key in outputs.values())
        if (scene.status == SceneStatus.COMPLETED) != has_all:
            found.append(f"scene {scene.sequence}: status {scene.status}, outputs {outputs!r}")
        found += [
            f"scene {scene.sequence}: {stage.fields.output} {key!r} {why}"
            for stage in needed_stages(scene)
            if (key := stage.output(scene)) is not None
            and (why := _not_made_from_input(stage, scene, key))
        ]
        if scene.status == SceneStatus.FAILED and not scene.last_error:
            found.append(f"scene {scene.sequence}: failed without lastError")
    project = state.project
    committed = project.committed_cost_micros
    if project.budget_micros is not None and committed > project.budget_micros:
        found.append(f"committed {committed} micros over the budget of {project.budget_micros}")
    if project.active_run_id is None:
        cost = sum(s.cost_micros for s in state.scenes)
        if committed != cost:
            found.append(f"committed {committed} micros but the scenes cost {cost}")
        counters = Counters.of(s.status for s in state.scenes)
        if (project.completed_scenes, project.failed_scenes) != (
            counters.completed_scenes,
            counters.failed_scenes,
        ):
            found.append(
                f"counters {project.completed_scenes}/{project.failed_scenes} but scenes say "
                f"{counters.completed_scenes}/{counters.failed_scenes}"
            )
        if project.planned and project.scene_count != counters.scene_count:
            found.append(f"sceneCount {project.scene_count} but {counters.scene_count} scenes")
        found += _status_violations(project, counters)
    found += _final_video_violations(ctx, state)
    return found


def _not_made_from_input(stage: Stage, scene: SceneRecord, key: str) -> str | None:
    """Invariant 1's "conditioned on the input it was made from", read in the keys: a paid
    stage's output is its recorded operation's (when one is recorded), the cut's is a cut of
    the recorded original (its key names the original's operation). None when it is; else why
    not. The cut's inputs hash is not recomputed: a clip cut before a change of output format
    stays the scene's (the assembly cuts it again)."""
    operation = stage.operation(scene)
    if stage.paid:
        if operation is None:
            return None
        made = stage.operation_output(scene.project_id, scene.sequence, operation)
        return None if key == made else f"is not operation {operation!r}'s output {made!r}"
    if stage.requires is None:
        return None
    source: str | None = scene.value(stage.requires)
    if source is None:
        return f"recorded without its input {stage.requires}"
    hashed = _CUT_HASH.search(key)
    if hashed is None or key != working_key(
        scene.project_id, scene.sequence, source, hashed.group(1)
    ):
        return f"is not made from {stage.requires} {source!r}"
    return None


def _status_violations(project: ProjectRecord, counters: Counters) -> list[str]:
    """Invariant 5 with no run active, as docs/DESIGN.md states it: `completed` iff it has
    scenes, all completed, and the final video recorded; `failed` iff planning failed
    (`lastError` says why) or nothing is open and a scene failed; otherwise `pending`."""
    status = project.status
    all_completed = bool(counters.scene_count) and (
        counters.completed_scenes == counters.scene_count
    )
    if (status == ProjectStatus.COMPLETED) != (
        all_completed and project.final_video_key is not None
    ):
        return [f"project status {status}, {counters} final video {project.final_video_key!r}"]
    scenes_failed = counters.open_scenes == 0 and counters.failed_scenes > 0
    planning_failed = not project.planned and bool(project.last_error)
    if status == ProjectStatus.FAILED and not (planning_failed or scenes_failed):
        if not project.planned:
            return ["project failed before it was planned, without lastError saying why"]
        return [f"project failed but its scenes are {counters}"]
    if status != ProjectStatus.FAILED and scenes_failed:
        return [f"project status {status}, but nothing is open and a scene failed"]
    if status not in (ProjectStatus.COMPLETED, ProjectStatus.FAILED, ProjectStatus.PENDING):
        return [f"project status {status} with no run active"]
    return []


def _final_video_violations(ctx: Context, state: ProjectState) -> list[str]:
    """Invariants 5 and 8: a completed project has its final video, stored, and any recorded
    final video is the one the current scenes' chosen clips make."""
    project = state.project
    key = project.final_video_key
    if key is None:
        if project.status == ProjectStatus.COMPLETED:
            return ["project completed without finalVideoS3Key"]
        return []
    found = []
    if not ctx.clips.exists(key):
        found.append(f"finalVideoS3Key {key!r} has no object")
    expected = final_key(state, output_format(ctx.settings))
    if key != expected:
        found.append(f"finalVideoS3Key {key!r} but the current scenes make {expected!r}")
    return found
