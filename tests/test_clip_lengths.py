"""A scene's length on the real stack (moto server, the providers' real SDKs against the
stand-in): the length stored is the one its price is reserved on, the one the estimate counts
and the one the provider is asked for, so what is reserved is what is billed (invariant 9)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator

import pytest

from mvpipe import api
from mvpipe.deps import Context, get_context, reset_context
from mvpipe.devstack.localstack import LocalStack
from mvpipe.errors import InvalidInput
from mvpipe.models import ProjectSpec, ProjectStatus, SceneSpec
from mvpipe.pipeline.generate import SceneJob
from mvpipe.pipeline.plan import planned_specs
from mvpipe.pipeline.steps import Next
from mvpipe.store.claim_outcomes import Claim
from mvpipe.store.table import project_pk, scene_sk
from tests.conftest import Workers
from tests.helpers import assert_invariants, new_project
from tests.standins import ProviderStandIn, configured_standin
from tests.test_store import claimed

pytestmark = pytest.mark.integration

StartWorkers = Callable[..., Workers]

#: Each provider's video model, and its dollars per second: a clip's price follows its length.
MODELS = {"veo": "veo-3.0-generate-001", "replicate": "minimax/video-01"}
PRICES = {"veo": 0.5, "replicate": 0.1}


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch, stack: LocalStack) -> Iterator[ProviderStandIn]:
    with configured_standin(
        monkeypatch,
        lambda url: {
            "MVPIPE_GENAI_BASE_URL": url,
            "MVPIPE_REPLICATE_BASE_URL": url,
            "MVPIPE_VEO_MODEL": MODELS["veo"],
            "MVPIPE_REPLICATE_MODEL": MODELS["replicate"],
            "MVPIPE_PRICES": json.dumps({f"{p}:{MODELS[p]}": usd for p, usd in PRICES.items()}),
            "MVPIPE_REPLICATE_DURATIONS": "5,10",
            "MVPIPE_PROVIDER_CONCURRENCY": "100",
        },
    ) as server:
        yield server


def asked_of(standin: ProviderStandIn, provider: str) -> list[int]:
    """The clip length of every create the provider accepted, in order."""
    if provider == "veo":
        return [body["parameters"]["durationSeconds"] for body in standin.veo_bodies]
    return [p["input"]["duration"] for p in standin.predictions.values()]


def written(ctx: Context) -> tuple[int, set[str]]:
    return ctx.table.model.count(), {o.key for o in ctx.clips.list("projects/")}


@pytest.mark.parametrize(
    ("provider", "wanted", "stored"),
    [
        # Veo makes 4, 6 and 8 s; a scene given no length is made at 8 s
        ("veo", [4, 6, 8, None], [4, 6, 8, 8]),
        # this Replicate model makes 5 and 10 s (MVPIPE_REPLICATE_DURATIONS)
        ("replicate", [5, 10, None], [5, 10, 10]),
    ],
)
def test_the_price_reserved_is_the_price_of_the_clip_asked_for(
    standin: ProviderStandIn, provider: str, wanted: list[int | None], stored: list[int]
) -> None:
    # Given hand-written scenes at the provider's lengths, or at none
    scenes = [
        {"prompt": f"shot {n}", **({"duration_seconds": s} if s is not None else {})}
        for n, s in enumerate(wanted, start=1)
    ]
    project_id = api.create_project("Lengths", "x", scenes=scenes, provider=provider)

    # Then each is stored at its length (the provider's default length when it has none), and
    # the estimate is the price of those lengths
    view = api.get_project(project_id)
    assert [s.duration_seconds for s in view.scenes] == stored
    per_second = round(PRICES[provider] * 1_000_000)
    expected = [per_second * seconds for seconds in stored]
    assert api.estimate_cost(project_id) == pytest.approx(sum(expected) / 1_000_000)

    # When every scene is submitted
    ctx = get_context()
    run_id = str(uuid.uuid4())
    ctx.projects.win_run(project_id, run_id, ProjectStatus.PROCESSING)
    for sequence in range(1, len(scenes) + 1):
        step = SceneJob(ctx, project_id, sequence, run_id, provider).step()
        assert step.next == Next.POLL, step.outcome

    # Then the provider was asked for exactly the stored lengths, and what each claim reserved
    # (on the scene and the project) is the price of the clip asked for
    asked = asked_of(standin, provider)
    assert asked == stored
    state = ctx.projects.load(project_id)
    assert [s.cost_micros for s in state.scenes] == [per_second * s for s in asked]
    assert state.project.committed_cost_micros == sum(expected)


@pytest.mark.parametrize(
    ("provider", "seconds", "allowed"),
    [
        # shorter than the shortest, between two lengths, longer than the longest
        ("veo", 1, "4, 6, 8"),
        ("veo", 5, "4, 6, 8"),
        ("veo", 9, "4, 6, 8"),
        ("replicate", 6, "5, 10"),
        ("replicate", 11, "5, 10"),
    ],
)
def test_a_length_the_provider_does_not_make_is_refused_and_nothing_is_written(
    standin: ProviderStandIn, provider: str, seconds: int, allowed: str
) -> None:
    ctx = get_context()
    before = written(ctx)
    scenes = [
        {"prompt": "fits", "duration_seconds": 10 if provider == "replicate" else 4},
        {"prompt": "no such clip", "duration_seconds": seconds},
    ]
    message = rf"scene 2: {provider} makes no {seconds} s clip; its clip lengths are {allowed} s"
    with pytest.raises(InvalidInput, match=message):
        api.create_project("Unmade", "x", scenes=scenes, provider=provider)
    assert written(ctx) == before


def test_a_planned_scene_and_the_unplanned_estimate_use_the_providers_lengths(
    standin: ProviderStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a Replicate model that makes 5 and 6 s, shorter than a scene's default 8 s
    monkeypatch.setenv("MVPIPE_REPLICATE_DURATIONS", "5,6")
    reset_context()
    ctx = get_context()
    project_id = api.create_project("Planned", "x", scene_count=2, provider="replicate")
    # Then the estimate before planning prices its longest clip for each scene
    assert api.estimate_cost(project_id) == pytest.approx(2 * 6 * PRICES["replicate"])
    # and the planner's 8 s scenes are planned at 6 s, the length reserved and asked for
    specs = planned_specs(ctx, ctx.projects.get(project_id), str(uuid.uuid4()))
    assert [s.duration_seconds for s in specs] == [6, 6]


@pytest.mark.parametrize(
    ("provider", "durations", "stored", "made"),
    [
        # every Replicate project without a song was stored at the old 8 s default
        ("replicate", "6", 8, 6),
        # a Veo scene written by hand at a length Veo does not make
        ("veo", "5,10", 5, 6),
        # the allowed lengths changed since the scene was stored: the longest is made
        ("replicate", "5,10", 12, 10),
        # stored with no length at all (0): the default length
        ("veo", "5,10", 0, 8),
    ],
)
def test_a_scene_stored_at_a_length_the_provider_does_not_make_runs_at_one_it_makes(
    standin: ProviderStandIn,
    start_workers: StartWorkers,
    monkeypatch: pytest.MonkeyPatch,
    provider: str,
    durations: str,
    stored: int,
    made: int,
) -> None:
    # Given a scene stored as a project was written before lengths were fitted (through the
    # store, at a length the workers' provider does not make)
    monkeypatch.setenv("MVPIPE_REPLICATE_DURATIONS", durations)
    start_workers(env={"MVPIPE_POLL_SECONDS": "0.1"})
    ctx = get_context()
    project_id = str(uuid.uuid4())
    scenes = (SceneSpec(prompt="old", duration_seconds=stored or 4),)
    spec = ProjectSpec(
        title="Old", concept="x", provider=provider, requested_scene_count=1, scenes=scenes
    )
    ctx.projects.create(project_id, spec)
    if not stored:
        forget_length(ctx, project_id, 1)
    assert api.get_project(project_id).scenes[0].duration_seconds == stored
    # and the estimate prices the length it will be made at
    assert api.estimate_cost(project_id) == pytest.approx(PRICES[provider] * made)

    # When it runs
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=120)

    # Then it completes, made at a length the provider makes: stored, priced (reserved on the
    # scene and the project) and asked at that length, in one submission
    assert view.status == ProjectStatus.COMPLETED, [s.last_error for s in view.scenes]
    assert asked_of(standin, provider) == [made]
    assert view.scenes[0].duration_seconds == made and view.scenes[0].attempts == 1
    price = round(PRICES[provider] * 1_000_000) * made
    state = ctx.projects.load(project_id)
    assert [s.cost_micros for s in state.scenes] == [price]
    assert state.project.committed_cost_micros == price
    assert_invariants(project_id)


def forget_length(ctx: Context, project_id: str, sequence: int) -> None:
    """Remove a stored scene's `durationSeconds`, as the oldest scenes were written."""
    m = ctx.table.model
    m(project_pk(project_id), scene_sk(sequence)).update(actions=[m.duration_seconds.remove()])


def test_a_stored_length_is_refitted_only_while_the_generation_waits_for_a_submitter(
    stack: LocalStack,
) -> None:
    # Given scenes stored at 5 s, one under a live lease (another worker is submitting it at
    # the length it read), one with its clip made, one with no length at all
    ctx = get_context()
    project_id, run_id = new_project(ctx, 4)
    for sequence in range(1, 5):
        assert ctx.scenes.refit_duration(project_id, sequence, old=8, new=5) is not None
    assert claimed(ctx, project_id, run_id, "theirs", 2).outcome == Claim.WON
    m = ctx.table.model
    made = m(project_pk(project_id), scene_sk(3))
    made.update(actions=[m.original_clip_key.set(f"projects/{project_id}/scenes/3/clip.mp4")])
    forget_length(ctx, project_id, 4)

    def refit(sequence: int, old: int) -> int:
        scene = ctx.scenes.refit_duration(project_id, sequence, old=old, new=6)
        assert scene is not None
        return scene.duration_seconds

    # When a worker under other allowed lengths refits them, only the waiting ones move: the
    # leased and the made scene keep the length their job was (or is being) asked at
    assert [refit(1, 5), refit(2, 5), refit(3, 5), refit(4, 0)] == [6, 5, 5, 6]
    # and a refit from a length the scene no longer holds changes nothing
    assert refit(1, 5) == 6 and refit(4, 0) == 6
    assert ctx.scenes.refit_duration(project_id, 9, old=5, new=6) is None  # no such scene
