"""Planners and video providers, picked by name. SDKs are imported lazily, inside each provider."""

from __future__ import annotations

from mvpipe.errors import InvalidInput
from mvpipe.provider_names import LIPSYNC_PROVIDERS, VIDEO_PROVIDERS
from mvpipe.providers.base import LipSyncProvider, Planner, VideoProvider
from mvpipe.settings import PLANNERS, Settings


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
    from mvpipe.providers.replicate_lipsync import ReplicateLipSyncProvider

    return ReplicateLipSyncProvider(settings)


def build_planner(name: str, settings: Settings) -> Planner:
    if name not in PLANNERS:
        raise InvalidInput(f"unknown planner {name!r}; expected one of {PLANNERS}")
    if name == "local":
        from mvpipe.providers.local import LocalPlanner

        return LocalPlanner(settings)
    from mvpipe.providers.gemini import GeminiPlanner

    return GeminiPlanner(settings)
