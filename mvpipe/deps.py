"""Builds the store, Redis and provider clients lazily, once per process.

Nothing here runs at import. A forked worker child gets fresh clients (boto3 sessions and sockets
are not fork-safe) because the cache is keyed by process id. A worker on Celery's threads pool
runs its tasks in threads of one process: the context and each provider are built once, under a
lock, and the clients they hold are shared by the threads (botocore, redis-py and httpx clients
are thread-safe; each keeps a pool of connections).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import redis
from botocore.exceptions import BotoCoreError, ClientError
from pynamodb.exceptions import PynamoDBException

from mvpipe.errors import ConfigurationError, StoreUnavailable
from mvpipe.providers import build_lipsync_provider, build_planner, build_video_provider
from mvpipe.providers.base import LipSyncProvider, Planner, VideoProvider
from mvpipe.providers.limiter import QuotaLimiter
from mvpipe.settings import Settings, get_settings
from mvpipe.store.clips import ClipStore, is_outage
from mvpipe.store.dynamo import Table, refused
from mvpipe.store.pauses import credentials_missing, no_credentials
from mvpipe.store.projects import ProjectStore
from mvpipe.store.runboard import RunBoard, quick_redis
from mvpipe.store.scenes import SceneStore
from mvpipe.store.songs import SongStore

T = TypeVar("T")


@dataclass
class Context:
    settings: Settings
    table: Table
    projects: ProjectStore
    scenes: SceneStore
    clips: ClipStore
    redis: redis.Redis
    limiter: QuotaLimiter
    board: RunBoard
    songs: SongStore
    #: the board on a quick client (`quick_redis`): for the marks only a wait depends on
    quick_board: RunBoard
    _providers: dict[str, VideoProvider] = field(default_factory=dict)
    _planners: dict[str, Planner] = field(default_factory=dict)
    _lipsync: LipSyncProvider | None = None
    _ready: bool = False
    #: Held while a provider is built: threads of one process build each one once.
    _building: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def video_provider(self, name: str) -> VideoProvider:
        return self._once(self._providers, name, lambda: build_video_provider(name, self.settings))

    def lipsync_provider(self) -> LipSyncProvider:
        """The lip-sync provider (`MVPIPE_LIPSYNC_PROVIDER`), whatever the video provider."""
        if self._lipsync is None:
            with self._building:
                if self._lipsync is None:
                    self._lipsync = build_lipsync_provider(
                        self.settings.lipsync_provider, self.settings
                    )
        return self._lipsync

    def planner(self) -> Planner:
        name = self.settings.planner
        return self._once(self._planners, name, lambda: build_planner(name, self.settings))

    def _once(self, built: dict[str, T], name: str, build: Callable[[], T]) -> T:
        """`built[name]`, built by the first thread to ask (double-checked under the lock)."""
        found = built.get(name)
        if found is None:
            with self._building:
                found = built.get(name)
                if found is None:
                    found = built[name] = build()
        return found

    def close(self) -> None:
        """Close the store and Redis clients' connections: for a context built for a while
        (a command, a check), not the process's own (`get_context`), which lives as long."""
        self.table.close()
        self.clips.client.close()
        self.redis.close()
        self.quick_board.client.close()

    def ensure_storage(self) -> None:
        """Create table and bucket on first use (idempotent, race-safe).

        A refusal (credentials, permissions, a name the service rejects) is a
        `ConfigurationError`; no answer at all, or one that says "later" (a 5xx, throttling:
        as the store classifies them), is `StoreUnavailable`."""
        if self._ready:
            return
        s = self.settings
        for what, ensure in (
            (f"table {s.table} at {s.dynamodb_endpoint or 'AWS'}", self.table.ensure),
            (f"bucket {s.bucket} at {s.s3_endpoint or 'AWS'}", self.clips.ensure),
        ):
            try:
                ensure()
            except (ClientError, PynamoDBException) as exc:
                later = is_outage(exc) if isinstance(exc, ClientError) else not refused(exc)
                if later:
                    raise StoreUnavailable(
                        f"the {what} is busy or failing: {exc}; retry later"
                    ) from exc
                raise ConfigurationError(
                    f"could not create or open the {what}: {exc}; check AWS credentials, "
                    "permissions and MVPIPE_TABLE / MVPIPE_BUCKET / MVPIPE_AWS_REGION"
                ) from exc
            except BotoCoreError as exc:
                raise StoreUnavailable(
                    f"could not reach the {what}: {exc}; start it (`mvpipe stack` runs one "
                    "locally) or check MVPIPE_DYNAMODB_ENDPOINT / MVPIPE_S3_ENDPOINT, then retry"
                ) from exc
        self._ready = True


def build_context(settings: Settings) -> Context:
    try:  # building a client resolves a profile and credentials: one not there raises here
        table, clips = Table(settings), ClipStore(settings)
    except BotoCoreError as exc:
        if credentials_missing(exc):
            raise no_credentials("the store", exc) from exc
        raise
    client = redis.Redis.from_url(
        settings.mvpipe_redis_url,
        socket_timeout=settings.store_timeout_seconds,
        socket_connect_timeout=settings.store_timeout_seconds,
        health_check_interval=10,
        retry_on_timeout=True,
    )
    return Context(
        settings=settings,
        table=table,
        projects=ProjectStore(table),
        scenes=SceneStore(table),
        clips=clips,
        redis=client,
        limiter=QuotaLimiter(client),
        board=RunBoard(client, ttl=settings.result_expires),
        songs=SongStore(clips, settings.table),
        quick_board=RunBoard(quick_redis(settings.mvpipe_redis_url)),
    )


_lock = threading.Lock()
_cache: tuple[int, Context] | None = None


def get_context() -> Context:
    global _cache
    with _lock:
        if _cache is None or _cache[0] != os.getpid():
            context = build_context(get_settings())
            context.ensure_storage()
            _cache = (os.getpid(), context)
        return _cache[1]


def reset_context() -> None:
    """Forget the process's clients (tests change the environment between stacks)."""
    global _cache
    with _lock:
        _cache = None
    get_settings.cache_clear()
