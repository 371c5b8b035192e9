"""Settings are read once from the environment; a bad combination is a typed error that says
which variables to change (no raw pydantic error reaches the caller)."""

from __future__ import annotations

import pytest

from mvpipe.errors import ConfigurationError
from mvpipe.settings import MAX_SLOT_SECONDS, get_settings
from tests.conftest import TEST_ENV
from tests.drills.conftest import DRILL_SETTINGS
from tests.drills.test_give_ups import QUICK_RETRIES
from tests.drills.test_owed_writes import OUTAGE_SETTINGS


@pytest.fixture(autouse=True)
def _fresh_settings() -> object:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_a_lease_shorter_than_one_submission_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Submit (30 s) and one reply each for the claim and the record (10 s each) need 50 s.
    # (A poll's liveness at its defaults: the tests' quick backoff would be refused beside
    # these call timeouts.)
    configured(monkeypatch, backoff_max="", poll_seconds="", liveness_slack_seconds="")
    monkeypatch.setenv("MVPIPE_LEASE_SECONDS", "45")
    monkeypatch.setenv("MVPIPE_PROVIDER_TIMEOUT_SECONDS", "20")
    monkeypatch.setenv("MVPIPE_STORE_TIMEOUT_SECONDS", "15")
    with pytest.raises(ConfigurationError, match="MVPIPE_LEASE_SECONDS"):
        get_settings()
    monkeypatch.setenv("MVPIPE_LEASE_SECONDS", "50")
    assert get_settings().lease_seconds == 50


def configured(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    """Set `MVPIPE_<NAME>` for each of `env`; an empty value unsets it."""
    for name, value in env.items():
        key = f"MVPIPE_{name.upper()}"
        if value:
            monkeypatch.setenv(key, value)
        else:
            monkeypatch.delenv(key, raising=False)
    get_settings.cache_clear()


def refusal(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    """What the settings say, refused, once `env` is set (`configured`)."""
    configured(monkeypatch, **env)
    with pytest.raises(ConfigurationError) as refused:
        get_settings()
    return str(refused.value)


def test_a_run_staleness_shorter_than_a_countdown_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only a run's steps mark it alive, and two of them may be a whole countdown apart (a
    # backoff, a wait for a slot, a poll without an announced end): a shorter staleness has a
    # healthy run taken over at every reconcile pass.
    # (a provider timeout the short backoffs below leave a poll's liveness mark room for)
    configured(monkeypatch, provider_timeout_seconds="10", liveness_slack_seconds="")
    said = refusal(monkeypatch, backoff_max="60", poll_seconds="", run_stale_seconds="30")
    assert "MVPIPE_RUN_STALE_SECONDS (30) must be at least the longest countdown" in said
    assert ": 60 s (MVPIPE_BACKOFF_MAX and the providers' poll intervals)" in said
    # A poll without an announced end waits the whole interval
    said = refusal(monkeypatch, backoff_max="2", poll_seconds="60", run_stale_seconds="5")
    assert "MVPIPE_RUN_STALE_SECONDS (5)" in said and "60 s (MVPIPE_BACKOFF_MAX and" in said
    # Unset, the longest interval is Veo's own, 10 s (a project may choose any provider)
    said = refusal(monkeypatch, poll_seconds="")
    assert "MVPIPE_RUN_STALE_SECONDS (5)" in said and ": 10 s" in said
    configured(monkeypatch, run_stale_seconds="10")
    assert get_settings().run_stale_seconds == 10
    configured(monkeypatch, poll_seconds="60", run_stale_seconds="60")  # as long: enough
    assert get_settings().longest_countdown == 60


def test_a_visibility_timeout_a_poll_could_outwait_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A poll without an announced end waits the whole interval: its message, held that long
    # and then through the poll's own download, would be handed to a second worker past the
    # visibility timeout (two chains per poll).
    env = {
        "run_stale_seconds": "600",
        "backoff_max": "60",
        "visibility_timeout": "400",
        "download_timeout_seconds": "300",
        "provider_timeout_seconds": "30",
    }
    said = refusal(monkeypatch, poll_seconds="600", **env)
    assert "MVPIPE_VISIBILITY_TIMEOUT (400) must be at least 390 s (60 s, and the poll's" in said
    assert ": 600 s (MVPIPE_BACKOFF_MAX and MVPIPE_POLL_SECONDS)" in said
    # A countdown of 340 s with the download's 330 s outlasts 400 s (accepted before)
    assert "MVPIPE_VISIBILITY_TIMEOUT" in refusal(monkeypatch, poll_seconds="340")
    assert "MVPIPE_VISIBILITY_TIMEOUT" in refusal(
        monkeypatch, poll_seconds="600", visibility_timeout="989"
    )
    configured(monkeypatch, visibility_timeout="990")  # 600 + 330 + 60 s
    assert get_settings().visibility_timeout == 990


def test_malformed_values_are_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVPIPE_MAX_ATTEMPTS", "many")
    with pytest.raises(ConfigurationError, match="MVPIPE_MAX_ATTEMPTS"):
        get_settings()
    monkeypatch.setenv("MVPIPE_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("MVPIPE_PROVIDER_TIMEOUT_SECONDS", "100")
    with pytest.raises(ConfigurationError, match="half the lease"):
        get_settings()


def test_the_longest_a_job_may_run_is_hours_by_default_and_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert get_settings().max_job_seconds == 7200
    for bad in ("0", "-5", "604801", "forever"):
        monkeypatch.setenv("MVPIPE_MAX_JOB_SECONDS", bad)
        get_settings.cache_clear()
        with pytest.raises(ConfigurationError, match="MVPIPE_MAX_JOB_SECONDS"):
            get_settings()
    monkeypatch.setenv("MVPIPE_MAX_JOB_SECONDS", "90")
    get_settings.cache_clear()
    assert get_settings().max_job_seconds == 90


def test_the_latency_seed_is_a_whole_number_not_below_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ("-1", "1.5", "seven"):
        monkeypatch.setenv("MVPIPE_LOCAL_LATENCY_SEED", bad)
        with pytest.raises(ConfigurationError, match="MVPIPE_LOCAL_LATENCY_SEED"):
            get_settings()
        get_settings.cache_clear()
    monkeypatch.setenv("MVPIPE_LOCAL_LATENCY_SEED", "42")
    assert get_settings().local_latency_seed == 42


def test_infinity_and_nan_are_refused_for_every_number(monkeypatch: pytest.MonkeyPatch) -> None:
    # An endless backoff or poll interval would stall every scene that waits on it.
    for name in ("BACKOFF_BASE", "BACKOFF_MAX", "POLL_SECONDS"):
        for bad in ("inf", "nan", "-inf"):
            monkeypatch.setenv(f"MVPIPE_{name}", bad)
            with pytest.raises(ConfigurationError, match=f"MVPIPE_{name}"):
                get_settings()
            get_settings.cache_clear()
        monkeypatch.delenv(f"MVPIPE_{name}")
    monkeypatch.setenv("MVPIPE_BACKOFF_BASE", "0.5")
    assert get_settings().backoff_base == 0.5


def test_an_unparseable_value_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # A JSON setting that is not JSON fails in pydantic-settings before validation runs
    monkeypatch.setenv("MVPIPE_REPLICATE_INPUT", "not json")
    with pytest.raises(ConfigurationError, match="MVPIPE_"):
        get_settings()


def test_lip_sync_input_urls_outlive_a_long_provider_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    # A lip-sync job may sit queued at its provider for hours before it fetches its inputs: a
    # URL that dies first fails the paid job. SigV4 URLs live 7 days at most.
    assert get_settings().lipsync_url_seconds >= 6 * 3600
    get_settings.cache_clear()
    monkeypatch.setenv("MVPIPE_LIPSYNC_URL_SECONDS", str(7 * 24 * 3600 + 1))
    with pytest.raises(ConfigurationError, match="MVPIPE_LIPSYNC_URL_SECONDS"):
        get_settings()


def test_a_per_second_replicate_price_needs_the_input_that_takes_the_length(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Without a duration input the model picks its own length, while the price is reserved
    # on the scene's stored one: refused when that price is per second
    monkeypatch.setenv("MVPIPE_REPLICATE_MODEL", "acme/video")
    monkeypatch.setenv("MVPIPE_PRICES", '{"replicate:acme/video": 0.1}')
    monkeypatch.setenv("MVPIPE_REPLICATE_DURATION_INPUT", "")
    with pytest.raises(ConfigurationError, match="MVPIPE_REPLICATE_DURATION_INPUT must name"):
        get_settings()
    # A price per job does not depend on the length, nor a per-second one the length is given to
    monkeypatch.setenv("MVPIPE_PRICES", '{"replicate:acme/video": {"per_job": 0.5}}')
    assert get_settings().replicate_duration_input == ""
    get_settings.cache_clear()
    monkeypatch.setenv("MVPIPE_PRICES", '{"replicate:acme/video": 0.1}')
    monkeypatch.setenv("MVPIPE_REPLICATE_DURATION_INPUT", "seconds")
    assert get_settings().replicate_duration_input == "seconds"


def test_a_download_that_could_outlast_the_visibility_timeout_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The worst download (its deadline plus one read timeout) must end before the task's
    # message is handed to a second worker.
    monkeypatch.setenv("MVPIPE_VISIBILITY_TIMEOUT", "600")
    monkeypatch.setenv("MVPIPE_PROVIDER_TIMEOUT_SECONDS", "30")
    configured(monkeypatch, backoff_max="60", poll_seconds="60")  # whatever another test set
    monkeypatch.setenv("MVPIPE_DOWNLOAD_TIMEOUT_SECONDS", "570")
    with pytest.raises(ConfigurationError, match="MVPIPE_DOWNLOAD_TIMEOUT_SECONDS"):
        get_settings()
    # ... and, a poll's download starting a whole countdown after its message came, with a
    # minute to spare past that (60 s here: the backoff and poll intervals)
    monkeypatch.setenv("MVPIPE_DOWNLOAD_TIMEOUT_SECONDS", "451")
    with pytest.raises(ConfigurationError, match="MVPIPE_VISIBILITY_TIMEOUT"):
        get_settings()
    monkeypatch.setenv("MVPIPE_DOWNLOAD_TIMEOUT_SECONDS", "450")
    assert get_settings().download_worst_seconds == 480


def test_the_planners_scene_lengths_must_leave_a_length_to_ask_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A minimum above the maximum would have every Gemini plan refused, at run time.
    monkeypatch.setenv("MVPIPE_SCENE_SECONDS_MIN", "8")
    monkeypatch.setenv("MVPIPE_SCENE_SECONDS_MAX", "4")
    with pytest.raises(ConfigurationError) as refused:
        get_settings()
    assert "MVPIPE_SCENE_SECONDS_MIN (8)" in str(refused.value)
    assert "MVPIPE_SCENE_SECONDS_MAX (4)" in str(refused.value)
    monkeypatch.setenv("MVPIPE_SCENE_SECONDS_MIN", "4")
    get_settings.cache_clear()
    assert (get_settings().scene_seconds_min, get_settings().scene_seconds_max) == (4, 4)


def test_an_output_size_is_checked_by_the_output_formats_own_rules(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for bad, said in (("1281x720", "even"), ("10x720", "16..4096"), ("big", "MVPIPE_OUTPUT_SIZE")):
        monkeypatch.setenv("MVPIPE_OUTPUT_SIZE", bad)
        get_settings.cache_clear()
        with pytest.raises(ConfigurationError, match=said):
            get_settings()
    monkeypatch.setenv("MVPIPE_OUTPUT_SIZE", "160x90")
    get_settings.cache_clear()
    assert get_settings().output_size == "160x90"


def test_an_output_size_over_the_decoders_pixel_limit_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every cut and lip-sync output is decoded again under the pixel limit: a larger output
    # format would fail each lip-sync after its job was paid. Each side alone is allowed.
    for bad in ("4096x3072", "4096x2306", "3072x4096"):
        monkeypatch.setenv("MVPIPE_OUTPUT_SIZE", bad)
        get_settings.cache_clear()
        with pytest.raises(ConfigurationError, match=f"MVPIPE_OUTPUT_SIZE: output frame {bad}"):
            get_settings()
    for good in ("4096x2304", "2304x4096", "3840x2160"):
        monkeypatch.setenv("MVPIPE_OUTPUT_SIZE", good)
        get_settings.cache_clear()
        assert get_settings().output_size == good


def test_a_poll_liveness_shorter_than_the_polls_own_calls_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A poll marks its scene and its job's quota slot for its liveness, then calls the
    # provider and may read the scene: a mark that lapses meanwhile lets reconcile start a
    # second poll chain, a slot that lapses lets another job in beside this one.
    pinned = {
        "backoff_max": "2",
        "poll_seconds": "1",
        "liveness_slack_seconds": "0",
        "provider_timeout_seconds": "",
        "store_timeout_seconds": "",
        "run_stale_seconds": "",
        "lease_seconds": "",
    }
    said = refusal(monkeypatch, **pinned)
    assert "a local poll's liveness mark would last 5 s" in said
    assert "less than the poll's own calls may take: 40 s" in said
    assert "raise MVPIPE_LIVENESS_SLACK_SECONDS to 35 at least" in said
    # A provider timeout above the slack: local's 41.5 s mark, replicate's 46 s, against 65 s
    said = refusal(
        monkeypatch,
        backoff_max="10",
        poll_seconds="",
        liveness_slack_seconds="",
        provider_timeout_seconds="55",
    )
    assert "a local poll's liveness mark would last 41.5 s" in said and ": 65 s" in said
    assert "MVPIPE_LIVENESS_SLACK_SECONDS to 53.5" in said
    configured(monkeypatch, liveness_slack_seconds="53.5")
    assert get_settings().liveness_seconds("local") == 65
    # The defaults pass, and so do the drills' settings over the tests' own environment
    configured(monkeypatch, **{name: "" for name in pinned})
    assert get_settings().liveness_seconds("local") == 91.5
    tests = {name.removeprefix("MVPIPE_").lower(): value for name, value in TEST_ENV.items()}
    for drill in (DRILL_SETTINGS, {**DRILL_SETTINGS, **QUICK_RETRIES}, OUTAGE_SETTINGS):
        configured(monkeypatch, **{**{name: "" for name in pinned}, **tests, **drill})
        assert get_settings().liveness_seconds("local") >= 3


def test_a_submissions_quota_slot_longer_than_the_quota_keys_life_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A submission's slot lasts as long as the claim's mark: the lease, the record's last
    # try and the slack; it must fit under the life of the keys that count slots.
    fits = MAX_SLOT_SECONDS - 2 * 10 - 30
    pinned = {"store_timeout_seconds": "", "liveness_slack_seconds": "", "backoff_max": ""}
    said = refusal(monkeypatch, **pinned, lease_seconds=str(fits + 1))
    assert f"a local submission's quota slot would live {MAX_SLOT_SECONDS + 1} s" in said
    assert "MVPIPE_LEASE_SECONDS" in said
    configured(monkeypatch, lease_seconds=str(fits))
    settings = get_settings()
    assert settings.claim_mark_after(settings.liveness_seconds("local")) == MAX_SLOT_SECONDS
