"""Clip lengths: one rule for slots, hand-written and planned scenes, and what a provider is
asked for is exactly the length stored (the one its price was reserved on)."""

from __future__ import annotations

import pytest

from mvpipe.durations import (
    NoClipDuration,
    asked_seconds,
    capped_seconds,
    clip_seconds,
    hand_written,
    made_seconds,
    planned,
)
from mvpipe.errors import InvalidInput, PermanentProviderError
from mvpipe.models import SceneSpec
from mvpipe.settings import Settings

VEO = [4, 6, 8]


@pytest.mark.parametrize(
    ("seconds", "expected"), [(0.5, 4), (3.99, 4), (4.0, 4), (4.01, 6), (6.0, 6), (7.5, 8), (8, 8)]
)
def test_a_clip_is_the_shortest_allowed_that_covers(seconds: float, expected: int) -> None:
    assert clip_seconds(seconds, [8, 4, 6]) == expected


def test_no_clip_covers_a_length_longer_than_the_longest_or_a_bad_one() -> None:
    with pytest.raises(NoClipDuration):
        clip_seconds(8.1, VEO)
    with pytest.raises(NoClipDuration):
        clip_seconds(1.0, [])
    for bad in (float("nan"), float("inf"), 0.0, -1.0):
        with pytest.raises(InvalidInput):
            clip_seconds(bad, VEO)


def test_a_length_chosen_without_the_provider_is_capped_at_its_longest_clip() -> None:
    assert capped_seconds(30, VEO) == 8
    assert capped_seconds(8, [6]) == 6
    assert capped_seconds(5, VEO) == 6
    with pytest.raises(NoClipDuration):
        capped_seconds(5, [])


def test_hand_written_scenes_keep_their_length_or_are_refused() -> None:
    specs = [
        SceneSpec(prompt="a", duration_seconds=4),
        SceneSpec(prompt="c", duration_seconds=8),
        SceneSpec(prompt="d"),  # no length: the default, 8 s where the provider makes it
    ]
    assert [s.duration_seconds for s in hand_written(specs, "veo", VEO)] == [4, 8, 8]
    local = Settings().durations_for("local")
    odd = [SceneSpec(prompt="a", duration_seconds=1), SceneSpec(prompt="b", duration_seconds=5)]
    assert [s.duration_seconds for s in hand_written(odd, "local", local)] == [1, 5]
    # A provider whose longest clip is shorter than the default makes its longest by default
    assert hand_written([SceneSpec(prompt="d")], "replicate", [6])[0].duration_seconds == 6
    # The rest of a spec is kept as given
    kept = hand_written(
        [SceneSpec(prompt="p", negative_prompt="n", duration_seconds=6)], "veo", VEO
    )
    assert kept == [SceneSpec(prompt="p", negative_prompt="n", duration_seconds=6)]
    # A length the provider does not make exactly is refused, shorter, between or longer,
    # naming the scene and the lengths it makes (never rounded up: the video would show the
    # scene longer than written)
    for seconds in (1, 5, 9):
        unmade = [
            SceneSpec(prompt="a", duration_seconds=4),
            SceneSpec(prompt="b", duration_seconds=seconds),
        ]
        with pytest.raises(
            NoClipDuration, match=rf"scene 2: veo makes no {seconds} s clip; .* are 4, 6, 8 s"
        ):
            hand_written(unmade, "veo", VEO)
    with pytest.raises(InvalidInput, match=r"replicate makes no 7 s clip; .* are 5, 6 s"):
        hand_written([SceneSpec(prompt="a", duration_seconds=7)], "replicate", [5, 6])


def test_a_planners_lengths_become_the_providers() -> None:
    specs = [SceneSpec(prompt="a", duration_seconds=5), SceneSpec(prompt="b", duration_seconds=30)]
    assert [s.duration_seconds for s in planned(specs, VEO)] == [6, 8]
    assert [s.duration_seconds for s in planned(specs, [6])] == [6, 6]
    assert [s.duration_seconds for s in planned([SceneSpec(prompt="c")], VEO)] == [8]


@pytest.mark.parametrize(
    ("stored", "allowed", "made"),
    [
        (6, VEO, 6),  # a length the provider makes is kept
        (5, VEO, 6),  # one it does not make: the shortest covering it
        (8, [6], 6),  # the old 8 s default with Replicate [6]: its longest
        (12, [5, 10], 10),
        (0, VEO, 8),  # stored with none: the default length
        (0, [5, 6], 6),  # ... capped at the provider's longest
        (None, [5, 10], 10),
    ],
)
def test_a_stored_scene_is_made_at_a_length_the_provider_makes(
    stored: int | None, allowed: list[int], made: int
) -> None:
    assert made_seconds(stored, allowed) == made


def test_a_provider_is_asked_for_the_stored_length_or_refuses_before_any_call() -> None:
    assert asked_seconds("veo", 6, VEO) == 6
    with pytest.raises(PermanentProviderError, match=r"veo: a 5 s clip is not one it makes") as e:
        asked_seconds("veo", 5, VEO)
    assert e.value.refused  # nothing was sent: the reservation goes back
    with pytest.raises(PermanentProviderError, match=r"\(1\.\.30 s\)"):
        asked_seconds("local", 31, list(range(1, 31)))
