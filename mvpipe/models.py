"""Validated inputs (specs) and read-only views of projects and scenes."""

from __future__ import annotations

import math
import re
import reprlib
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeGuard

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from mvpipe.errors import InvalidInput
from mvpipe.pricing import MICROS_PER_USD
from mvpipe.provider_names import VIDEO_PROVIDERS

MAX_SCENES = 999
MAX_TITLE = 200
MAX_CONCEPT = 20_000
MAX_PROMPT = 2_000
MAX_NEGATIVE_PROMPT = 1_000
MIN_DURATION, MAX_DURATION = 1, 30
#: The largest budget a project may set, in US dollars: a typo guard, not a business rule.
MAX_BUDGET_USD = 1_000_000
#: The longest wait a caller may ask for (a day), and the most projects one listing returns.
MAX_WAIT_SECONDS = 86_400.0
MAX_LIST_LIMIT = 1_000
DEFAULT_LIST_LIMIT = 100
#: Song containers mvpipe accepts, by the extension their stored key gets.
SONG_FORMATS = ("wav", "mp3", "m4a", "aac", "flac", "ogg")
SongFormat = Literal["wav", "mp3", "m4a", "aac", "flac", "ogg"]

#: Characters a terminal or a log reader acts on instead of showing (C0 but tab and newline,
#: DEL, C1, the Unicode line and paragraph separators, and Unicode's bidi controls: the
#: embeddings, overrides and isolates U+202A-U+202E and U+2066-U+2069, the marks U+200E, U+200F
#: and U+061C, which reorder what a terminal shows after them, "Trojan Source"): refused in
#: text a user gives, replaced (`printable`) in text from elsewhere.
CONTROL = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)

#: Why text a user gives is refused for holding a `CONTROL` character.
CONTROL_REFUSED = (
    "control characters (bidi controls too) other than newline and tab are not allowed"
)


def printable(text: str, *, one_line: bool = False) -> str:
    """`text` with each control character (`CONTROL`) shown as "?", so that text we did not
    write (a provider's reply) cannot drive the terminal or forge a log line that shows it;
    `one_line`: each newline a space too (an error's one line: `lastError`, a log line)."""
    text = CONTROL.sub("?", text)
    return text.replace("\n", " ") if one_line else text


class ProjectStatus(StrEnum):
    PENDING = "pending"  #: created, or cancelled with work left
    GENERATING_SCENES = "generating_scenes"  #: a run is planning the scenes
    PROCESSING = "processing"  #: a run is generating clips
    ASSEMBLING = "assembling"  #: every scene is done; the run is building the final video
    COMPLETED = "completed"  #: every scene has its clip
    FAILED = "failed"  #: planning failed, or a scene failed and nothing is left to do


class SceneStatus(StrEnum):
    PENDING = "pending"  #: waiting for a submission
    PROCESSING = "processing"  #: leased for submission, or its provider operation is running
    COMPLETED = "completed"  #: clip stored and recorded
    FAILED = "failed"  #: permanent provider error or attempts exhausted


def _clean_text(value: str) -> str:
    if CONTROL.search(value):
        raise ValueError(CONTROL_REFUSED)
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _clean_optional_text(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if CONTROL.search(value):
        raise ValueError(CONTROL_REFUSED)
    return value


Title = Annotated[str, Field(min_length=1, max_length=MAX_TITLE), AfterValidator(_clean_text)]
Concept = Annotated[str, Field(min_length=1, max_length=MAX_CONCEPT), AfterValidator(_clean_text)]
Prompt = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT), AfterValidator(_clean_text)]
NegativePrompt = Annotated[
    str | None,
    Field(default=None, max_length=MAX_NEGATIVE_PROMPT),
    AfterValidator(_clean_optional_text),
]
Sequence = Annotated[int, Field(ge=1, le=MAX_SCENES, strict=True)]


class SceneSpec(BaseModel):
    """What one scene should show; planners produce these and users may pass them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: Prompt
    negative_prompt: NegativePrompt = None
    #: the clip length; None: the provider's default. Creation refuses one the provider does
    #: not make; planning stores its shortest allowed length covering it (mvpipe.durations).
    duration_seconds: int | None = Field(
        default=None, ge=MIN_DURATION, le=MAX_DURATION, strict=True
    )
    #: The scene's slot in the song; planning sets it, from the song's beats.
    start_seconds: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    end_seconds: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    #: Whether the scene is lip-synced to the song (planning sets it, only with a song).
    lip_sync: bool = Field(default=False, strict=True)

    def model_post_init(self, context: Any, /) -> None:
        if (self.start_seconds is None) != (self.end_seconds is None):
            raise ValueError("start_seconds and end_seconds go together")
        if (
            self.start_seconds is not None
            and self.end_seconds is not None
            and self.end_seconds <= self.start_seconds
        ):
            raise ValueError("end_seconds must be after start_seconds")

    @property
    def song_bound(self) -> bool:
        """Whether the spec carries what only a song's slots can give."""
        return self.start_seconds is not None or self.lip_sync


class SongSpec(BaseModel):
    """A song that decoded and passed its checks; its key is built from these, never from names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    ext: SongFormat
    seconds: float = Field(gt=0, allow_inf_nan=False)


class ProjectSpec(BaseModel):
    """A validated creation request: everything is checked before anything is written.

    With a song, the song decides the scenes: `requested_scene_count` and `scenes` stay None.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: Title
    concept: Concept
    provider: str
    requested_scene_count: int | None = Field(default=None, ge=1, le=MAX_SCENES, strict=True)
    scenes: tuple[SceneSpec, ...] | None = None
    song: SongSpec | None = None
    lip_sync: bool = Field(default=False, strict=True)
    budget_micros: int | None = Field(default=None, ge=0, strict=True)

    def model_post_init(self, context: Any, /) -> None:
        if self.provider not in VIDEO_PROVIDERS:
            raise ValueError(
                f"unknown provider {self.provider!r}; expected one of {VIDEO_PROVIDERS}"
            )
        if self.song is not None:
            if self.requested_scene_count is not None or self.scenes is not None:
                raise ValueError("scene_count and scenes are not accepted with a song")
        elif self.requested_scene_count is None:
            raise ValueError("scene_count is required without a song")
        elif self.lip_sync:
            raise ValueError("lip_sync needs a song")
        if self.scenes is not None and len(self.scenes) != self.requested_scene_count:
            raise ValueError("scene_count and the number of scenes disagree")
        if self.scenes is not None and any(s.song_bound for s in self.scenes):
            raise ValueError("start_seconds, end_seconds and lip_sync come from a song's slots")


def budget_to_micros(value: object) -> int | None:
    """A budget in US dollars (None: unlimited) as integer micro-dollars, the stored unit."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"budget must be a number of US dollars, not {_shorten(value)}")
    if not math.isfinite(value) or not 0 <= value <= MAX_BUDGET_USD:
        raise InvalidInput(f"budget must be between 0 and {MAX_BUDGET_USD} US dollars")
    return round(value * MICROS_PER_USD)


def micros_to_usd(micros: int | None) -> float | None:
    return None if micros is None else micros / MICROS_PER_USD


class SceneView(BaseModel):
    sequence: int
    prompt: str
    negative_prompt: str | None
    duration_seconds: int
    start_seconds: float | None = None
    end_seconds: float | None = None
    status: SceneStatus
    original_video_clip_s3_key: str | None
    working_video_clip_s3_key: str | None
    lip_synced_video_clip_s3_key: str | None
    lip_sync: bool = False
    attempts: int
    lip_sync_attempts: int = 0
    last_error: str | None
    provider_operation_id: str | None
    lip_sync_operation_id: str | None = None
    cost_usd: float = 0.0
    completed_at: datetime | None


class ProjectView(BaseModel):
    project_id: str
    title: str
    concept: str
    provider: str
    status: ProjectStatus
    #: the scenes planned (0 before planning: `scenes` is empty then)
    scene_count: int
    #: the scenes asked for (`scene_count` once planned); None with a song (its beats decide)
    requested_scene_count: int | None = None
    completed_scenes: int
    failed_scenes: int
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    song_s3_key: str | None = None
    song_seconds: float | None = None
    timeline_s3_key: str | None = None
    lip_sync: bool = False
    final_video_s3_key: str | None = None
    budget_usd: float | None = None
    committed_cost_usd: float = 0.0
    scenes: list[SceneView]


class ProjectSummary(BaseModel):
    """A project in a listing: what tells it apart and how far it got (`ProjectView` has all)."""

    project_id: str
    title: str
    status: ProjectStatus
    created_at: datetime
    #: the planned scenes, or those asked for while the project is not planned yet; None: a
    #: song's project not planned yet (its beats will decide)
    scene_count: int | None
    completed_scenes: int
    failed_scenes: int


def is_project_id(value: object) -> TypeGuard[str]:
    """Project ids are canonical UUID4 strings; anything else never reaches a key."""
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return False
    return parsed.version == 4 and str(parsed) == value


def validate_project_id(value: object) -> str:
    """`value` if it is a project id (`is_project_id`), else `InvalidInput`."""
    if not is_project_id(value):
        raise InvalidInput(f"invalid project id: {_shorten(value)}")
    return value


def validate_run_id(value: object) -> str:
    """A run id is a UUID4 like a project id (`is_project_id`), else `InvalidInput`."""
    if not is_project_id(value):
        raise InvalidInput(f"invalid run id: {_shorten(value)}")
    return value


def validate_sequence(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SCENES:
        raise InvalidInput(f"invalid scene sequence: {_shorten(value)} (expected 1..{MAX_SCENES})")
    return value


def validate_seconds(
    value: object, what: str, *, maximum: float = MAX_WAIT_SECONDS, zero: bool = False
) -> float:
    """A wait in seconds: a finite number above 0 (or 0 itself when `zero`: look once) and at
    most `maximum` (a day by default)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not (value >= 0 if zero else value > 0)
        or value > maximum
    ):
        least = "0 or more" if zero else "above 0"
        raise InvalidInput(f"{what} must be a number of seconds {least} and at most {maximum:g}")
    return float(value)


def validate_limit(value: object, *, maximum: int = MAX_LIST_LIMIT) -> int:
    """How many items a listing returns: 1..`maximum`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidInput(f"limit must be a whole number from 1 to {maximum}: {_shorten(value)}")
    return value


def parse_scene_specs(scenes: list[SceneSpec | dict[str, Any]]) -> tuple[SceneSpec, ...]:
    """Scene items as specs, counted before any is validated: a huge list is refused at once."""
    if not isinstance(scenes, list | tuple):
        raise InvalidInput("scenes must be a list")
    if len(scenes) > MAX_SCENES:
        raise InvalidInput(f"a project has at most {MAX_SCENES} scenes, not {len(scenes)}")
    try:
        return tuple(s if isinstance(s, SceneSpec) else SceneSpec.model_validate(s) for s in scenes)
    except ValidationError as exc:
        raise InvalidInput(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    """One readable line per problem, without echoing huge inputs back."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "input"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def validate_status(value: object) -> ProjectStatus:
    """`value` as a project status, else `InvalidInput` naming it (shortened)."""
    if isinstance(value, str):  # anything else: the Enum's own error would print it whole
        try:
            return ProjectStatus(value)
        except ValueError:
            pass
    raise InvalidInput(f"unknown project status {_shorten(value)}")


def _shorten(value: object, limit: int = 60) -> str:
    try:
        text = repr(value)
    except RecursionError:  # data nested past the interpreter's depth: its outer levels
        text = reprlib.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
