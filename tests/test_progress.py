"""What `mvpipe run --wait` shows per stage, from a project view alone."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime

import pytest

from mvpipe.cli.progress import (
    StageCount,
    StageProgress,
    counted,
    money,
    stage_counts,
    working,
)
from mvpipe.models import ProjectStatus, ProjectView, SceneStatus, SceneView


def scene(
    n: int, *, original: bool, working: bool, lip_sync: bool = False, synced: bool = False
) -> SceneView:
    return SceneView(
        sequence=n,
        prompt="p",
        negative_prompt=None,
        duration_seconds=2,
        start_seconds=None,
        end_seconds=None,
        status=SceneStatus.COMPLETED if working else SceneStatus.PROCESSING,
        original_video_clip_s3_key="o" if original else None,
        working_video_clip_s3_key="w" if working else None,
        lip_synced_video_clip_s3_key="l" if synced else None,
        lip_sync=lip_sync,
        attempts=1,
        lip_sync_attempts=0,
        last_error=None,
        provider_operation_id=None,
        lip_sync_operation_id=None,
        cost_usd=0.0,
        completed_at=None,
    )


def view(scenes: list[SceneView], final: str | None = None) -> ProjectView:
    now = datetime.now(UTC)
    return ProjectView(
        project_id=str(uuid.uuid4()),
        title="t",
        concept="c",
        provider="local",
        status=ProjectStatus.PROCESSING,
        scene_count=len(scenes),
        completed_scenes=0,
        failed_scenes=0,
        last_error=None,
        created_at=now,
        updated_at=now,
        song_s3_key=None,
        song_seconds=None,
        timeline_s3_key=None,
        lip_sync=False,
        final_video_s3_key=final,
        budget_usd=None,
        committed_cost_usd=0.0,
        scenes=scenes,
    )


def test_each_stage_counts_its_outputs() -> None:
    scenes = [
        scene(1, original=True, working=True),
        scene(2, original=True, working=False, lip_sync=True),
        scene(3, original=False, working=False, lip_sync=True),
    ]
    assert stage_counts(view(scenes)) == [
        StageCount("generated", 2, 3),
        StageCount("cut", 1, 3),
        StageCount("lip-synced", 0, 2),
        StageCount("assembled", 0, 1),
    ]
    done = [scene(1, original=True, working=True)]
    assert stage_counts(view(done, final="k"))[-1] == StageCount("assembled", 1, 1)
    assert [c.stage for c in stage_counts(view(done))] == ["generated", "cut", "assembled"]


def test_the_bars_are_printed_when_not_on_a_terminal() -> None:
    out = io.StringIO()
    progress = StageProgress(out)
    progress.update(view([scene(1, original=True, working=False)]))
    progress.update(view([scene(1, original=True, working=True)], final="k"))
    progress.close()
    lines = {line.split()[0]: line for line in out.getvalue().splitlines() if line.strip()}
    assert "1/1" in lines["generated"] and "1/1" in lines["cut"] and "1/1" in lines["assembled"]


def test_the_money_is_shown_against_the_budget() -> None:
    out = io.StringIO()
    progress = StageProgress(out)
    spent = view([scene(1, original=True, working=False)])
    progress.update(spent.model_copy(update={"committed_cost_usd": 12.5, "budget_usd": 40.0}))
    progress.close()
    assert "cost $12.50 of $40.00" in out.getvalue()
    assert money(spent) == "$0.00 committed, no budget"


def test_text_a_spinner_or_a_bar_is_given_is_shown_as_written(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given standard error taken for a terminal, and text that rich's markup would read as
    # tags and an emoji's name (a user's input quoted)
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    written = "[/x] [bold]b[/bold] :smile:"
    # When a spinner and a bar show it
    with working(f"fetching {written}", shown=True):
        pass
    with counted(f"swept {written}", shown=True) as tells:
        assert tells is not None
        tells[0](1, 2)
    # Then each shows it as written
    shown = capsys.readouterr().err
    assert f"fetching {written}" in shown and f"swept {written}" in shown, shown
