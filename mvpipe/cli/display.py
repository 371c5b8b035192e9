"""A project as the CLI shows it: its totals, then one row per scene."""

from __future__ import annotations

from mvpipe.models import ProjectView, SceneView, printable


def print_summary(view: ProjectView) -> None:
    from rich.console import Console
    from rich.table import Table

    from mvpipe.cli.progress import money

    # Titles and errors are shown as written: no markup, no `:name:` made an emoji.
    console = Console(highlight=False, markup=False, emoji=False)
    if not console.is_terminal:
        console.width = 240  # a pipe or a log: keep every key on one line
    prefix = f"projects/{view.project_id}/"

    def short(key: str | None) -> str:
        return "-" if key is None else key.removeprefix(prefix)

    console.print(f"project   {view.project_id}  {view.title!r}")
    # Not planned yet: the count asked for, as `mvpipe projects` shows it; `?` for a song's,
    # which its beats decide.
    planned = view.scene_count if view.scenes else view.requested_scene_count or "?"
    console.print(
        f"status    {view.status}   scenes {planned}   completed {view.completed_scenes}"
        f"   failed {view.failed_scenes}   provider {view.provider}"
    )
    console.print(f"cost      {money(view)}")
    if view.song_s3_key:
        seconds = f"  ({view.song_seconds:.2f} s)" if view.song_seconds else ""
        console.print(f"song      {view.song_s3_key}{seconds}")
    console.print(f"final     {view.final_video_s3_key or '-'}")
    # An error's text comes from providers: its control characters never reach the terminal,
    # whoever wrote the record.
    if view.last_error:
        console.print(f"error     {printable(view.last_error, one_line=True)}")
    if not view.scenes:
        return
    table = Table(box=None, pad_edge=False)
    for name, justify in (
        ("seq", "right"),
        ("slot (s)", "left"),
        ("status", "left"),
        ("tries", "right"),  # generations, + lip-syncs where the scene has one
        ("original", "left"),
        ("working", "left"),
        ("lip-synced", "left"),
        ("last error", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for scene in view.scenes:
        slot = "-"
        if scene.start_seconds is not None and scene.end_seconds is not None:
            slot = f"{scene.start_seconds:.3f}..{scene.end_seconds:.3f}"
        lip = short(scene.lip_synced_video_clip_s3_key) if scene.lip_sync else "(none)"
        table.add_row(
            str(scene.sequence),
            slot,
            str(scene.status),
            tries(scene),
            short(scene.original_video_clip_s3_key),
            short(scene.working_video_clip_s3_key),
            lip,
            printable(scene.last_error or "", one_line=True),
        )
    console.print(table)


def tries(scene: SceneView) -> str:
    """A scene's submissions: its generations, then `+` its lip-syncs where it is lip-synced."""
    if scene.lip_sync:
        return f"{scene.attempts}+{scene.lip_sync_attempts}"
    return str(scene.attempts)
