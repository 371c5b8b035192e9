"""The shared quota limiter and the twin-step guard, against the real redis-server."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import cast

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from mvpipe.deps import build_context
from mvpipe.errors import ConfigurationError, InvalidInput
from mvpipe.pipeline.execution import Execution
from mvpipe.pipeline.quota_slots import QuotaSlots
from mvpipe.pipeline.stage_provider import VideoGeneration
from mvpipe.pipeline.stages import GENERATE
from mvpipe.providers.base import VideoProvider
from mvpipe.providers.fairness import ProjectLine, admit, allot, check_lines
from mvpipe.providers.limiter import (
    QuotaLimiter,
    QuotaSnapshot,
    SlotDecision,
    job_member,
    member_project,
    require_redis_version,
    slot_member,
)
from mvpipe.settings import (
    COUNT_KEEP_SECONDS,
    KEY_SLACK_SECONDS,
    MAX_SLOT_SECONDS,
    get_settings,
)
from mvpipe.store.runboard import RunBoard
from tests.helpers import commands_under, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def limiter(redis_client: redis.Redis) -> QuotaLimiter:
    return QuotaLimiter(redis_client, prefix=f"test:{uuid.uuid4()}")


def ask(
    limiter: QuotaLimiter, member: str, park: str | None = None, line_ttl: float = 600
) -> SlotDecision:
    return limiter.acquire("local", member, limit=2, ttl=600, line_ttl=line_ttl, park=park)


def hold(limiter: QuotaLimiter, member: str, moved_from: str | None = None) -> bool:
    return limiter.hold("local", member, ttl=600, moved_from=moved_from)


def test_a_release_wakes_only_the_waiters_entitled_to_the_freed_slot(
    limiter: QuotaLimiter,
) -> None:
    assert ask(limiter, "a:1").granted and ask(limiter, "b:1").granted
    assert ask(limiter, "c:1", park="wake c").place == 1
    assert ask(limiter, "d:1", park="wake d").place == 2
    assert not ask(limiter, "e:1").granted  # waits on its own timer, parks nothing

    assert limiter.release("local", "a:1", limit=2) == ["wake c"]
    # Handed out once: a second release of nothing, before c arrives, wakes no one else,
    # because the one free slot is c's.
    assert limiter.release("local", "a:1", limit=2) == []
    assert ask(limiter, "d:1").granted is False  # d cannot take c's slot
    assert ask(limiter, "c:1").granted
    assert limiter.release("local", "b:1", limit=2) == ["wake d"]


def test_a_waiters_latest_parked_message_wins_and_a_grant_drops_it(
    limiter: QuotaLimiter,
) -> None:
    assert ask(limiter, "a:1").granted and ask(limiter, "b:1").granted
    ask(limiter, "c:1", park="c, step 1")
    ask(limiter, "c:1", park="c, step 2")  # its timed check ran first and waited again
    assert limiter.release("local", "a:1", limit=2) == ["c, step 2"]
    assert ask(limiter, "c:1").granted
    ask(limiter, "d:1", park="d:1")
    assert ask(limiter, "a:1").granted is False
    assert limiter.release("local", "c:1", limit=2) == ["d:1"]
    assert ask(limiter, "d:1").granted
    assert limiter.release("local", "b:1", limit=2) == []  # a, next in line, parked nothing
    assert ask(limiter, "a:1").granted


def test_waiters_that_stop_asking_lose_their_place_and_their_message(
    limiter: QuotaLimiter,
) -> None:
    assert ask(limiter, "a:1").granted and ask(limiter, "b:1").granted
    ask(limiter, "gone:1", park="never sent")
    ask(limiter, "c:1", park="wake c", line_ttl=0)  # every waiter seen before now is stale
    assert limiter.release("local", "a:1", limit=2) == ["wake c"]


def test_the_first_copy_of_a_step_owns_it_and_its_redelivery_too(
    redis_client: redis.Redis,
) -> None:
    board = RunBoard(redis_client, prefix=f"test:{uuid.uuid4()}")
    assert board.first_copy("task", 3, "timed", 60)
    assert not board.first_copy("task", 3, "woken", 60)
    assert board.first_copy("task", 3, "timed", 60)  # the same copy, redelivered
    assert board.first_copy("task", 4, "woken", 60)  # the next step is a new race


def test_a_refreshed_slot_is_not_a_fresh_one(limiter: QuotaLimiter) -> None:
    first = ask(limiter, "a:1")
    assert first.granted and first.fresh
    again = ask(limiter, "a:1")  # a duplicate execution of the same scene
    assert again.granted and not again.fresh


def test_each_stored_job_has_a_slot_apart_from_its_scenes_and_the_scenes_other_jobs() -> None:
    scene = slot_member("p", 3)
    odd = "projects/x/operations/1:2|3"  # any text a provider may use as an id
    members = {
        scene,
        job_member("p", 3, "generate", "op-a"),
        job_member("p", 3, "generate", "op-b"),
        job_member("p", 3, "lipsync", "op-a"),
        job_member("p", 3, "generate", odd),
    }
    assert len(members) == 5
    assert {member_project(m) for m in members} == {"p"}
    assert job_member("p", 3, "generate", "op-a") == job_member("p", 3, "generate", "op-a")


def test_a_stored_job_moves_its_submission_slot_and_its_end_frees_only_its_own(
    limiter: QuotaLimiter,
) -> None:
    scene = slot_member("p", 1)
    kept, new = job_member("p", 1, "generate", "a"), job_member("p", 1, "generate", "b")
    # Job A (kept after a cancel) moves its scene's submission slot to its own: one slot
    assert ask(limiter, scene).granted
    assert hold(limiter, kept, moved_from=scene)
    assert limiter.snapshot("local").held == (kept,)
    # The scene's regeneration submits job B under a fresh submission slot, moved to B's own
    again = ask(limiter, scene)
    assert again.granted and again.fresh
    assert hold(limiter, new, moved_from=scene) and not hold(limiter, new)  # a poll refreshes it
    assert limiter.slots_held("local") == {"p": 2}
    # Two jobs in flight fill the pool: another project waits; A's end frees A's slot only
    assert ask(limiter, "q:1", park="wake q").place == 1
    assert limiter.release("local", kept, limit=2) == ["wake q"]
    assert set(limiter.snapshot("local").held) == {new}
    assert ask(limiter, "q:1").granted


def test_a_move_keeps_the_projects_count_and_its_turn_and_never_counts_a_job_twice(
    limiter: QuotaLimiter,
) -> None:
    first, second, waiter = slot_member("p", 1), slot_member("p", 2), slot_member("p", 3)
    job = job_member("p", 1, "generate", "a")
    assert ask(limiter, first).granted and ask(limiter, second).granted
    assert not ask(limiter, waiter, park="wake p 3").granted  # p waits: it has a turn
    assert ask(limiter, slot_member("q", 1), park="wake q").place == 1

    def line_of_p() -> ProjectLine:
        return next(line for line in limiter.snapshot("local").lines if line.project == "p")

    line = line_of_p()
    assert line.in_flight == 2
    # A rename: the same count, the same ticket and place in the rotation
    assert hold(limiter, job, moved_from=first)
    assert line_of_p() == line and set(limiter.snapshot("local").held) == {job, second}
    assert limiter.slots_held("local") == {"p": 2}
    # A redone move (the record's reply was lost): the job keeps its one slot, nothing freed
    assert not hold(limiter, job, moved_from=first)
    assert limiter.slots_held("local") == {"p": 2}
    # The scene's slot taken again by a duplicate, then moved onto the job's: one slot, not two
    assert hold(limiter, slot_member("p", 1)) and limiter.slots_held("local") == {"p": 3}
    assert not hold(limiter, job, moved_from=first)
    assert limiter.slots_held("local") == {"p": 2} and line_of_p() == line
    # The job's end frees its slot; q, with nothing in flight, goes first
    assert limiter.release("local", job, limit=2) == ["wake q"]
    assert limiter.slots_held("local") == {"p": 1}


def counting_keys(limiter: QuotaLimiter) -> list[str]:
    return [f"{limiter.prefix}:local:{part}" for part in ("slots", "inflight")]


def test_the_keys_that_count_slots_outlive_every_slot_written(
    limiter: QuotaLimiter, redis_client: redis.Redis
) -> None:
    counts = counting_keys(limiter)
    scene, job = slot_member("p", 1), job_member("p", 1, "generate", "a")
    assert ask(limiter, scene).granted
    keep = COUNT_KEEP_SECONDS
    assert all(keep - 1 <= redis_client.ttl(key) <= keep for key in counts)
    # Renewed a while ago by another process (this one, new, remembers no renewal): a move's
    # slot would not outlive them by the slack, so it renews them
    for key in counts:
        redis_client.expire(key, 600 + KEY_SLACK_SECONDS - 1)
    assert hold(QuotaLimiter(redis_client, prefix=limiter.prefix), job, moved_from=scene)
    assert all(keep - 1 <= redis_client.ttl(key) <= keep for key in counts)
    # A renewal never shortens them (a worker whose slots live longer made them last longer)
    for key in counts:
        redis_client.expire(key, keep + 100)
    assert not hold(QuotaLimiter(redis_client, prefix=limiter.prefix), job)
    assert all(keep + 99 <= redis_client.ttl(key) <= keep + 100 for key in counts)
    # Renewed lately by this process: a poll's refresh leaves them as they are
    for key in counts:
        redis_client.expire(key, keep - 5)
    assert not hold(limiter, job)
    assert all(redis_client.ttl(key) <= keep - 5 for key in counts)


def test_a_process_that_renewed_the_keys_lately_sends_no_expiry_or_ttl_read(
    limiter: QuotaLimiter, redis_client: redis.Redis
) -> None:
    scene, job = slot_member("p", 1), job_member("p", 1, "generate", "a")
    assert ask(limiter, slot_member("p", 2)).granted  # makes the keys, renews them

    def busy_pool() -> None:
        assert ask(limiter, scene).granted  # the project's second slot
        assert hold(limiter, job, moved_from=scene)  # its job stored: the move
        assert not hold(limiter, job)  # a poll's refresh
        assert limiter.release("local", job, limit=2) == []

    commands = commands_under(redis_client, limiter.prefix, busy_pool)
    assert "ZADD" in commands  # the steps are seen
    assert not {"EXPIRE", "PTTL", "TTL"} & set(commands)
    assert limiter.slots_held("local") == {"p": 1}


def test_a_key_a_step_makes_has_an_expiry_whatever_its_process_remembers(
    limiter: QuotaLimiter, redis_client: redis.Redis
) -> None:
    counts, keep = counting_keys(limiter), COUNT_KEEP_SECONDS
    scene, job = slot_member("p", 1), job_member("p", 1, "generate", "a")

    def expiring() -> bool:
        return all(keep - 1 <= redis_client.ttl(key) <= keep for key in counts)

    assert ask(limiter, scene).granted and expiring()  # renewed: remembered from here on
    # The pool emptied: the next slot makes both keys again
    limiter.release("local", scene, limit=2)
    assert redis_client.exists(*counts) == 0
    assert ask(limiter, scene).granted and expiring()
    # A job whose scene's slot is gone (its polls came late) makes them too, moving nothing
    limiter.release("local", scene, limit=2)
    assert hold(limiter, job, moved_from=scene) and expiring()
    # The counts lost while slots remain (they lapsed apart): a project's first count makes
    # them again
    redis_client.delete(counts[1])
    assert ask(limiter, slot_member("q", 1)).granted and expiring()
    redis_client.delete(counts[1])
    assert hold(limiter, job_member("r", 1, "generate", "b")) and expiring()


def test_a_running_job_counts_against_a_full_pool(limiter: QuotaLimiter) -> None:
    assert ask(limiter, "a:1").granted and ask(limiter, "b:1").granted
    # a job whose slot lapsed (its polls were late) still runs at the provider: it counts
    assert limiter.hold("local", job_member("c", 1, "generate", "x"), ttl=600)
    assert limiter.slots_held("local") == {"a": 1, "b": 1, "c": 1}
    assert not ask(limiter, "d:1", park="wake d").granted
    assert limiter.release("local", "a:1", limit=2) == []  # two must end before d's turn
    assert limiter.release("local", "b:1", limit=2) == ["wake d"]


def test_a_waiter_that_leaves_hands_its_turn_to_the_next_one(limiter: QuotaLimiter) -> None:
    assert ask(limiter, "a:1").granted and ask(limiter, "b:1").granted
    ask(limiter, "c:1", park="wake c")
    ask(limiter, "d:1", park="wake d")
    assert limiter.release("local", "a:1", limit=2) == ["wake c"]
    # c's run was cancelled: it leaves, and the free slot goes to d at once.
    assert limiter.leave("local", "c:1", limit=2) == ["wake d"]
    assert ask(limiter, "d:1").granted


def test_a_freed_slot_goes_to_the_project_with_the_fewest_in_flight(
    limiter: QuotaLimiter,
) -> None:
    big = [slot_member("big", n) for n in range(1, 6)]
    assert ask(limiter, big[0]).granted and ask(limiter, big[1]).granted
    assert ask(limiter, big[2], park="wake big 3").place == 1
    small = slot_member("small", 1)
    # A waiter of a project with nothing in flight goes before the big project's next scene,
    # though it asked later.
    assert ask(limiter, small, park="wake small 1").place == 1
    assert limiter.release("local", big[0], limit=2) == ["wake small 1"]
    assert ask(limiter, big[2]).granted is False
    assert ask(limiter, small).granted
    # One each in flight now: the big project's turn, in its own order.
    assert ask(limiter, big[3], park="wake big 4").place == 2
    assert limiter.release("local", big[1], limit=2) == ["wake big 3"]


def test_slots_of_a_dead_worker_free_themselves_and_every_key_expires(
    limiter: QuotaLimiter, redis_client: redis.Redis
) -> None:
    dead = slot_member("dead", 1)
    assert limiter.acquire("local", dead, limit=1, ttl=0.05, line_ttl=600).granted
    waiter = slot_member("alive", 1)
    wait_for(lambda: limiter.acquire("local", waiter, limit=1, ttl=600, line_ttl=600).granted)
    snapshot = limiter.snapshot("local")
    assert snapshot.held == (waiter,) and snapshot.lines == ()
    assert snapshot.in_flight("dead") == 0
    keys = list(redis_client.scan_iter(f"{limiter.prefix}:*"))
    assert keys and all(0 < redis_client.ttl(key) <= COUNT_KEEP_SECONDS for key in keys)


def test_members_that_name_no_project_are_rejected(limiter: QuotaLimiter) -> None:
    for member in ("no-colon", ":001", "a|b:001"):
        with pytest.raises(InvalidInput):
            ask(limiter, member)
        with pytest.raises(InvalidInput):
            limiter.release("local", member, limit=2)
    assert limiter.snapshot("local") == QuotaSnapshot((), (), frozenset())


def test_workers_whose_slots_live_apart_give_the_counting_keys_one_life(
    limiter: QuotaLimiter, redis_client: redis.Redis
) -> None:
    """A worker with long slots renewed the keys and remembers it; the pool empties and a worker
    with short slots makes them again: they must still outlive the long slot the first one
    writes next without renewing (they expired under it when each worker kept them for a life
    of its own)."""
    counts = counting_keys(limiter)
    long_lived = QuotaLimiter(redis_client, prefix=limiter.prefix)
    short_lived = QuotaLimiter(redis_client, prefix=limiter.prefix)

    def take(worker: QuotaLimiter, member: str, ttl: float) -> bool:
        return worker.acquire("local", member, limit=2, ttl=ttl, line_ttl=600).granted

    assert take(long_lived, slot_member("a", 1), 3000)
    long_lived.release("local", slot_member("a", 1), limit=2)
    assert redis_client.exists(*counts) == 0  # the pool emptied: the keys went with it
    assert take(short_lived, slot_member("b", 1), 100)  # made again by the other worker
    assert take(long_lived, slot_member("a", 2), 3000)
    [(_, last)] = redis_client.zrange(counts[0], -1, -1, withscores=True)
    for key in counts:
        assert time.time() + redis_client.pttl(key) / 1000 >= last + KEY_SLACK_SECONDS - 1


def test_a_slot_longer_than_the_counting_keys_life_is_refused_before_any_write(
    limiter: QuotaLimiter, redis_client: redis.Redis
) -> None:
    too_long = MAX_SLOT_SECONDS + 1
    with pytest.raises(ConfigurationError, match="does not fit under the quota keys' life"):
        limiter.acquire("local", "a:1", limit=2, ttl=too_long, line_ttl=60)
    with pytest.raises(ConfigurationError, match="does not fit under the quota keys' life"):
        limiter.hold("local", job_member("a", 1, "generate", "x"), ttl=too_long)
    assert list(redis_client.scan_iter(f"{limiter.prefix}:*")) == []
    assert limiter.acquire("local", "a:1", limit=2, ttl=MAX_SLOT_SECONDS, line_ttl=60).granted


def test_settings_whose_poll_liveness_outlives_the_quota_fail_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A job's slot lives as long as its poll's liveness: backoff + 3 polls + the slack.
    monkeypatch.setenv("MVPIPE_BACKOFF_MAX", "600")
    monkeypatch.setenv("MVPIPE_VISIBILITY_TIMEOUT", "7200")
    monkeypatch.setenv("MVPIPE_RUN_STALE_SECONDS", "3600")  # above the longest poll tried
    monkeypatch.setenv("MVPIPE_LIVENESS_SLACK_SECONDS", "30")
    fits = (MAX_SLOT_SECONDS - 600 - 30) / 3
    get_settings.cache_clear()
    try:
        monkeypatch.setenv("MVPIPE_POLL_SECONDS", str(fits + 1))
        with pytest.raises(ConfigurationError, match="MVPIPE_POLL_SECONDS"):
            get_settings()
        monkeypatch.setenv("MVPIPE_POLL_SECONDS", str(fits))
        assert get_settings().liveness_seconds("veo") == MAX_SLOT_SECONDS
    finally:
        get_settings.cache_clear()


class Named:
    """A video provider that is only named: the quota needs no call of it."""

    name = "local"
    can_cancel = False


def test_a_slot_granted_for_a_claim_is_not_reaped_while_its_holder_may_still_submit(
    redis_client: redis.Redis,
) -> None:
    # Given one slot, granted to scene A about to claim (the quota's clock is the test's)
    now = [time.time()]
    limiter = QuotaLimiter(redis_client, prefix=f"test:{uuid.uuid4()}", clock=lambda: now[0])
    settings = get_settings().model_copy(update={"provider_concurrency": 1})
    ctx = build_context(settings)
    ctx.limiter = limiter
    generation = VideoGeneration(cast(VideoProvider, Named()), settings)

    def scene(project: str) -> QuotaSlots:
        return QuotaSlots(Execution(ctx, project, 1, None, "local"), GENERATE, generation)

    a, b = scene("a"), scene("b")
    assert a.acquire_slot().granted
    # When A's claim, submit and record take as long as its lease lets them (a slow store
    # stretches the claim; the record's last try is answered past the lease's end), far
    # longer than a poll's liveness
    step = settings.lease_seconds + 2 * settings.store_timeout_seconds
    assert step > settings.liveness_seconds("local")
    now[0] += step
    # Then scene B still waits: A's slot was not reaped while A might still submit
    assert not b.acquire_slot().granted
    # And A's record moves the slot to its job's: one job in flight, within the limit
    a.hold_job_slot("op-a", moved=True)
    assert limiter.snapshot("local").held == (job_member("a", 1, "generate", "op-a"),)
    assert not b.acquire_slot().granted


def test_the_servers_redis_version_is_read_once_and_older_ones_are_refused(
    limiter: QuotaLimiter, redis_client: redis.Redis
) -> None:
    # The test's redis-server (7.x) passes, read by the first step only, by a script: no INFO
    def version_reads(act: Callable[[], object]) -> int:
        commands = commands_under(redis_client, "", act, whole=True)
        assert not any(c.upper().startswith("INFO") for c in commands)
        return sum(1 for c in commands if limiter._version.sha in c)

    assert version_reads(lambda: ask(limiter, "a:1")) >= 1  # (twice if the script was not loaded)
    assert version_reads(lambda: ask(limiter, "b:1")) == 0
    for recent in ("7.0.15", "7.2", "8.0.2", "10.0.0"):
        require_redis_version(recent)
    for old_or_unreadable in ("6.2.14", "5.0.7", "2.8", "", "seven", "7", "7.x.1", "v7.0.0", None):
        with pytest.raises(ConfigurationError, match="Redis 7 or later"):
            require_redis_version(old_or_unreadable)


def test_a_user_denied_the_dangerous_commands_runs_the_quota(redis_client: redis.Redis) -> None:
    # Given a least-privilege Redis user: every command but the `@dangerous` ones (INFO among
    # them), as operators give an application
    user, password = f"quota-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    redis_client.acl_setuser(
        user,
        enabled=True,
        passwords=[f"+{password}"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-@dangerous"],
    )
    kwargs = redis_client.connection_pool.connection_kwargs
    client = redis.Redis(kwargs["host"], kwargs["port"], username=user, password=password)
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.info("server")
        # Then its limiter checks the server and grants, moves and releases slots
        limiter = QuotaLimiter(client, prefix=f"test:{uuid.uuid4()}")
        scene, job = slot_member("a", 1), job_member("a", 1, "generate", "x")
        assert ask(limiter, scene).granted
        assert hold(limiter, job, moved_from=scene)
        assert limiter.snapshot("local").held == (job,)
        limiter.release("local", job, limit=2)
        assert limiter.snapshot("local").held == ()
    finally:
        client.close()
        redis_client.acl_deluser(user)


PROJECTS = ("p0", "p1", "p2", "p3")
MEMBERS = [slot_member(p, n) for p in PROJECTS for n in range(1, 7)]
#: each scene's stored jobs (two: one kept after a cancel, one of a regeneration)
JOBS = {
    slot_member(p, n): [job_member(p, n, "generate", op) for op in ("a", "b")]
    for p in PROJECTS
    for n in range(1, 7)
}
LIMITS = st.integers(1, 6)


#: The slot life of each of the machine's two worker processes (each renews the counting keys
#: on a timing of its own: the longer its slots, the more often)
TTLS = (3000.0, 2000.0)
#: How far the machine's clock may move in one example: less than any slot's or place in line's
#: life, so none lapses, and the rule's bookkeeping stays the pure rule's, while the counting keys
#: must be renewed a few times (each renewal lasts `COUNT_KEEP_SECONDS`)
TIME_BUDGET = 1800
LINE_TTL = 1900
PROCESSES = st.integers(0, len(TTLS) - 1)


#: The life left of each key (`KEYS`: `slots`, `inflight`, then the others), the last slot's
#: expiry ('': none) and the slots each project holds (`inflight`, as HGETALL answers it)
LIVES = """
local lives = {}
for i, key in ipairs(KEYS) do lives[i] = redis.call('PTTL', key) end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
return {lives, last[2] or '', redis.call('HGETALL', KEYS[2])}
"""


class FakeTime:
    """The clocks every process of the machine reads: the real ones moved on by `offset`."""

    def __init__(self) -> None:
        self.offset = 0.0

    def wall(self) -> float:
        return time.time() + self.offset

    def timer(self) -> float:
        return time.monotonic() + self.offset


class LimiterMachine(RuleBasedStateMachine):
    """Random requests, stored jobs, releases and departures from two worker processes whose
    slots live apart, against the real limiter, while time passes: each decision the Lua makes
    equals what the pure rule decides on the state read just before it, and the keys that
    count slots outlive every slot."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__()
        self.client = client
        self.prefix = f"test:{uuid.uuid4()}"
        self.time = FakeTime()
        self.limiters = [self.new_process() for _ in TTLS]
        self.limit = 1
        #: the quota as read after the last step (a new prefix: empty), the state the next
        #: step's decision is checked against
        self.state = QuotaSnapshot((), (), frozenset())
        #: every key the quota may write under the prefix (the teardown checks there are no
        #: others), so the invariants read them in one round trip, not by a scan
        base = f"{self.prefix}:local"
        parts = ("slots", "inflight", "seen", "parked", "order", "tickets", "turn")
        lines = [f"{base}:line:{project}" for project in PROJECTS]
        self.keys = [f"{base}:{part}" for part in parts] + lines
        self.read_lives = client.register_script(LIVES)

    def new_process(self) -> QuotaLimiter:
        return QuotaLimiter(
            self.client, prefix=self.prefix, clock=self.time.wall, timer=self.time.timer
        )

    def read(self) -> QuotaSnapshot:
        """The quota after a step, kept for the next one (one read a step)."""
        self.state = self.limiters[0].snapshot("local")
        return self.state

    # The limit may change between calls (a new setting rolled out): raising it frees several
    # slots at once, where the order among equals decides who gets the second one.
    @initialize(limit=LIMITS)
    def set_limit(self, limit: int) -> None:
        self.limit = limit

    @rule(limit=LIMITS)
    def change_limit(self, limit: int) -> None:
        self.limit = limit

    @rule(process=PROCESSES)
    def restart(self, process: int) -> None:
        """The process restarts: it remembers no renewal of the keys."""
        self.limiters[process] = self.new_process()

    @precondition(lambda self: self.time.offset < TIME_BUDGET)
    @rule(seconds=st.integers(1, 600))
    def time_passes(self, seconds: int) -> None:
        """Time passes for every process and every key alike: each key's life is shorter by as
        much, and one whose life ends is gone."""
        seconds = min(seconds, TIME_BUDGET - int(self.time.offset))
        self.time.offset += seconds
        lives, _, _ = self.lives()
        with self.client.pipeline(transaction=False) as pipe:
            for key, life in zip(self.keys, lives, strict=True):
                if life > seconds * 1000:
                    pipe.pexpire(key, life - seconds * 1000)
                elif life > 0:
                    pipe.delete(key)
            pipe.execute()
        self.read()

    def lives(self) -> tuple[list[int], float | None, dict[str, int]]:
        """Each key's life left (ms; -2: no such key, -1: no expiry), the last slot's expiry
        (None: no slot) and the slots each project holds, in one short script."""
        lives, last, counts = self.read_lives(keys=self.keys)
        held = {counts[i].decode(): int(counts[i + 1]) for i in range(0, len(counts), 2)}
        return [int(life) for life in lives], float(last) if last else None, held

    @rule(process=PROCESSES, member=st.sampled_from(MEMBERS), park=st.booleans())
    def request(self, process: int, member: str, park: bool) -> None:
        before = self.state
        message = member if park else None
        decision = self.limiters[process].acquire(
            "local", member, limit=self.limit, ttl=TTLS[process], line_ttl=LINE_TTL, park=message
        )
        after = self.read()
        if member in before.held:
            assert decision == SlotDecision(True, 0, False)
            return
        project = member_project(member)
        expected = admit(
            before.lines,
            project,
            member,
            in_flight=before.in_flight(project),
            free=self.limit - len(before.held),
        )
        assert (decision.granted, decision.place, decision.fresh) == (
            expected.granted,
            expected.place,
            expected.granted,
        )
        # A denied waiter's latest message stays parked; a granted one's is dropped.
        parked = (park or member in before.parked) and not decision.granted
        assert (member in after.parked) == parked

    @rule(
        process=PROCESSES,
        scene=st.sampled_from(MEMBERS),
        job=st.integers(0, 1),
        moved=st.booleans(),
    )
    def store_job(self, process: int, scene: str, job: int, moved: bool) -> None:
        """A stored job's slot, taken whatever the line, its scene's submission slot moved to it
        (`moved`) or not (a poll's refresh): the job counts once, the moved slot not at all,
        and no line or turn changes."""
        before = self.state
        member = JOBS[scene][job]
        fresh = self.limiters[process].hold(
            "local", member, ttl=TTLS[process], moved_from=scene if moved else None
        )
        after = self.read()
        assert fresh == (member not in before.held)
        gone = {scene} if moved else set()
        assert set(after.held) == (set(before.held) - gone) | {member}
        turns = {(x.project, x.ticket, x.waiters) for x in before.lines}
        assert {(x.project, x.ticket, x.waiters) for x in after.lines} == turns

    @rule(
        process=PROCESSES,
        member=st.sampled_from(MEMBERS + [m for jobs in JOBS.values() for m in jobs]),
        keep_slot=st.booleans(),
    )
    def hand_on(self, process: int, member: str, keep_slot: bool) -> None:
        """A release or a departure of anyone (most hold no slot and wait nowhere)."""
        self.check_hand_on(process, member, keep_slot)

    @precondition(lambda self: self.state.held)
    @rule(process=PROCESSES, pick=st.integers(0, 2**16))
    def slot_freed(self, process: int, pick: int) -> None:
        """A held slot released (its job ended): the releases that wake waiters, or empty the
        pool so that the next slot makes the keys again."""
        held = sorted(self.state.held)
        self.check_hand_on(process, held[pick % len(held)], False)

    def check_hand_on(self, process: int, member: str, keep_slot: bool) -> None:
        before = self.state
        freed = not keep_slot and member in before.held
        project = member_project(member)
        lines = []
        for line in before.lines:
            waiters = tuple(m for m in line.waiters if m != member)
            in_flight = line.in_flight - (freed and line.project == project)
            if waiters:
                lines.append(ProjectLine(line.project, in_flight, line.ticket, waiters))
        free = self.limit - len(before.held) + freed
        parked = before.parked - {member}
        expected = [m for m in allot(lines, max(free, 0)) if m in parked]
        limiter = self.limiters[process]
        if keep_slot:
            woken = limiter.leave("local", member, limit=self.limit)
        else:
            woken = limiter.release("local", member, limit=self.limit)
        self.read()
        assert woken == expected

    @invariant()
    def keys_agree_and_expire(self) -> None:
        """The counts agree with the held slots and the lines; every key expires, and the
        ones that count held slots outlive each slot by the slack (within a second: the
        slots' times are the steps' clocks)."""
        snapshot = self.state
        for line in snapshot.lines:
            assert line.in_flight == snapshot.in_flight(line.project)
            assert not set(line.waiters) & set(snapshot.held)
        check_lines(snapshot.lines)
        lives, last, counts = self.lives()
        assert counts == Counter(member_project(m) for m in snapshot.held)
        assert all(life > 0 or life == -2 for life in lives)  # -2: no such key
        if last is not None:
            outlives = self.time.wall() + KEY_SLACK_SECONDS - 1 - last
            for life in lives[:2]:  # the counting keys: `slots`, `inflight`
                assert life / 1000 + outlives >= 0

    def teardown(self) -> None:
        """The quota wrote no key the invariants do not read; the example's keys are dropped,
        so the next one's reads do not grow with the examples before it."""
        written = {key.decode() for key in self.client.scan_iter(f"{self.prefix}:*", count=1000)}
        assert written <= set(self.keys)
        if written:
            self.client.delete(*written)


def test_the_lua_decides_as_the_pure_rule(redis_client: redis.Redis) -> None:
    run_state_machine_as_test(
        lambda: LimiterMachine(redis_client),
        settings=settings(
            max_examples=150,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
