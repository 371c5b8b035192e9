"""What a project has made, read back for the user: the final video or one scene's clip."""

from __future__ import annotations

from pathlib import Path

from mvpipe.deps import Context
from mvpipe.errors import InvalidInput, NotFound
from mvpipe.media.files import user_path, written_atomically
from mvpipe.models import ProjectView

#: What can be fetched: the final video, or one scene's clip of a stage.
STAGES = ("final", "original", "working", "lipsync")


def download_name(project_id: str, sequence: int | None, stage: str) -> str:
    """`{project}-music-video.mp4`, or `{project}-scene-{NNN}-{stage}.mp4` for a scene's clip
    (arguments already validated)."""
    if sequence is None:
        return f"{project_id}-music-video.mp4"
    return f"{project_id}-scene-{sequence:03d}-{stage}.mp4"


def download_target(dest: object, project_id: str, sequence: int | None, stage: str) -> Path:
    """Where a download to `dest` goes: `dest` itself, or the output's `download_name` in it
    when it is a directory, `~` expanded; `InvalidInput` when there is no directory to write it
    in, or no file could have the path."""
    if not isinstance(dest, str | Path) or not str(dest).strip():
        raise InvalidInput("dest must be a file or directory path")
    target = user_path(dest, "cannot write", expand=True)
    if target.is_dir():
        target = target / download_name(project_id, sequence, stage)
    if not target.parent.is_dir():
        raise InvalidInput(f"cannot write {target}: {target.parent} is not a directory")
    return target


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
    """Write the output to `target`, whole or not at all, with the mode any new file of the
    user's gets (arguments already validated); `InvalidInput` when it cannot be written."""
    key = output_key(ctx.projects.load(project_id).view(), sequence, stage)
    if not ctx.clips.exists(key):
        raise NotFound(f"project {project_id} has no object for {key} (it was removed)")
    data = ctx.clips.read(key)
    try:
        with written_atomically(target, shared=True) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:  # a full disk, a read-only directory: the user's to fix
        raise InvalidInput(f"cannot write {target}: {exc.strerror or exc}") from None
    return target
