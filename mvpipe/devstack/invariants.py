"""docs/DESIGN.md's invariants (1, 4, 5, 9) as a check anyone can run against a project.

Returns the violations found, empty when the project is sound. Read-only.
"""

from __future__ import annotations

from mvpipe.deps import Context
from mvpipe.models import ProjectStatus, SceneStatus
from mvpipe.pipeline.assemble import final_key
from mvpipe.pipeline.cut import output_format
from mvpipe.pipeline.stages import needed_stages
from mvpipe.states import Counters, project_status
from mvpipe.store.records import ProjectState


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
        expected = project_status(
            counters,
            planned=project.planned,
            run_active=False,
            planning_failed=project.status == ProjectStatus.FAILED and not project.planned,
            final_video=project.final_video_key is not None,
        )
        if project.status != expected:
            found.append(f"project status {project.status}, scenes say {expected}")
    found += _final_video_violations(ctx, state)
    return found


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
