"""What a paid job costs: prices by provider and model, in integer micro-dollars.

Pure: no I/O. `MVPIPE_PRICES` (a JSON object) overrides or extends the built-in table; its keys
are `"{provider}:{model}"` (a Replicate model with or without its `:version`, which does not
change its price: two keys of one model must agree) or `"{provider}"` (every model of that
provider: it replaces each built-in price of that provider, and a user's `"{provider}:{model}"`
beats it), the provider one of `PROVIDERS` as spelt there (any other is refused), its values a
number (US dollars per second of output, with or without audio), `{"per_second": X,
"without_audio": Y}`
(Veo only, `AUDIO_OPTIONAL`: US dollars per second of output with audio, and without: a song's
scenes are asked without, their sound is the song's) or `{"per_job": X}` (US dollars per
accepted job). `local` is free unless priced, so drills can price it (`{"local": 0.25}`); its
models are `local:video` and `local:lipsync`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from mvpipe.errors import ConfigurationError
from mvpipe.provider_names import PROVIDERS

MICROS_PER_USD = 1_000_000
#: A price above this (per second or per job) is a typo, not a price.
MAX_PRICE_USD = 10_000

#: Built-in prices (US dollars). Prices change: this table is data, checked against the sources
#: below when updated, and `MVPIPE_PRICES` overrides any entry.
#: - Veo: Google Cloud, "Vertex AI pricing" page, section Veo, per second of generated video.
#:   mvpipe's Veo requests leave audio generation at the model's default (on for Veo 3), except
#:   for a song's scenes, which fill a slot of the song and are requested without audio: Veo 3
#:   / 3.1 $0.40 with audio, $0.20 video only; Veo 3 / 3.1 Fast $0.15 with audio, $0.10 video
#:   only; Veo 2 $0.50 (video only).
#: - Replicate: each model's page on replicate.com ("Pricing"): sync/lipsync-2 about $0.05 per
#:   second of output video; minimax/video-01 $0.50 per video.
VEO_3 = {"per_second": 0.40, "without_audio": 0.20}
VEO_3_FAST = {"per_second": 0.15, "without_audio": 0.10}
DEFAULT_PRICES: dict[str, float | dict[str, float]] = {
    "veo:veo-3.0-generate-001": VEO_3,
    "veo:veo-3.0-generate-preview": VEO_3,
    "veo:veo-3.0-fast-generate-001": VEO_3_FAST,
    "veo:veo-3.0-fast-generate-preview": VEO_3_FAST,
    "veo:veo-3.1-generate-preview": VEO_3,
    "veo:veo-3.1-fast-generate-preview": VEO_3_FAST,
    "veo:veo-2.0-generate-001": 0.50,
    "replicate:sync/lipsync-2": 0.05,
    "replicate:minimax/video-01": {"per_job": 0.50},
    "local": 0.0,
}


@dataclass(frozen=True)
class Price:
    """One entry of the table, in micro-dollars."""

    per_second_micros: int = 0
    per_job_micros: int = 0
    #: per second of a clip made without audio; None: the same as with
    without_audio_micros: int | None = None

    def for_seconds(self, seconds: float, *, with_audio: bool = True) -> int:
        """A job's price; fractional seconds (a lip-sync slot) round up to the next micro."""
        rate = self.per_second_micros
        if not with_audio and self.without_audio_micros is not None:
            rate = self.without_audio_micros
        return self.per_job_micros + math.ceil(rate * max(0.0, seconds))


Prices = dict[str, Price]


def parse_prices(raw: object) -> Prices:
    """The built-in table overlaid with `MVPIPE_PRICES` (a JSON string or an already-parsed
    object). Anything malformed is a `ConfigurationError` naming the entry."""
    if isinstance(raw, str):
        text = raw.strip()
        try:
            raw = json.loads(text) if text else {}
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"MVPIPE_PRICES is not valid JSON: {exc.msg}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigurationError("MVPIPE_PRICES must be a JSON object")
    return {**built_in_prices(over=raw), **user_prices(raw)}


def user_prices(raw: dict[Any, Any]) -> Prices:
    """A user's entries, keyed as `price_of` looks them up: a Replicate model's version dropped
    (`owner/name:version` prices `owner/name`, see `_bare`), else a versioned key would be kept
    and never found, and the budget would reserve the built-in price, or find none. Two keys
    of one model with different prices are a `ConfigurationError`: either would be a guess."""
    prices: Prices = {}
    written: dict[str, str] = {}
    for key, value in raw.items():
        model, price = _key(key), _entry(key, value)
        if prices.get(model, price) != price:
            raise ConfigurationError(
                f"MVPIPE_PRICES: {written[model]!r} and {key!r} price {model} differently "
                "(a Replicate model's version does not change its price)"
            )
        prices[model] = price
        written.setdefault(model, key)
    return prices


def built_in_prices(*, over: dict[str, Any]) -> Prices:
    """The built-in entries a user's table leaves standing: a user's price always wins. A
    user's `{provider}` prices all that provider's models, so it replaces the built-in entry
    of each (else the built-in model entry, being the more specific, would win the lookup and
    the budget would reserve a price the user did not give); a user's `{provider}:{model}`
    beats the user's `{provider}` as any model entry does."""
    whole = {key for key in over if isinstance(key, str) and ":" not in key}
    return {
        key: _entry(key, value)
        for key, value in DEFAULT_PRICES.items()
        if key.partition(":")[0] not in whole
    }


def price_micros(
    prices: Prices, provider: str, model: str, seconds: float, *, with_audio: bool = True
) -> int:
    """The price of one job of `model` at `provider` making `seconds` of output (with audio
    or not, as the request asks).

    A provider other than `local` with no price is a `ConfigurationError`: unpriced paid work
    would make every budget meaningless."""
    price = price_of(prices, provider, model)
    if price is None:
        if provider == "local":
            return 0
        raise ConfigurationError(
            f"no price for {provider}:{_bare(model)}; add it to MVPIPE_PRICES "
            f'(e.g. {{"{provider}:{_bare(model)}": 0.1}})'
        )
    return price.for_seconds(seconds, with_audio=with_audio)


def price_of(prices: Prices, provider: str, model: str) -> Price | None:
    """The table's entry for `model` at `provider` (its own, else the provider's), if any."""
    return prices.get(f"{provider}:{_bare(model)}") or prices.get(provider)


def usd(micros: int) -> str:
    """Money as users read it, e.g. `$12.50`."""
    return f"${micros / MICROS_PER_USD:,.2f}"


def _bare(model: str) -> str:
    """A Replicate model's price does not depend on its version (`owner/name:version`)."""
    return model.partition(":")[0] if "/" in model else model


def _key(key: object) -> str:
    """A user's key as the table keeps it: `provider`, or `provider:model` with a Replicate
    model's version dropped. A provider mvpipe does not know (`Veo`, `vertex`) is refused: its
    price would be kept and never looked up, and the budget would reserve the built-in one."""
    if not isinstance(key, str) or not key.strip() or key != key.strip():
        raise ConfigurationError(f"MVPIPE_PRICES: bad key {key!r}")
    provider, _, model = key.partition(":")
    if not provider or key.endswith(":"):
        raise ConfigurationError(f"MVPIPE_PRICES: bad key {key!r} (provider or provider:model)")
    if provider not in PROVIDERS:
        raise ConfigurationError(
            f"MVPIPE_PRICES: bad key {key!r}: unknown provider {provider!r}; expected one of "
            f"{PROVIDERS}"
        )
    return f"{provider}:{_bare(model)}" if model else provider


#: The keys an object price may have, each set a form of its own.
OBJECT_FORMS = ({"per_job"}, {"per_second", "without_audio"})
#: The providers whose requests leave the audio out when a song replaces it (Veo's
#: `generate_audio=False`): only their prices may say what a second costs without it. Another
#: provider's song scenes are made, and billed, as any other, so a cheaper price would reserve
#: less than the job costs.
AUDIO_OPTIONAL = ("veo",)


def _entry(key: str, value: Any) -> Price:
    if isinstance(value, dict):
        if set(value) not in OBJECT_FORMS:
            raise ConfigurationError(
                f'MVPIPE_PRICES[{key!r}]: an object must be {{"per_job": USD}} or '
                f'{{"per_second": USD, "without_audio": USD}}'
            )
        if "per_job" in value:
            return Price(per_job_micros=_micros(key, value["per_job"]))
        if key.partition(":")[0] not in AUDIO_OPTIONAL:
            raise ConfigurationError(
                f"MVPIPE_PRICES[{key!r}]: only {', '.join(AUDIO_OPTIONAL)} requests can leave "
                "the audio out; price it with one number of US dollars per second"
            )
        return Price(
            per_second_micros=_micros(key, value["per_second"]),
            without_audio_micros=_micros(key, value["without_audio"]),
        )
    return Price(per_second_micros=_micros(key, value))


def _micros(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"MVPIPE_PRICES[{key!r}]: a price must be a number of US dollars")
    if not math.isfinite(value) or not 0 <= value <= MAX_PRICE_USD:
        raise ConfigurationError(
            f"MVPIPE_PRICES[{key!r}]: a price must be between 0 and {MAX_PRICE_USD} US dollars"
        )
    return round(value * MICROS_PER_USD)
