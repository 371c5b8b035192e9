"""Clip lengths: which of a provider's allowed durations a scene is made at.

A song's slot and a planner's scene get the provider's shortest allowed duration that covers
the length wanted (a planner's, not knowing the provider, capped at its longest); a
hand-written scene's length must be one the provider makes, or create refuses it. The scene
stores that number, its price is reserved on it, the estimate counts it and the provider is
asked for exactly it (DESIGN.md "Cost and budget", invariant 9), so what is reserved is what
is billed. Pure: no I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence

from mvpipe.errors import InvalidInput, PermanentProviderError
from mvpipe.models import SceneSpec

#: The length a scene given none is made at, when the provider makes it (else its longest).
DEFAULT_SCENE_SECONDS = 8


class NoClipDuration(InvalidInput):
    """No duration the provider allows is long enough for the length wanted."""


def clip_seconds(wanted: float, allowed: Sequence[int]) -> int:
    """The provider's shortest allowed clip length (whole seconds) that covers `wanted`."""
    if not math.isfinite(wanted) or wanted <= 0:
        raise InvalidInput(f"a clip length must be a positive number of seconds, got {wanted}")
    fitting = [d for d in allowed if d > 0 and d + 1e-9 >= wanted]
    if not fitting:
        raise NoClipDuration(
            f"no allowed clip duration ({_listed(allowed)} s) covers {wanted:.3f} s"
        )
    return min(fitting)


def capped_seconds(wanted: float, allowed: Sequence[int]) -> int:
    """`clip_seconds` of a length chosen without knowing the provider (a planner's, the
    default): one longer than the provider's longest clip is made at its longest."""
    if not allowed:
        raise NoClipDuration("the provider allows no clip duration")
    return clip_seconds(min(wanted, max(allowed)), allowed)


def made_seconds(stored: int | None, allowed: Sequence[int]) -> int:
    """The length a stored scene is made, priced and estimated at: its own when the provider
    makes it; else (stored before lengths were fitted, or under other allowed lengths)
    `capped_seconds` of it, and the default length for a scene stored with none (0)."""
    if stored and stored in allowed:
        return stored
    return capped_seconds(stored if stored and stored > 0 else DEFAULT_SCENE_SECONDS, allowed)


def hand_written(
    specs: Sequence[SceneSpec], provider: str, allowed: Sequence[int]
) -> list[SceneSpec]:
    """A user's scenes, each at the clip length it asked for, or the default length when none
    was. A length the provider does not make exactly is refused (`NoClipDuration`, an
    `InvalidInput`): a longer clip would show the scene longer than written, a shorter one
    cut it, and either way the user did not ask for it."""
    fitted = []
    for number, spec in enumerate(specs, start=1):
        seconds = spec.duration_seconds
        if seconds is None:
            seconds = capped_seconds(DEFAULT_SCENE_SECONDS, allowed)
        elif seconds not in allowed:
            raise NoClipDuration(
                f"scene {number}: {provider} makes no {seconds} s clip; its clip lengths are "
                f"{_listed(allowed)} s"
            )
        fitted.append(spec.model_copy(update={"duration_seconds": seconds}))
    return fitted


def planned(specs: Sequence[SceneSpec], allowed: Sequence[int]) -> list[SceneSpec]:
    """A planner's scenes (without a song), each at a clip length the provider makes."""
    return [
        spec.model_copy(
            update={
                "duration_seconds": capped_seconds(
                    spec.duration_seconds or DEFAULT_SCENE_SECONDS, allowed
                )
            }
        )
        for spec in specs
    ]


def asked_seconds(provider: str, seconds: int, allowed: Sequence[int]) -> int:
    """The length a provider is asked for: the scene's stored one, which its price was reserved
    on, never another. A length the provider does not make is refused before any call: nothing
    is billed and the reservation goes back. (The generate stage refits a scene stored before
    lengths were fitted before it prices it, so only a guard.)"""
    if seconds not in allowed:
        raise PermanentProviderError(
            f"{provider}: a {seconds} s clip is not one it makes ({_listed(allowed)} s)",
            refused=True,
        )
    return seconds


def _listed(allowed: Sequence[int]) -> str:
    """`4, 6, 8`, or a run of whole seconds as `1..30`."""
    ordered = sorted(allowed)
    if len(ordered) > 3 and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]}..{ordered[-1]}"
    return ", ".join(map(str, ordered)) or "none"
