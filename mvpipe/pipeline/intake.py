"""A new project's input, checked whole before anything is written: the brief, the scenes (each
at a clip length its provider makes) or the song (read, decoded and measured), the budget, the
provider. What it returns is what `pipeline.create` writes; bad input is `InvalidInput` and
nothing has touched the store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mvpipe import durations
from mvpipe.errors import InvalidInput
from mvpipe.media.slots import check_slot_count
from mvpipe.media.song import probe_song, read_song
from mvpipe.models import (
    MAX_SCENES,
    ProjectSpec,
    SceneSpec,
    SongSpec,
    budget_to_micros,
    describe_validation_error,
    parse_scene_specs,
)
from mvpipe.settings import Settings


@dataclass(frozen=True)
class Intake:
    """A validated project: its spec, and the song's bytes that `spec.song` describes."""

    spec: ProjectSpec
    song: bytes | None


def project_intake(
    settings: Settings,
    title: str,
    concept: str,
    *,
    scene_count: int | None = None,
    scenes: list[SceneSpec | dict[str, Any]] | None = None,
    provider: str | None = None,
    song: str | Path | bytes | None = None,
    lip_sync: bool = False,
    budget_usd: float | None = None,
) -> Intake:
    """The project `api.create_project` describes, every part checked (the song decoded whole,
    and refused when it is too long for a project's scenes), before any write. Hand-written
    scenes come back at their clip length, one the provider makes (`InvalidInput` for any
    other): the length their price is reserved on and the provider asked for."""
    specs = parse_scene_specs(scenes) if scenes is not None else None
    if scene_count is None and song is None:
        scene_count = len(specs) if specs is not None else settings.default_scenes
    budget_micros = budget_to_micros(budget_usd)
    data, song_spec = None, None
    if song is not None:
        data = read_song(song, max_bytes=settings.song_max_bytes)
        info = probe_song(
            data,
            min_seconds=settings.song_min_seconds,
            max_seconds=settings.song_max_seconds,
            max_bytes=settings.song_max_bytes,
        )
        song_spec = SongSpec(sha256=info.sha256, ext=info.ext, seconds=info.seconds)
    try:
        spec = ProjectSpec(
            title=title,
            concept=concept,
            provider=provider if provider is not None else settings.provider,
            requested_scene_count=scene_count,
            scenes=specs,
            song=song_spec,
            lip_sync=lip_sync,
            budget_micros=budget_micros,
        )
    except ValidationError as exc:
        raise InvalidInput(describe_validation_error(exc)) from None
    if song_spec is not None:
        check_song_scenes(settings, song_spec.seconds, spec.provider)
    if spec.scenes is not None:
        allowed = settings.durations_for(spec.provider)
        fitted = durations.hand_written(spec.scenes, spec.provider, allowed)
        spec = spec.model_copy(update={"scenes": tuple(fitted)})
    return Intake(spec, data)


def check_song_scenes(settings: Settings, seconds: float, provider: str) -> None:
    """Refuse a song too long for a project's scenes with `provider`'s longest slot (known from
    its length alone): `InvalidInput`, as `project_intake` refuses it."""
    check_slot_count(
        seconds,
        fps=settings.output_fps,
        max_seconds=settings.slot_max_seconds_for(provider),
        max_slots=MAX_SCENES,
    )
