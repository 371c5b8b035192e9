"""The task graph end to end: real redis-server, moto server and Celery worker processes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mvpipe import api
from mvpipe.deps import get_context
from mvpipe.models import ProjectStatus, SceneStatus
from mvpipe.providers.render import probe_clip
from tests.conftest import Workers
from tests.helpers import assert_invariants, generations_per_scene, ledger

pytestmark = pytest.mark.integration

StartWorkers = Callable[..., Workers]


def test_a_twelve_scene_project_completes_with_playable_clips(start_workers: StartWorkers) -> None:
    workers = start_workers()
    project_id = api.create_project("Neon Rain", "City lights.\nRain on glass.", scene_count=12)
    result = api.run_project(project_id)
    view = api.wait_project(project_id, timeout=180)
    assert view.status == ProjectStatus.COMPLETED
    assert (view.scene_count, view.completed_scenes, view.failed_scenes) == (12, 12, 0)
    assert result.get(timeout=30)["status"] == "completed"  # the run's AsyncResult is finalize's
    clips = get_context().clips
    for scene in view.scenes:
        assert scene.status == SceneStatus.COMPLETED
        assert scene.original_video_clip_s3_key is not None
        codec, frames, seconds = probe_clip(clips.read(scene.original_video_clip_s3_key))
        assert codec == "h264" and frames > 1 and seconds > 0
    assert generations_per_scene(workers.ledger, project_id) == {n: 1 for n in range(1, 13)}
    assert_invariants(project_id)

    # Running it again pays for nothing and changes no clip.
    keys = [s.original_video_clip_s3_key for s in view.scenes]
    api.run_project(project_id).get(timeout=60)
    again = api.wait_project(project_id, timeout=60)
    assert [s.original_video_clip_s3_key for s in again.scenes] == keys
    assert len(ledger(workers.ledger, project_id)) == 12
    assert again.status == ProjectStatus.COMPLETED
