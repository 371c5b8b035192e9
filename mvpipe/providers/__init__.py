"""Planners and video providers, picked by name. SDKs are imported lazily, inside each provider."""

from __future__ import annotations

import importlib
from typing import cast

from mvpipe.errors import ConfigurationError, InvalidInput
from mvpipe.providers.base import LipSyncProvider, Planner, VideoProvider
from mvpipe.settings import LIPSYNC_PROVIDERS, PLANNERS, VIDEO_PROVIDERS, Settings


def build_video_provider(name: str, settings: Settings) -> VideoProvider:
    if name not in VIDEO_PROVIDERS:
        raise InvalidInput(f"unknown provider {name!r}; expected one of {VIDEO_PROVIDERS}")
    if name == "local":
        from mvpipe.providers.local import LocalVideoProvider

        return LocalVideoProvider(settings)
    if name == "veo":
        from mvpipe.providers.veo import VeoVideoProvider

        return VeoVideoProvider(settings)
    from mvpipe.providers.replicate import ReplicateVideoProvider

    return ReplicateVideoProvider(settings)


def build_lipsync_provider(name: str, settings: Settings) -> LipSyncProvider:
    """The lip-sync provider `name` (`MVPIPE_LIPSYNC_PROVIDER`)."""
    if name not in LIPSYNC_PROVIDERS:
        raise InvalidInput(
            f"unknown lip-sync provider {name!r}; expected one of {LIPSYNC_PROVIDERS}"
        )
    if name == "local":
        from mvpipe.providers.local_lipsync import LocalLipSyncProvider

        return LocalLipSyncProvider(settings)
    try:  # imported by name: the module (and its SDK) is only needed when it is chosen
        module = importlib.import_module("mvpipe.providers.replicate_lipsync")
    except ModuleNotFoundError as exc:
        if exc.name != "mvpipe.providers.replicate_lipsync":
            raise
        raise ConfigurationError(
            "MVPIPE_LIPSYNC_PROVIDER=replicate is not available in this build; use local"
        ) from None
    return cast(LipSyncProvider, module.ReplicateLipSyncProvider(settings))


def build_planner(name: str, settings: Settings) -> Planner:
    if name not in PLANNERS:
        raise InvalidInput(f"unknown planner {name!r}; expected one of {PLANNERS}")
    if name == "local":
        from mvpipe.providers.local import LocalPlanner

        return LocalPlanner(settings)
    from mvpipe.providers.gemini import GeminiPlanner

    return GeminiPlanner(settings)
