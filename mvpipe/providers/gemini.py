"""Gemini planning: structured output into pydantic, validated, with one bounded re-ask.

With a song the model writes one entry per slot (the slots are cut by mvpipe, not by the model),
each with a lip-sync flag; an answer with the wrong number of entries is re-asked once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from mvpipe.errors import PermanentProviderError
from mvpipe.models import SceneSpec, describe_validation_error
from mvpipe.providers.base import Brief
from mvpipe.providers.genai_client import GenaiUser, call_sdk, gemini_client

log = logging.getLogger("mvpipe.gemini")

#: Re-asks after an answer that fails validation: one, so a confused model costs at most twice.
MAX_REASKS = 1

Validated = tuple[list[SceneSpec], str | None]


class PlannedScene(BaseModel):
    """The response schema the model fills (kept loose: validation happens after)."""

    prompt: str
    negative_prompt: str | None = None
    duration_seconds: int = Field(default=8)


class PlannedScenes(BaseModel):
    scenes: list[PlannedScene]


class PlannedSlotScene(BaseModel):
    """One slot's scene: its length is the slot's, so the model gives none."""

    prompt: str
    negative_prompt: str | None = None
    lip_sync: bool = False


class PlannedSlotScenes(BaseModel):
    scenes: list[PlannedSlotScene]


def planning_prompt(brief: Brief, min_seconds: int, max_seconds: int) -> str:
    return (
        "You plan music videos shot by shot for a text-to-video model.\n"
        f"Write exactly {brief.scene_count} scenes for the video titled {brief.title!r}.\n"
        "Each scene has: prompt (one vivid, self-contained visual description under 1000 "
        "characters: subject, setting, camera, light, mood), negative_prompt (what to avoid, "
        f"short), duration_seconds (an integer from {min_seconds} to {max_seconds}).\n"
        "Follow the song's concept/lyrics in order across the scenes:\n"
        f"---\n{brief.concept}\n---"
    )


def slot_planning_prompt(brief: Brief) -> str:
    """The song is already cut into slots: one scene per slot, in order, each told its lyrics."""
    if brief.lip_sync:
        lip_sync = (
            "true for a performance shot where the singer sings the slot's lyrics to camera "
            "(about one scene in three, where words are sung), else false"
        )
    else:
        lip_sync = "always false (this video is not lip-synced)"
    slots = "\n".join(
        f"{number}. {slot.start_seconds:.2f}-{slot.end_seconds:.2f} s, section {slot.section}"
        + (f", lyrics: {' / '.join(slot.lyrics)}" if slot.lyrics else "")
        for number, slot in enumerate(brief.slots, start=1)
    )
    return (
        "You plan music videos shot by shot for a text-to-video model.\n"
        f"The song is cut on its beats into {len(brief.slots)} slots. Write exactly "
        f"{brief.scene_count} scenes for the video titled {brief.title!r}: one per slot, in "
        "the slots' order, each a single continuous shot lasting its slot.\n"
        "Each scene has: prompt (one vivid, self-contained visual description under 1000 "
        "characters: subject, setting, camera, light, mood, matching the slot's lyrics and "
        "section; scenes of the same section share a look), negative_prompt (what to avoid, "
        f"short), lip_sync ({lip_sync}).\n"
        f"Slots:\n{slots}\n"
        f"The song's concept/lyrics:\n---\n{brief.concept}\n---"
    )


def validate_plan(
    planned: Any, count: int, min_seconds: int, max_seconds: int
) -> tuple[list[SceneSpec], str | None]:
    """The specs, or the reason the answer is unusable (fed back to the model once)."""
    if not isinstance(planned, PlannedScenes):
        return [], "the answer was not the requested JSON object"
    if len(planned.scenes) != count:
        return [], f"expected exactly {count} scenes, got {len(planned.scenes)}"
    for number, scene in enumerate(planned.scenes, start=1):
        if not min_seconds <= scene.duration_seconds <= max_seconds:
            return [], f"scene {number}: duration_seconds must be {min_seconds}..{max_seconds}"
    return _specs(
        {
            "prompt": s.prompt,
            "negative_prompt": s.negative_prompt,
            "duration_seconds": s.duration_seconds,
        }
        for s in planned.scenes
    )


def validate_slot_plan(planned: Any, brief: Brief) -> Validated:
    """One spec per slot, in order, or why not; lip-sync only where the project allows it."""
    if not isinstance(planned, PlannedSlotScenes):
        return [], "the answer was not the requested JSON object"
    if len(planned.scenes) != brief.scene_count:
        return [], (
            f"expected exactly {brief.scene_count} scenes (one per slot), got {len(planned.scenes)}"
        )
    return _specs(
        {
            "prompt": s.prompt,
            "negative_prompt": s.negative_prompt,
            "lip_sync": s.lip_sync and brief.lip_sync,
        }
        for s in planned.scenes
    )


def _specs(scenes: Iterable[dict[str, Any]]) -> Validated:
    specs = []
    for number, scene in enumerate(scenes, start=1):
        try:
            specs.append(
                SceneSpec(
                    **{
                        **scene,
                        "prompt": scene["prompt"].strip(),
                        "negative_prompt": (scene["negative_prompt"] or "").strip() or None,
                    }
                )
            )
        except ValidationError as exc:
            return [], f"scene {number}: {describe_validation_error(exc)}"
    return specs, None


class GeminiPlanner(GenaiUser):
    name = "gemini"

    def make_client(self) -> Any:
        return gemini_client(self.settings)

    def plan(self, brief: Brief) -> list[SceneSpec]:
        if brief.slots:
            return self._ask(
                brief,
                slot_planning_prompt(brief),
                PlannedSlotScenes,
                lambda parsed: validate_slot_plan(parsed, brief),
            )
        low, high = self.settings.scene_seconds_min, self.settings.scene_seconds_max
        return self._ask(
            brief,
            planning_prompt(brief, low, high),
            PlannedScenes,
            lambda parsed: validate_plan(parsed, brief.scene_count, low, high),
        )

    def _ask(
        self,
        brief: Brief,
        prompt: str,
        schema: type[BaseModel],
        validate: Callable[[Any], Validated],
    ) -> list[SceneSpec]:
        from google.genai import types

        config = types.GenerateContentConfig(
            response_mime_type="application/json", response_schema=schema
        )
        problem = None
        for _ in range(1 + MAX_REASKS):
            contents = (
                prompt
                if problem is None
                else f"{prompt}\n\nYour last answer was rejected: {problem}. Answer again."
            )
            response = call_sdk(
                self.name,
                lambda contents=contents: self.client.models.generate_content(  # type: ignore[misc]
                    model=self.settings.gemini_model, contents=contents, config=config
                ),
            )
            specs, problem = validate(response.parsed)
            if problem is None:
                return specs
            log.warning("gemini plan rejected for project %s: %s", brief.project_id, problem)
        raise PermanentProviderError(f"gemini: unusable plan after a re-ask: {problem}")
