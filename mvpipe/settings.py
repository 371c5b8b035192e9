"""All configuration, read once per process from `MVPIPE_*` environment variables."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from mvpipe.errors import ConfigurationError, InvalidInput
from mvpipe.frame_size import parse_size
from mvpipe.pricing import Prices, parse_prices, price_micros, price_of
from mvpipe.provider_names import VIDEO_PROVIDERS

PLANNERS = ("local", "gemini")

#: Poll intervals a provider gets when `MVPIPE_POLL_SECONDS` is unset.
DEFAULT_POLL_SECONDS = {"local": 0.5, "veo": 10.0, "replicate": 2.0}

# The quota's keys (`providers/limiter.py`): constants, not settings, because every worker
# must give them the same life whatever its own settings.
#: Every entry in the quota's keys is dead this long before its key expires, at least.
KEY_SLACK_SECONDS = 60
#: The least time a process busy on a pool goes between two renewals of the keys that count
#: held slots (a step renews them only when the renewal its process remembers would not
#: outlive a slot it writes by `KEY_SLACK_SECONDS`).
RENEW_SECONDS = 60
#: How long a renewal (or a remake) keeps the keys that count held slots: one life shared by
#: every worker, whatever its settings, so the renewal a process remembers is never later than
#: the keys' expiry (keys another worker remade since were remade later, to last as long).
COUNT_KEEP_SECONDS = 3600
#: The longest slot a step may write: one that fits under the counting keys' life with the
#: slack and a renewal's spacing (`Settings` refuses a poll's liveness above it at start).
MAX_SLOT_SECONDS = COUNT_KEEP_SECONDS - KEY_SLACK_SECONDS - RENEW_SECONDS

#: What a poll's liveness mark (`Settings.liveness_seconds`) is made of, to name in a refusal.
LIVENESS_SETTINGS = "MVPIPE_BACKOFF_MAX + 3 x MVPIPE_POLL_SECONDS + MVPIPE_LIVENESS_SLACK_SECONDS"

#: In-flight jobs per provider when `MVPIPE_PROVIDER_CONCURRENCY` is unset (local: its own cap).
DEFAULT_CONCURRENCY = {"veo": 4, "replicate": 4}
#: Clip lengths (whole seconds) a provider can make; Replicate's come from settings.
FIXED_DURATIONS = {"veo": (4, 6, 8), "local": tuple(range(1, 31))}
#: Any clip a provider is asked for lies in this range (the scene spec's bounds).
CLIP_SECONDS_RANGE = (1, 30)
MIB = 1024 * 1024
#: `MVPIPE_MAX_CLIP_BYTES` bounds: above any real clip's smallest size, and at most what a
#: worker can hold in memory (twice, while the bytes are joined) beside its other threads
CLIP_BYTES_RANGE = (MIB, 2048 * MIB)
#: The longest pause a store call takes between two tries through an outage (seconds).
STORE_RETRY_PAUSE_MAX = 2.0


class Settings(BaseSettings):
    """One object for every knob; defaults suit the local stack."""

    # No setting means anything as infinity or NaN (a wait, a price, a limit): refused at start.
    model_config = SettingsConfigDict(env_prefix="MVPIPE_", extra="ignore", allow_inf_nan=False)

    broker_url: str = "redis://127.0.0.1:6379/0"
    result_backend: str = "redis://127.0.0.1:6379/1"
    redis_url: str | None = None
    dynamodb_endpoint: str | None = None
    aws_region: str = "us-east-1"
    table: str = Field(default="mvpipe", pattern=r"^[A-Za-z0-9_.-]{3,255}$")
    s3_endpoint: str | None = None
    bucket: str = Field(default="mvpipe-clips", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    provider: str = "local"
    planner: str = "local"
    lease_seconds: float = Field(default=120.0, gt=0)
    provider_concurrency: int | None = Field(default=None, ge=1, le=10_000)
    max_attempts: int = Field(default=5, ge=1, le=100)
    #: polls of one operation in a row that crash (an unclassified error, a killed worker)
    #: before its scene is failed; a poll answered (even with a transient error) resets it
    max_poll_errors: int = Field(default=10, ge=1, le=1000)
    #: a paid job still running this long after its claim is stopped (where the provider can)
    #: and its stage failed: far above any real provider's time, so only a stuck job meets it
    max_job_seconds: float = Field(default=2 * 3600.0, ge=1, le=7 * 24 * 3600)
    poll_seconds: float | None = Field(default=None, gt=0)
    backoff_base: float = Field(default=1.0, gt=0)
    backoff_max: float = Field(default=60.0, gt=0)
    reconcile_seconds: float = Field(default=60.0, gt=0)
    #: the share of `reconcile_seconds` one beat pass may spend examining projects; the rest
    #: wait for the next pass (it starts where this one stopped), so under load a pass never
    #: keeps a worker process busy from one beat to the next (the full sweep's round too)
    reconcile_share: float = Field(default=0.2, gt=0, le=1)
    #: while a round of the full sweep is on, the share of a pass's budget its active turn
    #: leaves to the round (which also takes what the active turn leaves unspent)
    full_sweep_share: float = Field(default=0.5, gt=0, lt=1)
    default_scenes: int = Field(default=8, ge=1, le=999)
    #: how old a song, scene item or clip object that nothing records must be before reconcile
    #: deletes it: it must exceed a create's worst case (`create_worst_seconds`, the store's
    #: retries and timeouts), or a create still writing its METADATA loses its song and scenes;
    #: 0 is allowed (tests), and a pass logs a warning while it is that short
    orphan_grace_seconds: float = Field(default=3600.0, ge=0)
    #: a run none of whose steps marked it alive for this long is taken over by reconcile: at
    #: least the longest countdown between two of its steps (`longest_countdown`, checked at
    #: start); a run whose scenes are queued for their cut stays alive for their queue's wait
    run_stale_seconds: float = Field(default=300.0, gt=0)
    #: while a run's final video is built, its liveness is the builder's alone, this long (at
    #: most `run_stale_seconds`) and kept by its process: a builder lost with its worker is
    #: taken over this long after, not the run's staleness (or its last cut's queue window)
    assembly_alive_seconds: float = Field(default=30.0, gt=0)
    stray_sweep_seconds: float = Field(default=3600.0, gt=0)
    #: how often reconcile also checks completed, failed and long-idle pending projects (beat:
    #: a round over passes, `full_sweep_share` of each; inline: all at once)
    full_sweep_seconds: float = Field(default=3600.0, gt=0)
    liveness_slack_seconds: float = Field(default=30.0, ge=0)
    #: how long a scene queued for its next stage (the cut, on mvpipe.media) counts as worked
    #: on before reconcile resumes it: above the media queue's longest wait, so a backlog of cuts
    #: is not duplicated (a crash mid-cut is resumed after the ordinary liveness; a worker lost
    #: with a reserved cut message, after this); the scene's run is kept alive as long
    stage_queue_seconds: float = Field(default=300.0, gt=0)
    #: how long after its project's creation sent a song's analysis a run's planning waits for
    #: it (its mark in Redis) rather than analyse the song itself: the media queue's longest
    #: wait (`stage_queue_seconds`) and a minute for the analysis; a message lost without its
    #: end marked costs a run at most this (0: never wait; the mark lasts an hour at most)
    analysis_wait_seconds: float = Field(default=360.0, ge=0, le=3600)
    flower_user: str | None = None
    flower_password: SecretStr | None = None

    veo_model: str = "veo-3.0-generate-001"
    veo_aspect_ratio: str = "16:9"
    #: `gs://bucket/prefix` for Veo to write its videos to (unset: bytes come back inline)
    veo_output_gcs_uri: str | None = Field(
        default=None, pattern=r"^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/[A-Za-z0-9._/-]*)?$"
    )
    replicate_model: str = "minimax/video-01"
    replicate_input: dict[str, Any] = Field(default_factory=dict)
    #: the model's input that takes the clip length (empty: the model takes none)
    replicate_duration_input: str = Field(default="duration", pattern=r"^[A-Za-z0-9_]{0,64}$")
    gemini_model: str = "gemini-2.5-flash"
    lipsync_provider: str = Field(default="local", pattern=r"^(local|replicate)$")
    #: `owner/name` or `owner/name:version` of the Replicate lip-sync model
    lipsync_model: str = Field(
        default="sync/lipsync-2", pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(:[A-Za-z0-9]+)?$"
    )
    #: `MVPIPE_LIPSYNC_INPUT`: the lip-sync model's extra inputs (e.g. `sync_mode`), JSON
    lipsync_input: dict[str, Any] = Field(default_factory=dict)
    #: in-flight lip-sync jobs: their own quota pool, apart from video jobs
    lipsync_concurrency: int = Field(default=4, ge=1, le=10_000)
    #: how long a presigned input URL of a lip-sync job stays valid: longer than a job may sit
    #: queued at its provider before it fetches its inputs (SigV4 allows 7 days at most; with
    #: temporary credentials a URL dies with their session token anyway)
    lipsync_url_seconds: int = Field(default=6 * 3600, ge=60, le=7 * 24 * 3600)
    #: `MVPIPE_PRICES`, a JSON object over the built-in table (see mvpipe.pricing)
    prices: Annotated[dict[str, Any], NoDecode] = Field(default_factory=dict)
    #: `price_table`, with the `prices` it was parsed from
    _price_table_of: tuple[dict[str, Any], Prices] | None = PrivateAttr(default=None)
    genai_base_url: str | None = None
    replicate_base_url: str | None = None
    #: the scene lengths the Gemini planner is asked to keep within (not a provider's clip
    #: lengths: each scene is made at its provider's shortest clip that covers it)
    scene_seconds_min: int = Field(default=4, ge=1, le=30)
    scene_seconds_max: int = Field(default=8, ge=1, le=30)
    provider_timeout_seconds: float = Field(default=30.0, gt=0)
    #: the largest output of a provider's job (a clip) a worker reads into memory; a larger
    #: one is refused (the job is paid, its output is not stored) rather than exhausting it
    max_clip_bytes: int = Field(default=512 * MIB)
    #: how long one output download may take in all (each read is bounded by the provider
    #: timeout, but a server sending a byte just inside it would hold a worker for ever); below
    #: the visibility timeout, or the task's message is handed to a second worker meanwhile
    download_timeout_seconds: float = Field(default=300.0, ge=1, le=3600)
    store_timeout_seconds: float = Field(default=10.0, gt=0)
    #: how long one store call is retried through an outage before it reports `StoreUnavailable`
    store_retry_seconds: float = Field(default=30.0, gt=0)
    #: HTTP connections a process keeps open per store client (DynamoDB, S3): at least the
    #: worker's thread count on Celery's threads pool, or the threads beyond it open and drop
    #: a connection per call (botocore's default is 10; connections open only when used)
    store_connections: int = Field(default=32, ge=1, le=1024)

    song_min_seconds: float = Field(default=5.0, gt=0)
    song_max_seconds: float = Field(default=600.0, gt=0, le=3 * 3600)
    song_max_bytes: int = Field(default=50 * 1024 * 1024, ge=1024, le=2 * 1024**3)
    slot_min_seconds: float = Field(default=2.0, gt=0, le=30)
    # Unset: a slot may be as long as the provider's longest clip (local: 30 s); a lower cap
    # gives a faster-cut video.
    slot_max_seconds: float | None = Field(default=None, gt=0, le=30)
    # Load and compile song analysis when a worker process that consumes mvpipe.media starts
    # (about 4 s and 240 MB per process), so no task pays for it.
    warm_media: bool = True
    output_size: str = Field(default="1280x720", pattern=r"^[0-9]{2,4}x[0-9]{2,4}$")
    output_fps: int = Field(default=24, ge=1, le=120)
    # NoDecode: "6" or "5,10" is as welcome as the JSON list "[5, 10]".
    replicate_durations: Annotated[list[int], NoDecode] = Field(default_factory=lambda: [6])

    local_latency: float = Field(default=2.0, ge=0)
    #: each local job's run time is `local_latency` spread by up to this share of it either way
    #: (0: every job the same): real providers' times vary, so jobs started together do not all
    #: finish together
    local_latency_jitter: float = Field(default=0.0, ge=0, le=1)
    #: the jitter's draws are a pure function of this seed and each job (`latency_draw`), so a
    #: bench row with a jitter can be repeated exactly
    local_latency_seed: int = Field(default=0, ge=0, le=2**63 - 1)
    local_max_concurrent: int = Field(default=8, ge=1)
    local_state: Path | None = None
    local_faults: str = ""
    local_ledger: Path | None = None
    #: the longest clip the local provider renders (unset: the length asked for, as a real
    #: provider makes it); tests and benchmarks cap it to keep renders short, and the cut
    #: holds a shorter clip's last frame to its slot
    local_clip_seconds: float | None = Field(default=None, gt=0, le=30)
    #: faults of the local lip-sync provider (same syntax as `MVPIPE_LOCAL_FAULTS`)
    local_lipsync_faults: str = ""
    #: how long a local lip-sync job takes (unset: `MVPIPE_LOCAL_LATENCY`)
    local_lipsync_latency: float | None = Field(default=None, ge=0)

    state_dir: Path = Path.home() / ".mvpipe"
    visibility_timeout: int = Field(default=3600, ge=60)
    result_expires: int = Field(default=7 * 24 * 3600, ge=3600)
    log_level: str = "INFO"

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        if value not in VIDEO_PROVIDERS:
            raise ValueError(f"unknown provider {value!r}; expected one of {VIDEO_PROVIDERS}")
        return value

    @field_validator("planner")
    @classmethod
    def _known_planner(cls, value: str) -> str:
        if value not in PLANNERS:
            raise ValueError(f"unknown planner {value!r}; expected one of {PLANNERS}")
        return value

    @field_validator("replicate_input", "lipsync_input", mode="before")
    @classmethod
    def _json_object(cls, value: Any, info: ValidationInfo) -> Any:
        name = f"MVPIPE_{(info.field_name or '').upper()}"
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except ValueError:
                raise ValueError(f"{name} must be a JSON object") from None
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a JSON object")
        return value

    @field_validator("lipsync_input")
    @classmethod
    def _no_media_inputs(cls, value: dict[str, Any]) -> dict[str, Any]:
        # The clip and the audio are the scene's own, sent as presigned URLs per job.
        taken = sorted({"video", "audio"} & set(value))
        if taken:
            raise ValueError(f"MVPIPE_LIPSYNC_INPUT must not set {', '.join(taken)}")
        return value

    @field_validator("prices", mode="before")
    @classmethod
    def _price_table(cls, value: Any) -> Any:
        try:
            parse_prices(value)
        except ConfigurationError as exc:
            raise ValueError(str(exc).removeprefix("MVPIPE_PRICES").lstrip(": ")) from None
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @field_validator("replicate_durations", mode="before")
    @classmethod
    def _duration_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else text.split(",")
        if isinstance(value, int):
            value = [value]
        return value

    @field_validator("replicate_durations")
    @classmethod
    def _durations_in_range(cls, value: list[int]) -> list[int]:
        low, high = CLIP_SECONDS_RANGE
        if not value or any(not low <= v <= high for v in value):
            raise ValueError(f"MVPIPE_REPLICATE_DURATIONS must be whole seconds in {low}..{high}")
        return sorted(set(value))

    @field_validator("max_clip_bytes")
    @classmethod
    def _clip_bytes_in_range(cls, value: int) -> int:
        low, high = CLIP_BYTES_RANGE
        if not low <= value <= high:
            raise ValueError(f"must be between {low} (1 MiB) and {high} (2 GiB) bytes, got {value}")
        return value

    @field_validator("output_size")
    @classmethod
    def _encodable_output_size(cls, value: str) -> str:
        # The output format's own rules (even, within H.264's sizes), checked at start.
        try:
            parse_size(value)
        except InvalidInput as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _song_and_slot_bounds(self) -> Settings:
        if self.scene_seconds_min > self.scene_seconds_max:
            # Gemini would be asked for scenes no length satisfies, and every plan refused.
            raise ValueError(
                f"MVPIPE_SCENE_SECONDS_MIN ({self.scene_seconds_min}) must be at most"
                f" MVPIPE_SCENE_SECONDS_MAX ({self.scene_seconds_max})"
            )
        if self.song_min_seconds >= self.song_max_seconds:
            raise ValueError("MVPIPE_SONG_MIN_SECONDS must be below MVPIPE_SONG_MAX_SECONDS")
        # Every provider must be able to fill the shortest slot, and a slot must span frames.
        if self.slot_min_seconds * self.output_fps < 1:
            raise ValueError("MVPIPE_SLOT_MIN_SECONDS must be at least one output frame")
        if self.slot_max_seconds is not None and self.slot_max_seconds < self.slot_min_seconds:
            raise ValueError("MVPIPE_SLOT_MAX_SECONDS must be at least MVPIPE_SLOT_MIN_SECONDS")
        for provider in VIDEO_PROVIDERS:
            if self.slot_min_seconds > max(self.durations_for(provider)):
                raise ValueError(
                    f"MVPIPE_SLOT_MIN_SECONDS exceeds the longest {provider} clip "
                    f"({max(self.durations_for(provider))} s)"
                )
        return self

    @model_validator(mode="after")
    def _replicate_asked_the_length_priced(self) -> Settings:
        # Without the input that takes the clip length the model makes a length of its own
        # choosing, while a per-second price is reserved on the scene's stored length.
        price = price_of(self.price_table, "replicate", self.replicate_model)
        if not self.replicate_duration_input and price is not None and price.per_second_micros:
            raise ValueError(
                f"replicate:{self.replicate_model} is priced per second, so"
                " MVPIPE_REPLICATE_DURATION_INPUT must name the input that takes the clip"
                " length (or price the model per job)"
            )
        return self

    @model_validator(mode="after")
    def _timeouts_below_lease(self) -> Settings:
        # A submit that outlives its lease could let a second worker submit the same scene.
        if self.provider_timeout_seconds * 2 > self.lease_seconds:
            raise ValueError("MVPIPE_PROVIDER_TIMEOUT_SECONDS must be at most half the lease")
        needed = self.store_timeout_seconds + self.submit_budget_seconds
        if needed > self.lease_seconds:
            raise ValueError(
                f"MVPIPE_LEASE_SECONDS ({self.lease_seconds:g}) must cover one submission: the"
                f" claim's reply, the submit and the record's reply ({needed:g} s with"
                " MVPIPE_STORE_TIMEOUT_SECONDS and MVPIPE_PROVIDER_TIMEOUT_SECONDS)"
            )
        if self.download_worst_seconds >= self.visibility_timeout:
            raise ValueError(
                "MVPIPE_DOWNLOAD_TIMEOUT_SECONDS (plus one provider timeout) must be below"
                " MVPIPE_VISIBILITY_TIMEOUT: a task still downloading would be run twice"
            )
        return self

    @model_validator(mode="after")
    def _countdowns_fit(self) -> Settings:
        # Only a run's steps mark it alive, and two of them may be a whole countdown apart: a
        # run whose mark lapses meanwhile is taken over while healthy (every reconcile pass
        # then adds a chain per open scene: polls multiply, cuts and finalizes are redone). A
        # message held for its countdown is handed to a second worker once the visibility
        # timeout passes: both would run it (a poll's chain, and every poll after, doubled).
        # Acknowledged late, a poll's message stays unacknowledged through its run too, and a
        # poll that finds its job done downloads the output in that run.
        longest = self.longest_countdown
        for name, value, margin, why in (
            ("MVPIPE_RUN_STALE_SECONDS", self.run_stale_seconds, 0.0, ""),
            (
                "MVPIPE_VISIBILITY_TIMEOUT",
                self.visibility_timeout,
                60 + self.download_worst_seconds,
                " (60 s, and the poll's download: MVPIPE_DOWNLOAD_TIMEOUT_SECONDS plus one"
                " provider timeout)",
            ),
        ):
            if value < longest + margin:
                above = f"{margin:g} s{why} above " if margin else ""
                raise ValueError(
                    f"{name} ({value:g}) must be at least {above}the longest countdown between"
                    f" a run's steps: {longest:g} s ({self.countdown_settings})"
                )
        return self

    @model_validator(mode="after")
    def _slots_fit_the_quota(self) -> Settings:
        # A job's quota slot lives as long as its poll's liveness mark, a submission's slot as
        # long as the claim's mark (`claim_mark_after`): each must fit under the life every
        # worker gives the keys that count slots.
        for provider in DEFAULT_POLL_SECONDS:
            liveness = self.liveness_seconds(provider)
            if liveness > MAX_SLOT_SECONDS:
                raise ValueError(
                    f"a {provider} job's quota slot would live {liveness:g} s"
                    f" ({LIVENESS_SETTINGS}), above the {MAX_SLOT_SECONDS} s the quota"
                    " allows: lower one of them"
                )
            submitting = self.claim_mark_after(liveness)
            if submitting > MAX_SLOT_SECONDS:
                raise ValueError(
                    f"a {provider} submission's quota slot would live {submitting:g} s"
                    " (MVPIPE_LEASE_SECONDS, the record's last try of twice"
                    " MVPIPE_STORE_TIMEOUT_SECONDS and MVPIPE_LIVENESS_SLACK_SECONDS), above the"
                    f" {MAX_SLOT_SECONDS} s the quota allows: lower one of them"
                )
        return self

    @model_validator(mode="after")
    def _liveness_covers_a_poll(self) -> Settings:
        # A poll marks its scene and refreshes its job's quota slot for `liveness_seconds`,
        # then calls the provider and may read the scene: a mark that lapses meanwhile lets
        # reconcile start a second poll chain, and a slot that lapses lets the quota's next
        # job in beside this one (a provider's 429s, attempts spent).
        call = self.provider_timeout_seconds + self.store_timeout_seconds
        short = min(DEFAULT_POLL_SECONDS, key=self.liveness_seconds)
        liveness = self.liveness_seconds(short)
        if liveness < call:
            slack = self.liveness_slack_seconds + call - liveness
            raise ValueError(
                f"a {short} poll's liveness mark would last {liveness:g} s ({LIVENESS_SETTINGS}),"
                f" less than the poll's own calls may take: {call:g} s"
                " (MVPIPE_PROVIDER_TIMEOUT_SECONDS and MVPIPE_STORE_TIMEOUT_SECONDS): raise"
                f" MVPIPE_LIVENESS_SLACK_SECONDS to {slack:g} at least"
            )
        return self

    @property
    def submit_budget_seconds(self) -> float:
        """The lease time a submission needs once claimed: the submit, then the record's reply."""
        return self.provider_timeout_seconds + self.store_timeout_seconds

    @property
    def create_worst_seconds(self) -> float:
        """How long after its song's upload a create's METADATA may still land: the scene
        items' write and METADATA's, each retried through an outage for `store_retry_seconds`
        and its last attempt answered within `store_timeout_seconds`."""
        return 2 * (self.store_retry_seconds + self.store_timeout_seconds)

    @property
    def mvpipe_redis_url(self) -> str:
        return self.redis_url or self.broker_url

    @property
    def local_state_path(self) -> Path:
        return self.local_state or self.state_dir / "local-provider.sqlite3"

    def poll_seconds_for(self, provider: str) -> float:
        return self.poll_seconds or DEFAULT_POLL_SECONDS[provider]

    @property
    def longest_countdown(self) -> float:
        """The longest a step's next message may wait: a backoff or a wait for a quota slot
        (at most `backoff_max`), or a poll without an announced end (the provider's whole poll
        interval, of any provider: a project may choose its own)."""
        return max(self.backoff_max, *(self.poll_seconds_for(p) for p in DEFAULT_POLL_SECONDS))

    @property
    def countdown_settings(self) -> str:
        """The settings `longest_countdown` comes from, to name in a refusal."""
        polls = "MVPIPE_POLL_SECONDS" if self.poll_seconds else "the providers' poll intervals"
        return f"MVPIPE_BACKOFF_MAX and {polls}"

    def durations_for(self, provider: str) -> list[int]:
        """The clip lengths `provider` can make, shortest first."""
        if provider == "replicate":
            return list(self.replicate_durations)
        if provider not in FIXED_DURATIONS:
            raise ValueError(f"unknown provider {provider!r}; expected one of {VIDEO_PROVIDERS}")
        return list(FIXED_DURATIONS[provider])

    def slot_max_seconds_for(self, provider: str) -> float:
        """The longest slot a scene of `provider` may fill: its longest clip, or the cap."""
        longest = float(max(self.durations_for(provider)))
        return longest if self.slot_max_seconds is None else min(longest, self.slot_max_seconds)

    @property
    def price_table(self) -> Prices:
        """`prices` parsed, once: it is read for every claim and estimate line. Kept with a
        copy of what it was parsed from, so a changed `prices` (a copy's update) is parsed
        anew. Shared: read it, never change it."""
        parsed = self._price_table_of
        if parsed is None or parsed[0] != self.prices:
            parsed = (copy.deepcopy(self.prices), parse_prices(self.prices))
            self._price_table_of = parsed
        return parsed[1]

    def video_model_for(self, provider: str) -> str:
        """The model a video provider's jobs run on (the key of its price)."""
        return {"veo": self.veo_model, "replicate": self.replicate_model}.get(provider, "video")

    def lipsync_model_for(self, provider: str) -> str:
        return "lipsync" if provider == "local" else self.lipsync_model

    def video_price_micros(self, provider: str, seconds: float, *, with_audio: bool = True) -> int:
        """One generation of `seconds` at `provider`, asked with audio or not."""
        model = self.video_model_for(provider)
        return price_micros(self.price_table, provider, model, seconds, with_audio=with_audio)

    def lipsync_price_micros(self, seconds: float) -> int:
        """One lip-sync of a slot `seconds` long."""
        provider = self.lipsync_provider
        return price_micros(self.price_table, provider, self.lipsync_model_for(provider), seconds)

    def concurrency_for(self, provider: str) -> int:
        if self.provider_concurrency is not None:
            return self.provider_concurrency
        return DEFAULT_CONCURRENCY.get(provider, self.local_max_concurrent)

    def liveness_seconds(self, provider: str) -> float:
        """How long a poll's liveness mark lasts: longer than the longest gap between polls."""
        return self.backoff_max + 3 * self.poll_seconds_for(provider) + self.liveness_slack_seconds

    @property
    def download_worst_seconds(self) -> float:
        """The longest one output download takes: its whole-download deadline, then one read
        (`provider_timeout_seconds`) past it, where it stops at the latest."""
        return self.download_timeout_seconds + self.provider_timeout_seconds

    @property
    def store_call_seconds(self) -> float:
        """The longest one store call takes through an outage before it reports
        `StoreUnavailable`: its retries, the pause before its last try, and that try's timeout."""
        return self.store_retry_seconds + STORE_RETRY_PAUSE_MAX + self.store_timeout_seconds

    def owed_write_seconds(self, provider: str) -> float:
        """How long a step that owes a write for paid work (a job's record, a lease's
        give-back) marks its scene alive: its store call through an outage, then the outage
        retry's countdown and slack (`liveness_seconds`), so the mark outlasts the gap to the
        next redo and reconcile never frees the scene for a second paid claim meanwhile."""
        return self.owed_after(self.liveness_seconds(provider))

    def owed_after(self, liveness_seconds: float) -> float:
        """`owed_write_seconds` of a provider whose liveness mark lasts `liveness_seconds`."""
        return liveness_seconds + self.store_call_seconds

    def claim_mark_after(self, liveness_seconds: float) -> float:
        """How long the mark set just before a paid claim lasts, for a provider whose liveness
        mark lasts `liveness_seconds`: past the lease's end and the reply of the record's last
        try (the record retries no call after the lease ends, and a try takes at most its
        connection's and its reply's timeouts), plus the slack. A failed record then
        marks the scene for the owed write (`owed_after`); a claim mark that lapsed first (the
        default liveness of every provider is shorter than the lease) would leave a moment
        with neither a live lease nor a mark, when reconcile could free the scene for a second
        paid claim."""
        last_try = 2 * self.store_timeout_seconds
        return max(liveness_seconds, self.lease_seconds + last_try + self.liveness_slack_seconds)


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings; tests clear the cache after changing the environment.

    Bad values are a `ConfigurationError` naming each variable to fix."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigurationError(f"invalid settings: {describe(exc)}") from None
    except SettingsError as exc:  # a value that is not even parseable (e.g. malformed JSON)
        raise ConfigurationError(f"invalid settings: {exc}; check the MVPIPE_* variables") from None


def describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        name = "_".join(str(p) for p in err["loc"]).upper()
        message = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"MVPIPE_{name}: {message}" if name else message)
    return "; ".join(parts)
