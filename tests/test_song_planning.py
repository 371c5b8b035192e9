"""Planning a song project: the song is analysed on the media queue, its timeline stored beside it,
and the planner writes one scene per slot, tiling the song on its beats."""

from __future__ import annotations

import hashlib
import itertools
import math
import time
import uuid
from collections.abc import Callable

import pytest

from mvpipe import api
from mvpipe.deps import get_context
from mvpipe.devstack.localstack import LocalStack
from mvpipe.errors import InvalidInput
from mvpipe.media.slots import Slot
from mvpipe.media.synth import SynthSong, synthesize_song
from mvpipe.media.timeline import Timeline
from mvpipe.models import ProjectStatus, SceneSpec
from mvpipe.pipeline.brief import assign_lyrics, lyric_lines, slot_briefs
from mvpipe.pipeline.plan import RunPlan, place_in_slots, plan_run
from mvpipe.pipeline.reconcile_scope import needs_regular_pass
from mvpipe.pipeline.timeline import ensure_timeline
from mvpipe.providers.base import Brief
from mvpipe.providers.local import LocalPlanner
from mvpipe.settings import Settings
from mvpipe.store.songs import timeline_key
from tests.conftest import Workers
from tests.helpers import assert_invariants

StartWorkers = Callable[..., Workers]

LYRICS = "Neon rain\nOn the glass\nWe run all night\nUntil the lights go out\nAnd start again"
FPS = 24
SLOT_MIN, SLOT_MAX = 2.0, 4.0
BEAT_TOLERANCE = 0.040


@pytest.fixture(scope="module")
def song() -> SynthSong:
    """14.3 s at 120 BPM, first beat at 0.25 s: long enough for several slots, quick to analyse."""
    return synthesize_song(seconds=14.3, bpm=120.0, offset=0.25, sections=2)


# -- the pure parts ---------------------------------------------------------------------------
def test_lyric_lines_are_the_concept_lines_or_its_sentences() -> None:
    assert lyric_lines(" a \n\n b\n") == ["a", "b"]
    assert lyric_lines("One. Two! Three? Four") == ["One.", "Two!", "Three?", "Four"]


def test_lyrics_are_spread_over_the_song_in_order() -> None:
    lines = [f"line {n}" for n in range(1, 7)]
    slots = [(0.0, 2.0), (2.0, 6.0), (6.0, 10.0), (10.0, 12.0)]
    assigned = assign_lyrics(lines, slots, 12.0)
    # Each line sounds 2 s; a line belongs to the slot its middle falls in.
    assert assigned == [("line 1",), ("line 2", "line 3"), ("line 4", "line 5"), ("line 6",)]
    # Fewer lines than slots: every slot still gets the line sounding at its middle.
    assert assign_lyrics(["a", "b"], slots, 12.0) == [("a",), ("a",), ("b",), ("b",)]
    assert assign_lyrics([], slots, 12.0) == [(), (), (), ()]


def test_each_scene_takes_its_slot_and_the_shortest_clip_that_covers_it() -> None:
    slots = [Slot(0, 0, 54, "A", FPS), Slot(1, 54, 150, "A", FPS), Slot(2, 150, 340, "B", FPS)]
    specs = [SceneSpec(prompt=f"p{n}", lip_sync=n == 2) for n in range(1, 4)]
    veo = place_in_slots(specs, slots, Settings().durations_for("veo"), lip_sync=True)
    assert [s.duration_seconds for s in veo] == [4, 4, 8]  # 2.25 s, 4.0 s, 7.92 s
    assert [(s.start_seconds, s.end_seconds) for s in veo] == [
        (0.0, 2.25),
        (2.25, 6.25),
        (6.25, 340 / FPS),
    ]
    assert [s.lip_sync for s in veo] == [False, True, False]
    local = place_in_slots(specs, slots, Settings().durations_for("local"), lip_sync=False)
    assert [s.duration_seconds for s in local] == [3, 4, 8]
    assert not any(s.lip_sync for s in local)  # the project did not ask for lip-sync


def test_the_local_planner_writes_one_scene_per_slot_with_its_lyrics() -> None:
    slots = [Slot(n, n * 72, (n + 1) * 72, "A" if n < 3 else "B", FPS) for n in range(6)]
    briefed = slot_briefs(slots, LYRICS, 18.0)
    brief = Brief(str(uuid.uuid4()), "Neon", LYRICS, 6, slots=briefed, lip_sync=True)
    specs = LocalPlanner().plan(brief)
    assert specs == LocalPlanner().plan(brief)  # deterministic
    assert len(specs) == 6
    # every lyric line lands in some slot (one sung across two lands in both): the check
    # below covers all of them
    assert {line for slot in briefed for line in slot.lyrics} == set(LYRICS.splitlines())
    for spec, slot in zip(specs, briefed, strict=True):
        assert all(line in spec.prompt for line in slot.lyrics)
        assert f"section {slot.section}" in spec.prompt
    assert [s.lip_sync for s in specs] == [False, True, False, False, True, False]
    unsynced = LocalPlanner().plan(Brief("p", "Neon", LYRICS, 6, slots=briefed))
    assert not any(s.lip_sync for s in unsynced)


# -- on the real stack ------------------------------------------------------------------------
@pytest.mark.integration
def test_a_project_without_a_song_plans_as_before(stack: LocalStack) -> None:
    ctx = get_context()
    project_id = api.create_project("Plain", "City lights.\nRain on glass.", scene_count=3)
    run_id = str(uuid.uuid4())
    assert ctx.projects.win_run(project_id, run_id, ProjectStatus.GENERATING_SCENES) == run_id
    plan = plan_run(ctx, project_id, run_id)
    assert plan == RunPlan("local", [1, 2, 3], frozenset({1, 2, 3}))  # all three ask a slot
    view = api.get_project(project_id)
    assert view.scene_count == 3 and view.timeline_s3_key is None and view.song_s3_key is None
    assert [s.prompt for s in view.scenes] == [
        "Plain - scene 1 of 3: City lights",
        "Plain - scene 2 of 3: Rain on glass",
        "Plain - scene 3 of 3: City lights",
    ]
    for scene in view.scenes:
        assert scene.duration_seconds == 8 and scene.negative_prompt
        assert scene.start_seconds is None and scene.end_seconds is None
        assert scene.lip_sync is False
    assert ctx.songs.objects.list(f"projects/{project_id}/song/") == []


@pytest.mark.integration
def test_the_timeline_is_recorded_once_for_its_song(
    stack: LocalStack, broker_cleared: None, song: SynthSong
) -> None:
    ctx = get_context()
    project_id = api.create_project("Once", LYRICS, song=song.wav)
    project = ctx.projects.get(project_id)
    first = ensure_timeline(ctx, project)
    recorded = ctx.projects.get(project_id).timeline_key
    assert recorded == timeline_key(project_id, hashlib.sha256(song.wav).hexdigest())
    # A duplicate analysis (it read METADATA before the first recorded) finds its own key there
    assert ensure_timeline(ctx, project) == first
    assert ctx.projects.record_timeline(project_id, project.song_key or "", recorded)
    # Another timeline, or a timeline of another song, is refused and changes nothing
    assert not ctx.projects.record_timeline(project_id, project.song_key or "", recorded + "x")
    assert not ctx.projects.record_timeline(project_id, "projects/x/song/y.wav", recorded)
    assert ctx.projects.get(project_id).timeline_key == recorded
    assert Timeline.from_json(ctx.songs.read(recorded)) == first
    # And a project analysed ahead of its run reads as untouched since its creation: reconcile's
    # regular passes leave it to the sweep, as any project created and never run
    analysed = ctx.projects.get(project_id)
    assert analysed.updated_at == analysed.created_at
    assert not needs_regular_pass(analysed, time.time(), 3600)


@pytest.mark.integration
def test_a_damaged_song_object_fails_planning_and_writes_no_timeline(
    stack: LocalStack, broker_cleared: None, song: SynthSong
) -> None:
    ctx = get_context()
    project_id = api.create_project("Damaged", LYRICS, song=song.wav)
    project = ctx.projects.get(project_id)
    ctx.songs.objects.put(project.song_key or "", song.wav[:-1000], content_type="audio/wav")
    with pytest.raises(InvalidInput, match="does not match"):
        ensure_timeline(ctx, project)
    assert ctx.projects.get(project_id).timeline_key is None
    assert [o.key for o in ctx.songs.objects.list(f"projects/{project_id}/song/")] == [
        project.song_key
    ]


@pytest.mark.integration
def test_scenes_given_by_a_user_cannot_claim_slots_or_lip_sync(stack: LocalStack) -> None:
    ctx = get_context()
    before = ctx.table.model.count()
    for scene in (
        {"prompt": "x", "lip_sync": True},
        {"prompt": "x", "start_seconds": 0.0, "end_seconds": 2.0},
        {"prompt": "x", "start_seconds": 1.0},
        {"prompt": "x", "start_seconds": 2.0, "end_seconds": 1.0},
    ):
        with pytest.raises(InvalidInput):
            api.create_project("User", "x", scenes=[scene])
    assert ctx.table.model.count() == before


@pytest.mark.integration
def test_a_song_project_is_planned_on_its_beats(
    start_workers: StartWorkers, song: SynthSong
) -> None:
    # Given a media-only worker (warm) and a worker for planning and video, like the Procfile's
    # (every worker makes media in the same output format)
    media = start_workers(concurrency=1, queues="mvpipe.media", warm_media="1", output_fps=str(FPS))
    main = start_workers(
        queues="mvpipe.plan,mvpipe.video", slot_max_seconds=str(SLOT_MAX), output_fps=str(FPS)
    )
    project_id = api.create_project("Neon", LYRICS, song=song.wav, lip_sync=True)
    assert api.get_project(project_id).scene_count == 0  # the song decides the scenes

    # When the project runs
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=120)

    # Then the song was analysed on the media queue (at creation, or by the run's planning if
    # it came first: both there), in a process warmed at start
    assert view.status == ProjectStatus.COMPLETED, view.last_error
    assert "song analysis warmed" in media.service.log_text()
    assert f"analysed song project={project_id} " in media.service.log_text()
    assert f"analysed song project={project_id} " not in main.service.log_text()
    assert "song analysis warmed" not in main.service.log_text()

    # and its timeline is stored beside the song, under the song's hash, and parses
    ctx = get_context()
    song_hash = hashlib.sha256(song.wav).hexdigest()
    assert view.timeline_s3_key == timeline_key(project_id, song_hash)
    timeline = Timeline.from_json(ctx.songs.read(view.timeline_s3_key))
    assert abs(timeline.tempo - 120.0) < 1.0

    # and the scenes tile the song exactly, on the frame grid
    scenes = view.scenes
    assert view.scene_count == len(scenes) >= 4
    assert [s.sequence for s in scenes] == list(range(1, len(scenes) + 1))
    song_frames = round((view.song_seconds or 0) * FPS)
    assert scenes[0].start_seconds == 0.0
    for before, after in itertools.pairwise(scenes):
        assert before.end_seconds == after.start_seconds
    assert scenes[-1].end_seconds == song_frames / FPS
    for scene in scenes:
        start, end = scene.start_seconds or 0.0, scene.end_seconds or 0.0
        assert float(start * FPS).is_integer() and float(end * FPS).is_integer()
        # each slot between the minimum and the longest allowed, its clip the shortest covering
        assert SLOT_MIN - 1e-9 <= end - start <= SLOT_MAX + 1e-9
        assert scene.duration_seconds == math.ceil(end - start - 1e-9)

    # and every inner boundary is on a true beat of the song
    for scene in scenes[1:]:
        start = scene.start_seconds or 0.0
        nearest = min(song.beats, key=lambda beat: abs(beat - start))
        assert abs(nearest - start) <= BEAT_TOLERANCE, (start, nearest)

    # and the planner marked every third scene for lip-sync, as the project asked
    assert [s.sequence for s in scenes if s.lip_sync] == [
        n for n in range(1, len(scenes) + 1) if n % 3 == 2
    ]
    assert_invariants(project_id)


def test_slots_are_capped_by_the_provider_and_the_optional_maximum() -> None:
    assert Settings().slot_max_seconds_for("veo") == 8.0
    assert Settings().slot_max_seconds_for("local") == 30.0
    assert Settings(slot_max_seconds=4).slot_max_seconds_for("local") == 4.0
    assert Settings(slot_max_seconds=12).slot_max_seconds_for("veo") == 8.0
    with pytest.raises(ValueError, match="MVPIPE_SLOT_MAX_SECONDS"):
        Settings(slot_min_seconds=3, slot_max_seconds=2)
