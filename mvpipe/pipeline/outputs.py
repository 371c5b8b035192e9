"""What a project has made, read back for the user: the final video or one scene's clip."""

from __future__ import annotations

from pathlib import Path

from mvpipe.deps import Context
from mvpipe.errors import NotFound
from mvpipe.media.files import written_atomically
from mvpipe.models import ProjectView

#: What can be fetched: the final video, or one scene's clip of a stage.
STAGES = ("final", "original", "working", "lipsync")


def output_key(view: ProjectView, sequence: int | None, stage: str) -> str:
    """The S3 key of the final video (`sequence` None) or of scene `sequence`'s `stage` clip;
    NotFound when the project has none (yet)."""
    project_id = view.project_id
    if sequence is None:
        key = view.final_video_s3_key
        what = f"project {project_id} has no final video yet"
    else:
        scene = next((s for s in view.scenes if s.sequence == sequence), None)
        if scene is None:
            raise NotFound(f"project {project_id} has no scene {sequence}")
        key = {
            "original": scene.original_video_clip_s3_key,
            "working": scene.working_video_clip_s3_key,
            "lipsync": scene.lip_synced_video_clip_s3_key,
        }[stage]
        what = f"scene {sequence} of project {project_id} has no {stage} clip"
    if key is None:
        raise NotFound(what)
    return key


def download(ctx: Context, project_id: str, target: Path, sequence: int | None, stage: str) -> Path:
    """Write the output to `target`, whole or not at all (arguments already validated)."""
    key = output_key(ctx.projects.load(project_id).view(), sequence, stage)
    if not ctx.clips.exists(key):
        raise NotFound(f"project {project_id} has no object for {key} (it was removed)")
    data = ctx.clips.read(key)
    with written_atomically(target) as tmp:
        tmp.write_bytes(data)
    return target
