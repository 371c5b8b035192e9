"""Gemini planning: structured output into pydantic, validated, with one bounded re-ask."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from mvpipe.errors import PermanentProviderError
from mvpipe.models import SceneSpec, describe_validation_error
from mvpipe.providers.base import Brief
from mvpipe.providers.genai_client import GenaiUser, call_sdk, gemini_client

log = logging.getLogger("mvpipe.gemini")

#: Re-asks after an answer that fails validation: one, so a confused model costs at most twice.
MAX_REASKS = 1


class PlannedScene(BaseModel):
    """The response schema the model fills (kept loose: validation happens after)."""

    prompt: str
    negative_prompt: str | None = None
    duration_seconds: int = Field(default=8)


class PlannedScenes(BaseModel):
    scenes: list[PlannedScene]


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


def validate_plan(
    planned: Any, count: int, min_seconds: int, max_seconds: int
) -> tuple[list[SceneSpec], str | None]:
    """The specs, or the reason the answer is unusable (fed back to the model once)."""
    if not isinstance(planned, PlannedScenes):
        return [], "the answer was not the requested JSON object"
    if len(planned.scenes) != count:
        return [], f"expected exactly {count} scenes, got {len(planned.scenes)}"
    specs = []
    for number, scene in enumerate(planned.scenes, start=1):
        if not min_seconds <= scene.duration_seconds <= max_seconds:
            return [], f"scene {number}: duration_seconds must be {min_seconds}..{max_seconds}"
        try:
            specs.append(
                SceneSpec(
                    prompt=scene.prompt.strip(),
                    negative_prompt=(scene.negative_prompt or "").strip() or None,
                    duration_seconds=scene.duration_seconds,
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
        from google.genai import types

        low, high = self.settings.scene_seconds_min, self.settings.scene_seconds_max
        prompt = planning_prompt(brief, low, high)
        config = types.GenerateContentConfig(
            response_mime_type="application/json", response_schema=PlannedScenes
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
            specs, problem = validate_plan(response.parsed, brief.scene_count, low, high)
            if problem is None:
                return specs
            log.warning("gemini plan rejected for project %s: %s", brief.project_id, problem)
        raise PermanentProviderError(f"gemini: unusable plan after a re-ask: {problem}")
