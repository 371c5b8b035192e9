"""Prices: the built-in table, `MVPIPE_PRICES` over it, and typed errors for anything malformed."""

from __future__ import annotations

import pytest

from mvpipe.errors import ConfigurationError
from mvpipe.pricing import DEFAULT_PRICES, parse_prices, price_micros
from mvpipe.settings import Settings, get_settings


def test_per_second_and_per_job_prices() -> None:
    prices = parse_prices('{"local": 0.25, "replicate:owner/model": {"per_job": 1.5}}')
    assert price_micros(prices, "local", "video", 4) == 1_000_000
    assert price_micros(prices, "local", "lipsync", 2.5) == 625_000
    # A Replicate model's version does not change its price.
    assert price_micros(prices, "replicate", "owner/model:abc123", 6) == 1_500_000
    assert price_micros(prices, "replicate", "owner/model", 1) == 1_500_000


def test_the_built_in_table_prices_veo_and_lipsync_and_local_is_free() -> None:
    prices = parse_prices("")
    assert price_micros(prices, "veo", "veo-3.0-generate-001", 8) == round(
        8 * float(DEFAULT_PRICES["veo:veo-3.0-generate-001"]) * 1e6  # type: ignore[arg-type]
    )
    assert price_micros(prices, "replicate", "sync/lipsync-2", 2) > 0
    assert price_micros(prices, "local", "video", 8) == 0
    # A model entry wins over its provider's entry.
    both = parse_prices('{"local": 1, "local:lipsync": 2}')
    assert price_micros(both, "local", "video", 1) == 1_000_000
    assert price_micros(both, "local", "lipsync", 1) == 2_000_000


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
        '{"": 1}',
        '{"local:": 1}',
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


def test_settings_price_each_paid_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVPIPE_PRICES", '{"local:video": 0.5, "local:lipsync": {"per_job": 0.1}}')
    settings = Settings()
    assert settings.video_price_micros("local", 4) == 2_000_000
    assert settings.lipsync_price_micros(3.2) == 100_000
    assert settings.video_price_micros("veo", 8) > 0  # the built-in Veo price still applies
