"""The listing's merge of the status index's queries, one per status: each project once; its
scene counts as `mvpipe status` shows them."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from mvpipe.cli.display import print_summary
from mvpipe.models import ProjectStatus
from mvpipe.pipeline.listing import merged, summary
from mvpipe.store.records import ProjectRecord, ProjectState

PENDING = ProjectRecord(
    project_id="p",
    title="t",
    concept="c",
    provider="local",
    status=ProjectStatus.PENDING,
    requested_scene_count=1,
    scene_count=None,
    completed_scenes=0,
    failed_scenes=0,
    last_error=None,
    active_run_id=None,
    created_at="2026-01-01T00:00:01.000000+00:00",
    updated_at="2026-01-01T00:00:01.000000+00:00",
)


def test_a_project_read_under_two_statuses_is_listed_once_as_last_read() -> None:
    # Given a project whose status changed between the pending query and the processing one
    running = replace(
        PENDING, status=ProjectStatus.PROCESSING, updated_at="2026-01-01T00:00:05.000000+00:00"
    )
    older = replace(PENDING, project_id="o", created_at="2026-01-01T00:00:00.000000+00:00")
    newer = replace(PENDING, project_id="n", created_at="2026-01-01T00:00:02.000000+00:00")
    for found in ([older, PENDING, newer, running], [running, newer, PENDING, older]):
        # Then it is listed once, with its newest record, and the order is by creation
        listed = merged(found, 10)
        assert [(p.project_id, p.status) for p in listed] == [
            ("o", ProjectStatus.PENDING),
            ("p", ProjectStatus.PROCESSING),
            ("n", ProjectStatus.PENDING),
        ]
        # and it takes one place of the limit, not two
        assert [p.project_id for p in merged(found, 2)] == ["p", "n"]


def test_status_and_the_listing_agree_on_an_unplanned_projects_scene_count(
    capsys: pytest.CaptureFixture[str],
) -> None:
    song = replace(PENDING, requested_scene_count=0, song_key="projects/p/song/0123.wav")
    # Given a project without a song that asked for 4 scenes, and a song's, neither planned
    for record, shown in ((replace(PENDING, requested_scene_count=4), "4"), (song, "?")):
        # When `mvpipe status` shows it
        print_summary(ProjectState(record, ()).view())
        # Then it says the count `mvpipe projects` says: the one asked for, or `?` where a
        # song's beats will decide it
        assert re.search(rf"scenes {re.escape(shown)}\s", capsys.readouterr().out)
        listed = summary(record).scene_count
        assert shown == ("?" if listed is None else str(listed))
