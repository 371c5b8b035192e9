"""Fixtures that start the real parts: redis-server, the moto state server, Celery workers.

The servers live for the session (each on a free port); each test that needs workers starts its
own with the configuration it drills, and the fixture stops it and clears what it left in Redis.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from hypothesis import settings

from bench.countingproxy import CountingProxy
from mvpipe.celery_app import app
from mvpipe.deps import reset_context
from mvpipe.devstack.localstack import LocalStack, Service, start_control_worker, start_worker
from tests.processes import Processes
from tests.warm_workers import WarmParent

# Property tests judge what they find, not how fast: on two busy cores an example may take longer
# than hypothesis's default 200 ms deadline, which would fail a correct test.
settings.register_profile("mvpipe", deadline=None)
settings.load_profile("mvpipe")

TEST_ENV = {
    "MVPIPE_TABLE": "mvpipe-test",
    "MVPIPE_BUCKET": "mvpipe-test-clips",
    "MVPIPE_LOCAL_LATENCY": "0.3",
    "MVPIPE_POLL_SECONDS": "0.2",
    "MVPIPE_BACKOFF_BASE": "0.2",
    "MVPIPE_BACKOFF_MAX": "2",
    "MVPIPE_LEASE_SECONDS": "60",
    "MVPIPE_PROVIDER_TIMEOUT_SECONDS": "10",
    # Warming song analysis costs each pool process ~4 s and ~240 MB: only song tests ask for it.
    "MVPIPE_WARM_MEDIA": "0",
}


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    # The app reads its configuration (its broker) once, the first time anything asks: a test
    # that did so before this fixture bound it to the default Redis for this whole process.
    assert not app.configured, "a test read the Celery app's configuration before the stack"
    stack = LocalStack(tmp_path_factory.mktemp("stack"))
    with stack.running():
        saved = dict(os.environ)
        os.environ.update(stack.env)
        os.environ.update(TEST_ENV)
        reset_context()
        try:
            yield stack
        finally:
            os.environ.clear()
            os.environ.update(saved)
            reset_context()


@pytest.fixture(scope="session")
def warm_parent(
    stack: LocalStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WarmParent]:
    """The interpreter each test's workers fork from, Celery and the heavy libraries imported
    once (a spawned worker spent ~1 s of its ~1.7 s start on them): each still runs with its
    test's own environment, argv and process group (`tests.warm_workers`)."""
    parent = WarmParent(tmp_path_factory.mktemp("warm"), dict(os.environ))
    yield parent
    parent.stop()


@pytest.fixture
def proxy(stack: LocalStack) -> Iterator[CountingProxy]:
    """A counting proxy in front of the state server (what a test's own context sends it)."""
    port = int(stack.env["MVPIPE_DYNAMODB_ENDPOINT"].rsplit(":", 1)[1])
    counting = CountingProxy(port)
    yield counting
    counting.stop()


@pytest.fixture(scope="session")
def redis_client(stack: LocalStack) -> redis.Redis:
    return redis.Redis.from_url(stack.env["MVPIPE_BROKER_URL"])


@pytest.fixture
def processes() -> Iterator[Processes]:
    """Processes a test starts in its body (a CLI command it signals, Flower, beat): every one
    stopped, its process group killed and waited on, after the test, however it ends."""
    started = Processes()
    try:
        yield started
    finally:
        started.stop_all()


@dataclass
class Workers:
    """A Celery worker pool started for one test, with its ledger and provider state.

    The worker starts in the background (~0.6 s: forked from `warm_parent`, it imports mvpipe's
    modules and forks its pool) while the test writes its projects and sends its messages,
    which wait in Redis until it consumes them. `service` waits until it is ready."""

    starting: Future[Service]
    ledger: Path
    env: dict[str, str]
    #: the control worker beside it (`localstack.CONTROL_QUEUES`), when the test asked for one
    control: Service | None = None

    @property
    def service(self) -> Service:
        return self.starting.result()


_counter = itertools.count()

#: Cuts and final videos at a small size keep media work cheap in every test's workers.
WORKERS_OUTPUT = {"MVPIPE_OUTPUT_SIZE": "160x90", "MVPIPE_OUTPUT_FPS": "12"}


@pytest.fixture
def start_workers(
    stack: LocalStack,
    redis_client: redis.Redis,
    warm_parent: WarmParent,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[..., Workers]]:
    # What a test that started no worker left queued (a song analysis its create asked for)
    # must not become this test's workers' work; this test's own messages come after this.
    _clear_broker(redis_client)
    started: list[Workers] = []
    # One thread: a test's workers become ready in the order it started them, as before.
    starter = ThreadPoolExecutor(1, thread_name_prefix="start-workers")

    def start(
        concurrency: int = 2,
        env: dict[str, str] | None = None,
        queues: str | None = None,
        control: bool = False,
        pool: str = "prefork",
        **settings: str,
    ) -> Workers:
        n = next(_counter)
        ledger = tmp_path / f"ledger-{n}.jsonl"
        overrides = {
            **WORKERS_OUTPUT,
            "MVPIPE_LOCAL_LEDGER": str(ledger),
            "MVPIPE_LOCAL_STATE": str(tmp_path / "local-provider.sqlite3"),
            "MVPIPE_STATE_DIR": str(tmp_path / "state"),
            **{f"MVPIPE_{k.upper()}": str(v) for k, v in settings.items()},
            **(env or {}),
        }
        for key, value in overrides.items():
            monkeypatch.setenv(key, value)
        reset_context()  # the test process (the API) sees what the workers see
        child_env = dict(os.environ)
        starting = starter.submit(
            start_worker,
            child_env,
            tmp_path / f"worker-{n}.log",
            concurrency=concurrency,
            name=f"w{n}",
            queues=queues,
            pool=pool,
            spawn=warm_parent.spawn,
        )
        workers = Workers(starting, Path(child_env["MVPIPE_LOCAL_LEDGER"]), child_env)
        started.append(workers)
        if control:
            # Both ready before the test sends anything: which of them takes a message is
            # what such a test is about.
            starting.result()
            workers.control = start_control_worker(
                child_env, tmp_path / f"control-{n}.log", name=f"c{n}", spawn=warm_parent.spawn
            )
        return workers

    yield start
    # Killed, not stopped: the test is over, and what a warm shutdown would hand back (its
    # reserved messages) is cleared below anyway. Celery's warm shutdown spends ~2 s joining
    # its pool, on every test that starts workers.
    starter.shutdown()  # every start ended: ready, or failed (and killed by `start_worker`)
    failed: list[BaseException] = []
    kills: list[Callable[[], None]] = []
    for workers in started:
        error = workers.starting.exception()
        if error is None:
            kills.append(workers.service.kill)
        else:
            failed.append(error)
        if workers.control is not None:
            kills.append(workers.control.kill)
    unstopped: list[BaseException] = []
    try:
        for kill in kills:  # each one, whatever another's kill raised
            try:
                kill()
            except Exception as exc:
                unstopped.append(exc)
    finally:  # nothing of this test's may reach the next one's workers or quota
        _clear_broker(redis_client)
        reset_context()
    if unstopped:
        raise RuntimeError("a test's worker could not be stopped") from unstopped[0]
    if failed:
        # A test that never read `service` would only have timed out waiting for its
        # project: say why, beside that failure.
        raise RuntimeError("a test's worker failed to start") from failed[0]


@pytest.fixture
def broker_cleared(redis_client: redis.Redis) -> Iterator[None]:
    """For a test that runs steps in its own process: the quota slots, marks and messages it
    leaves are cleared after it, as `start_workers` clears its workers'. A job it leaves
    unpolled keeps its quota slot for the liveness (~30 s), which the next test's scenes
    would wait out."""
    yield
    _clear_broker(redis_client)


def _clear_broker(client: redis.Redis) -> None:
    """Nothing one test queued or reserved may leak into the next test's workers or quota."""
    for pattern in ("mvpipe:*", "unacked*"):
        keys = list(client.scan_iter(pattern))
        if keys:
            client.delete(*keys)
    client.delete("mvpipe.plan", "mvpipe.video", "mvpipe.media")
    for key in client.scan_iter("mvpipe.*"):
        client.delete(key)
