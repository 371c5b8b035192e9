"""Fair provider quota, end to end: small projects started behind a big one are not held back.

One large project starts first and fills the quota; three small ones start while it runs. A
freed slot goes to the waiting project with the fewest jobs in flight, so the small projects'
scenes take the slots the large one frees next instead of queueing behind all of its scenes.

The sizes follow from the arithmetic. With Q slots, a large project holding all Q, and k small
projects of s scenes arriving, the small ones get every freed slot until they hold as many jobs
as the large one: all their scenes start in the first wave of freed slots (as they would alone)
when Q >= (k + 1) * s. With a smaller quota each small project's fair share is Q / (k + 1)
slots and it needs several waves whatever the rule. Hence Q = 12 for three projects of 3 scenes,
and a large project of 8 quotas, so first come, first served would be unmistakable.

The drill judges by order and counts, not by a stopwatch: the provider's ledger lists paid jobs
in the order the limiter let them through, and scenes are counted in the store.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from mvpipe import api
from mvpipe.deps import get_context
from mvpipe.models import ProjectStatus, SceneStatus
from mvpipe.providers.limiter import slot_member
from tests.conftest import Workers
from tests.helpers import assert_invariants, generations_per_scene, ledger, wait_for

QUOTA = 12
LARGE = 96
SMALL = 3
SMALLS = 3


def completed_scenes(project_id: str) -> int:
    scenes = get_context().projects.load(project_id).scenes
    return sum(1 for scene in scenes if scene.status == SceneStatus.COMPLETED)


def run_beside(project_id: str, large: str) -> int:
    """Run a small project to completion; how many large-project scenes were complete then."""
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=300, interval=0.1)
    assert view.status == ProjectStatus.COMPLETED, view
    return completed_scenes(large)


def test_small_projects_started_behind_a_large_one_are_not_held_back(
    start_workers: Callable[..., Workers],
) -> None:
    # Cheap local clips and unhurried polls: the provider quota, not the workers' CPU, is
    # what the projects share. A parked waiter is woken by the release that frees its slot;
    # its own timed check (MVPIPE_BACKOFF_MAX) is only the fallback.
    workers = start_workers(
        concurrency=3,
        local_latency="1",
        provider_concurrency=str(QUOTA),
        local_max_concurrent=str(QUOTA),
        local_clip_seconds="0.5",
        poll_seconds="0.5",
        backoff_max="8",
    )
    large = api.create_project("Large", "A long project started first.", scene_count=LARGE)
    smalls = [
        api.create_project(f"Small {n}", "A small project started later.", scene_count=SMALL)
        for n in range(SMALLS)
    ]
    api.run_project(large)
    wait_for(
        lambda: len(ledger(workers.ledger, large)) >= QUOTA,
        60,
        "the large project to fill the quota",
    )
    limiter = get_context().limiter
    small_members = {slot_member(p, n) for p in smalls for n in range(1, SMALL + 1)}

    def small_scenes_asked() -> bool:
        snapshot = limiter.snapshot("local")
        asked = {m for line in snapshot.lines for m in line.waiters} | set(snapshot.held)
        return small_members <= asked or any(ledger(workers.ledger, p) for p in smalls)

    with ThreadPoolExecutor(SMALLS) as pool:
        running = [pool.submit(run_beside, small, large) for small in smalls]
        wait_for(small_scenes_asked, 60, "the small projects' scenes to ask for slots")
        large_paid_at_arrival = len(ledger(workers.ledger, large))
        large_done_at_small_done = [future.result(timeout=300) for future in running]
    assert api.wait_project(large, timeout=300).status == ProjectStatus.COMPLETED

    # The order the limiter let jobs through, on the provider's ledger. Once the small scenes
    # wait, the large project (holding the whole quota) gets no slot while a waiting small
    # project holds fewer jobs, so the small ones take SMALLS * SMALL of the next QUOTA freed
    # slots. Slack for the large project: jobs granted before the small scenes arrived but
    # paid after, and slots freed while woken small scenes are on their way to the slots kept
    # for them: at most another quota. First come, first served pays for every remaining
    # large scene first (LARGE - QUOTA or more).
    paid = ledger(workers.ledger)
    last_small = max(i for i, entry in enumerate(paid) if entry["project_id"] in smalls)
    large_paid_first = sum(1 for e in paid[: last_small + 1] if e["project_id"] == large)
    assert large_paid_first - large_paid_at_arrival <= 2 * QUOTA, (
        large_paid_at_arrival,
        large_paid_first,
    )
    # By completions: each small project is done while the large one is not half done. Fair
    # sharing: the large project's wave in flight at arrival, the slots left over beside the
    # small scenes, and one more wave while the small projects finish (about 2 * QUOTA). First
    # come, first served: LARGE - QUOTA or more.
    assert max(large_done_at_small_done) < LARGE // 2, large_done_at_small_done

    for project_id, scenes in [(large, LARGE), *((p, SMALL) for p in smalls)]:
        assert generations_per_scene(workers.ledger, project_id) == {
            n: 1 for n in range(1, scenes + 1)
        }
        assert_invariants(project_id)
