"""Prices: the built-in table, `MVPIPE_PRICES` over it, and typed errors for anything malformed."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest

from mvpipe import api
from mvpipe.devstack.localstack import LocalStack
from mvpipe.errors import ConfigurationError
from mvpipe.media.slots import Slot
from mvpipe.models import SceneSpec, SceneStatus
from mvpipe.pipeline.cost import planned_estimate, synced_seconds
from mvpipe.pipeline.plan import place_in_slots
from mvpipe.pipeline.stage_provider import with_audio as with_audio_of
from mvpipe.pipeline.stages import CUT, GENERATE, LIPSYNC
from mvpipe.pricing import parse_prices, price_micros
from mvpipe.settings import Settings, get_settings
from mvpipe.store.records import SceneRecord
from tests.conftest import Workers
from tests.songs import make_song
from tests.standins import running_standin


def test_per_second_and_per_job_prices() -> None:
    prices = parse_prices('{"local": 0.25, "replicate:owner/model": {"per_job": 1.5}}')
    assert price_micros(prices, "local", "video", 4) == 1_000_000
    assert price_micros(prices, "local", "lipsync", 2.5) == 625_000
    # A Replicate model's version does not change its price.
    assert price_micros(prices, "replicate", "owner/model:abc123", 6) == 1_500_000
    assert price_micros(prices, "replicate", "owner/model", 1) == 1_500_000


def test_the_built_in_table_prices_veo_and_lipsync_and_local_is_free() -> None:
    prices = parse_prices("")
    assert price_micros(prices, "veo", "veo-3.0-generate-001", 8) == 8 * 400_000
    assert price_micros(prices, "veo", "veo-2.0-generate-001", 8, with_audio=False) == 8 * 500_000
    assert price_micros(prices, "replicate", "sync/lipsync-2", 2) > 0
    assert price_micros(prices, "local", "video", 8) == 0
    # A model entry wins over its provider's entry.
    both = parse_prices('{"local": 1, "local:lipsync": 2}')
    assert price_micros(both, "local", "video", 1) == 1_000_000
    assert price_micros(both, "local", "lipsync", 1) == 2_000_000


@pytest.mark.parametrize(
    ("raw", "model", "usd_per_second"),
    [
        # a user's provider-wide price replaces every built-in price of that provider
        ('{"veo": 0.75}', "veo-3.0-generate-001", 0.75),
        ('{"veo": 0.75}', "veo-2.0-generate-001", 0.75),
        ('{"replicate": 0.3}', "sync/lipsync-2", 0.3),
        ('{"replicate": 0.3}', "minimax/video-01:v1", 0.3),  # was $0.50 a job
        # and a user's model price beats it
        ('{"veo": 0.75, "veo:veo-3.0-generate-001": 0.5}', "veo-3.0-generate-001", 0.5),
        ('{"veo": 0.75, "veo:veo-3.0-generate-001": 0.5}', "veo-2.0-generate-001", 0.75),
        ('{"veo:veo-3.0-generate-001": 0.5}', "veo-3.0-generate-001", 0.5),
    ],
)
def test_a_users_price_beats_every_built_in_one(
    raw: str, model: str, usd_per_second: float
) -> None:
    # The budget reserves what the user priced (invariant 9), not a built-in price that is
    # more specific than the user's entry
    provider = "veo" if model.startswith("veo") else "replicate"
    prices = parse_prices(raw)
    micros = round(usd_per_second * 8 * 1_000_000)
    assert price_micros(prices, provider, model, 8) == micros
    # one number prices a second with or without audio alike
    assert price_micros(prices, provider, model, 8, with_audio=False) == micros


def test_a_users_provider_price_leaves_other_providers_built_in_prices() -> None:
    prices = parse_prices('{"veo": 0.75}')
    assert price_micros(prices, "replicate", "sync/lipsync-2", 2) == 2 * 50_000
    assert price_micros(prices, "replicate", "minimax/video-01", 6) == 500_000
    assert price_micros(prices, "local", "video", 8) == 0


def test_settings_parse_their_prices_once_and_again_when_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MVPIPE_PRICES", '{"veo": 0.75}')
    settings = Settings()
    assert settings.price_table is settings.price_table  # once, not per claim
    assert settings.video_price_micros("veo", 8) == 6_000_000
    assert settings.video_price_micros("veo", 8, with_audio=False) == 6_000_000
    cheaper = settings.model_copy(update={"prices": {"veo": 0.5}})
    assert cheaper.video_price_micros("veo", 8) == 4_000_000
    assert settings.video_price_micros("veo", 8) == 6_000_000


@pytest.mark.parametrize(
    ("model_env", "model", "price", "micros"),
    [
        # the built-in $0.50 a job is what a versioned key was ignored for
        ("MVPIPE_REPLICATE_MODEL", "minimax/video-01:abc123", {"per_job": 2.0}, 2_000_000),
        # a model with no built-in price found no price at all: every scene failed
        ("MVPIPE_REPLICATE_MODEL", "owner/unknown:v1", {"per_job": 2.0}, 2_000_000),
        ("MVPIPE_LIPSYNC_MODEL", "sync/lipsync-2:abc123", 0.5, 3_000_000),
        ("MVPIPE_LIPSYNC_MODEL", "owner/unknown:v1", 0.5, 3_000_000),
    ],
)
def test_a_price_keyed_with_a_replicate_models_version_prices_that_model(
    monkeypatch: pytest.MonkeyPatch, model_env: str, model: str, price: object, micros: int
) -> None:
    # The budget reserves the user's price of the model its jobs run on (invariant 9)
    monkeypatch.setenv("MVPIPE_PRICES", json.dumps({f"replicate:{model}": price}))
    monkeypatch.setenv(model_env, model)
    monkeypatch.setenv("MVPIPE_LIPSYNC_PROVIDER", "replicate")
    settings = Settings()
    if model_env == "MVPIPE_LIPSYNC_MODEL":
        assert settings.lipsync_price_micros(6) == micros
    else:
        assert settings.video_price_micros("replicate", 6) == micros
    # the version does not change the price: another version, or none, is priced the same
    bare = model.partition(":")[0]
    for other in (bare, f"{bare}:def456"):
        assert price_micros(settings.price_table, "replicate", other, 6) == micros


def test_keys_of_one_model_must_agree() -> None:
    same = '{"replicate:o/m:v1": {"per_job": 1}, "replicate:o/m": {"per_job": 1.0}}'
    assert price_micros(parse_prices(same), "replicate", "o/m:v2", 6) == 1_000_000
    differ = '{"replicate:o/m:v1": {"per_job": 1}, "replicate:o/m": {"per_job": 2}}'
    with pytest.raises(ConfigurationError, match="'replicate:o/m' price replicate:o/m different"):
        parse_prices(differ)


def test_unpriced_paid_work_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="no price for veo:veo-9"):
        price_micros(parse_prices(""), "veo", "veo-9", 8)


@pytest.mark.parametrize(
    "raw",
    [
        "{not json",
        "[1, 2]",
        '{"local": -1}',
        '{"local": NaN}',
        '{"local": Infinity}',
        '{"local": 1e9}',
        '{"local": true}',
        '{"local": "0.25"}',
        '{"local": {"per_second": 1}}',
        '{"local": {"per_job": 1, "extra": 2}}',
        '{"veo": {"per_second": 0.4}}',
        '{"veo": {"without_audio": 0.2}}',
        '{"veo": {"per_second": 0.4, "without_audio": null}}',
        '{"veo": {"per_second": 0.4, "without_audio": "0.2"}}',
        '{"veo": {"per_second": 0.4, "without_audio": -1}}',
        '{"veo": {"per_second": 0.4, "without_audio": 0.2, "per_job": 1}}',
        # only Veo's requests leave the audio out: another's song scene costs the full price
        '{"replicate:o/m": {"per_second": 0.5, "without_audio": 0.2}}',
        '{"local": {"per_second": 0.5, "without_audio": 0.2}}',
        '{"": 1}',
        '{"local:": 1}',
        # a provider-wide price that replaces built-in ones is checked as any other
        '{"replicate": {"per_second": 0.5, "without_audio": 0.2}}',
        '{"veo": -0.4}',
        '{"veo": 0.4, " replicate": 0.1}',
        # two keys of one Replicate model (its version does not change its price) disagreeing
        '{"replicate:o/m:v1": {"per_job": 1}, "replicate:o/m": {"per_job": 2}}',
        '{"replicate:o/m:v1": 0.1, "replicate:o/m:v2": 0.2}',
        '{"replicate:o/m:": 0.1}',
        # a provider mvpipe does not know: its price would be kept and never looked up
        '{"Veo": 0.75}',
        '{"vertex:veo-3.0-generate-001": 2}',
        '{"Veo": 0.75, "vertex:veo-3.0-generate-001": 2}',
        '{"lipsync:sync/lipsync-2": 0.1}',
    ],
)
def test_malformed_prices_are_typed_errors(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="MVPIPE_PRICES"):
        parse_prices(raw)
    monkeypatch.setenv("MVPIPE_PRICES", raw)
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigurationError, match="MVPIPE_PRICES"):
            get_settings()
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize("key", ["Veo", "vertex:veo-3.0-generate-001", "REPLICATE:o/m"])
def test_a_price_of_an_unknown_provider_is_refused_naming_its_key(key: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(repr(key))):
        parse_prices(json.dumps({"veo": 0.4, key: 0.75}))


@pytest.mark.parametrize(
    ("model", "with_audio", "without"),
    [
        ("veo-3.0-generate-001", 400_000, 200_000),
        ("veo-3.0-fast-generate-001", 150_000, 100_000),
        ("veo-3.1-generate-preview", 400_000, 200_000),
        ("veo-3.1-fast-generate-preview", 150_000, 100_000),
        ("veo-2.0-generate-001", 500_000, 500_000),  # makes no audio
    ],
)
def test_a_veo_scene_is_priced_with_audio_only_when_asked_with_it(
    monkeypatch: pytest.MonkeyPatch, model: str, with_audio: int, without: int
) -> None:
    # A song's scene fills a slot and is asked without audio (the song is its sound): it is
    # priced so, at reservation and in the estimate alike; a scene without a slot keeps it.
    monkeypatch.setenv("MVPIPE_VEO_MODEL", model)
    settings = Settings()
    song_scene = scene(1, duration_seconds=8, start_seconds=0.0, end_seconds=8.0)
    plain = scene(2, duration_seconds=8)
    assert not with_audio_of(song_scene) and with_audio_of(plain)
    assert GENERATE.price_micros(settings, "veo", song_scene) == 8 * without
    assert GENERATE.price_micros(settings, "veo", plain) == 8 * with_audio
    estimated = planned_estimate(settings, "veo", [song_scene, plain])
    assert estimated.micros == 8 * (without + with_audio)


def test_a_price_says_what_a_second_without_audio_costs_or_is_the_same_either_way() -> None:
    prices = parse_prices('{"veo": 0.3, "veo:m": {"per_second": 0.4, "without_audio": 0.25}}')
    assert price_micros(prices, "veo", "other", 2, with_audio=False) == 600_000
    assert price_micros(prices, "veo", "m", 2) == 800_000
    assert price_micros(prices, "veo", "m", 2, with_audio=False) == 500_000
    # a per-job price is what a job costs, audio or not
    per_job = parse_prices('{"replicate:o/m": {"per_job": 0.5}}')
    assert price_micros(per_job, "replicate", "o/m", 6, with_audio=False) == 500_000


def test_settings_price_each_paid_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVPIPE_PRICES", '{"local:video": 0.5, "local:lipsync": {"per_job": 0.1}}')
    settings = Settings()
    assert settings.video_price_micros("local", 4) == 2_000_000
    assert settings.lipsync_price_micros(3.2) == 100_000
    assert settings.video_price_micros("veo", 8) > 0  # the built-in Veo price still applies


def scene(sequence: int, **fields: object) -> SceneRecord:
    base: dict[str, object] = {
        "project_id": "p",
        "sequence": sequence,
        "prompt": "x",
        "negative_prompt": None,
        "duration_seconds": 4,
        "status": SceneStatus.PENDING,
        "clip_key": None,
        "working_clip_key": None,
        "lip_synced_clip_key": None,
        "attempts": 0,
        "last_error": None,
        "lease_token": None,
        "lease_expires_at": None,
        "operation_id": None,
        "completed_at": None,
    }
    return SceneRecord(**{**base, **fields})  # type: ignore[arg-type]


def test_a_planned_estimate_prices_only_the_paid_stages_still_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MVPIPE_PRICES", '{"local:video": 0.25, "local:lipsync": 0.5}')
    settings = Settings()
    now = 1000.0
    scenes = [
        scene(1),  # to generate: 4 s
        scene(2, status=SceneStatus.COMPLETED, clip_key="k"),  # done
        scene(3, status=SceneStatus.PROCESSING, operation_id="op"),  # paid, running
        scene(4, status=SceneStatus.PROCESSING, lease_token="t", lease_expires_at=now + 9),
        scene(5, status=SceneStatus.PROCESSING, lease_token="t", lease_expires_at=now - 1),
        scene(6, status=SceneStatus.FAILED, operation_id="op"),  # a user's run pays again
        # generated, its lip-sync of a 2.5 s slot still missing
        scene(7, clip_key="k", lip_sync=True, start_seconds=10.0, end_seconds=12.5),
    ]
    found = planned_estimate(settings, "local", scenes, now=now)
    assert found.jobs == 4 and found.exact
    assert found.micros == 3 * 1_000_000 + 1_250_000
    again = planned_estimate(settings, "local", scenes[6:], regenerate=True, now=now)
    assert again.micros == 1_000_000 + 1_250_000


def test_a_failed_scenes_kept_job_is_polled_by_the_next_run_not_priced_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A failed scene whose stage job was kept (its polls were refused: it may be paid) is
    # resumed by the next run (`retry_failed(keep_operation=True)`), which pays nothing for it
    monkeypatch.setenv("MVPIPE_PRICES", '{"local:video": 0.25, "local:lipsync": 0.5}')
    settings = Settings()
    failed = {"status": SceneStatus.FAILED, "operation_kept": True}
    kept = [
        scene(1, **failed, operation_id="op-1"),
        scene(
            2,
            **failed,
            clip_key="k",
            operation_id="op-2",
            lip_sync=True,
            lip_sync_operation_id="op-3",
            start_seconds=0.0,
            end_seconds=2.5,
        ),
    ]
    found = planned_estimate(settings, "local", kept, now=1000.0)
    assert (found.micros, found.jobs) == (0, 0)
    # a failed scene whose job was not kept is spent: the next run pays a new one
    spent = planned_estimate(
        settings, "local", [scene(1, status=SceneStatus.FAILED, operation_id="op-1")], now=1000.0
    )
    assert (spent.micros, spent.jobs) == (1_000_000, 1)


def test_each_paid_stage_prices_its_own_job(monkeypatch: pytest.MonkeyPatch) -> None:
    # generation: the video price times durationSeconds; lip-sync: its price times the slot
    monkeypatch.setenv("MVPIPE_PRICES", '{"local:video": 0.5, "local:lipsync": 0.25}')
    settings = Settings()
    slotted = scene(1, duration_seconds=6, start_seconds=10.0, end_seconds=15.2, lip_sync=True)
    assert GENERATE.price_micros(settings, "local", slotted) == 3_000_000
    assert LIPSYNC.price_micros(settings, "local", slotted) == 1_300_000
    assert LIPSYNC.price_micros(settings, "local", scene(2, duration_seconds=4)) == 1_000_000
    assert CUT.price_micros(settings, "local", slotted) == 0  # free: nothing to reserve


def test_an_unplanned_lip_sync_is_priced_as_its_run_will_price_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The estimate of a song's lip-syncs before planning and the run's price of each agree
    to the micro-dollar, on every slot of a grid of frames."""
    monkeypatch.setenv("MVPIPE_PRICES", '{"local:video": 0.25, "local:lipsync": 0.05}')
    settings = Settings()
    allowed = settings.durations_for("local")
    differs = 0
    for start in range(0, 240, 7):
        for frames in range(48, 192, 5):
            slot = Slot(0, start, start + frames, "verse", 24)
            (spec,) = place_in_slots([SceneSpec(prompt="sing")], [slot], allowed, lip_sync=True)
            placed = scene(1, start_seconds=spec.start_seconds, end_seconds=spec.end_seconds)
            run = LIPSYNC.price_micros(settings, "local", placed)
            assert settings.lipsync_price_micros(synced_seconds(slot)) == run, (start, frames)
            differs += settings.lipsync_price_micros(slot.seconds) != run
    assert differs  # the grid holds slots whose frames alone would price a micro-dollar less


@pytest.mark.integration
def test_a_users_veo_price_is_what_the_budget_reserves(
    start_workers: Callable[..., Workers], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given Veo priced by the user at $0.75 a second (the built-in is $0.40) and an 8 s scene
    # on a $5 budget: $3.20 at the built-in price would fit, the user's $6.00 does not
    with running_standin(monkeypatch) as standin:
        env = {"MVPIPE_GENAI_BASE_URL": standin.url, "MVPIPE_POLL_SECONDS": "0.1"}
        start_workers(env=env, provider="veo", prices=json.dumps({"veo": 0.75}))
        scenes = [{"prompt": "a neon city", "duration_seconds": 8}]
        project_id = api.create_project("Priced", "x", scenes=scenes, budget_usd=5)
        assert api.estimate_cost(project_id) == 6.0
        # When it runs
        api.run_project(project_id)
        view = api.wait_project(project_id, timeout=120)
        # Then the scene fails over budget at the user's price, and no job was asked for
        assert view.scenes[0].last_error == "over budget: needs $6.00, $5.00 left of $5.00"
        assert view.committed_cost_usd == 0
        assert standin.created == {} and standin.calls["veo.create"] == 0


@pytest.mark.integration
def test_a_song_project_on_veo_is_estimated_without_audio(stack: LocalStack) -> None:
    # A 30 s song before analysis: cut evenly into Veo's longest (8 s) clips, 4 scenes, each
    # asked (so priced) without audio at the built-in $0.20 a second, not $0.40
    project_id = api.create_project("Song", "x", song=make_song("mp3", 30.0).data, provider="veo")
    rough = api.estimate_micros(project_id)
    assert rough.jobs == 4 and not rough.exact
    assert rough.micros == 4 * 8 * 200_000


def test_regenerate_says_a_lip_synced_scene_pays_a_new_lip_sync_too() -> None:
    # a regeneration clears the lip-sync with the clip (`estimate --scene` prices both)
    from mvpipe.cli.runs import regenerate

    assert "new paid lip-sync" in (regenerate.help or "")
    assert "new paid lip-sync" in (api.regenerate_scene.__doc__ or "")
