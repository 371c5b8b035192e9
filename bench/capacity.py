"""Capacity: measured per-scene request counts turned into rates for many concurrent projects.

    python bench/capacity.py [--scenes 20 --parked 800 --projects 10000 --scenes-per-project 8
                              --minutes 30]

1. A real run of `--scenes` scenes on the local stack, every DynamoDB/S3 request counted on the
   wire and Redis commands from INFO deltas (bench/scaling.py's helpers).
2. Worker memory per waiting scene: a project of `--parked` scenes behind a quota of 1 and a
   provider that never finishes, so every other scene waits as a countdown message the worker
   holds; the growth of the worker's main process per held message between a quarter and all
   of them parked.
3. Arithmetic: `--projects` projects of `--scenes-per-project` scenes each finishing within
   `--minutes` -> scenes/s, and each per-scene count times that; polls/s for that many jobs in
   flight at each provider's poll interval.

Records (`common.record`) the per-scene table SCALING.md quotes, and prints its figures and the
memory per waiting scene as summary rows (`common.summary`), so bench/all.py's summary carries
what SCALING.md cites.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import redis
from common import bench_stack, proxied, record, summary, table, workers
from countingproxy import DYNAMO_READS, DYNAMO_WRITES, CountingProxy
from scaling import redis_calls

from mvpipe import api
from mvpipe.devstack.localstack import LocalStack

#: The per-scene counts SCALING.md quotes, in its table's order: (key, label).
QUOTED = (
    ("dynamodb.writes", "DynamoDB writes"),
    ("dynamodb.TransactWriteItems", "of which TransactWriteItems"),
    ("dynamodb.reads", "DynamoDB reads"),
    ("s3.PUT", "S3 PUT"),
    ("s3.GET", "S3 GET"),
    ("s3.HEAD", "S3 HEAD"),
    ("redis.commands", "Redis commands (broker + state)"),
)

#: Default poll intervals (docs/DESIGN.md: MVPIPE_POLL_SECONDS per provider).
POLL_SECONDS = {"veo": 10.0, "replicate": 2.0}


COUNT_SETTINGS = {"local_latency": "0", "local_max_concurrent": "1000",
                  "provider_concurrency": "1000", "local_clip_seconds": "0.5",
                  "poll_seconds": "0.2"}  # fmt: skip
#: Workers for the memory probe: one slot, a provider that never finishes, long countdowns.
PARK_ENV = {"MVPIPE_LOCAL_LATENCY": "100000", "MVPIPE_LOCAL_MAX_CONCURRENT": "1",
            "MVPIPE_PROVIDER_CONCURRENCY": "1", "MVPIPE_BACKOFF_MAX": "600",
            "MVPIPE_POLL_SECONDS": "600", "MVPIPE_VISIBILITY_TIMEOUT": "7200",
            "MVPIPE_RUN_STALE_SECONDS": "600"}  # fmt: skip


def measure_counts(
    stack: LocalStack, workdir: Path, proxy: CountingProxy, n: int
) -> dict[str, float]:
    worker = workers(stack, workdir, 2)
    client = redis.Redis.from_url(stack.env["MVPIPE_BROKER_URL"])
    try:
        project_id = api.create_project(
            "Capacity", "bench", scenes=[{"prompt": f"scene {i}"} for i in range(n)]
        )
        proxy.reset()
        before = redis_calls(client)
        final = api.run_project(project_id).get(timeout=1800)
        calls = redis_calls(client) - before
        counts = proxy.snapshot()
    finally:
        worker.stop()
    assert final["status"] == "completed", final
    per = {k: v / n for k, v in counts.items()}
    per["dynamodb.writes"] = sum(v for k, v in per.items() if k.split(".")[-1] in DYNAMO_WRITES)
    per["dynamodb.reads"] = sum(v for k, v in per.items() if k.split(".")[-1] in DYNAMO_READS)
    per["redis.commands"] = calls / n
    return per


def bytes_per_waiting_scene(stack: LocalStack, workdir: Path, parked: int) -> tuple[float, int]:
    """(bytes of worker memory per scene waiting in a countdown message, messages held).

    The slope between two parked loads (a quarter, then all of `parked`), so what the first
    task of each kind costs a worker (imports, clients) is not counted as the waiters' memory."""
    worker = workers(stack, workdir, 2, **PARK_ENV)
    client = redis.Redis.from_url(stack.env["MVPIPE_BROKER_URL"])
    points, sent = [], 0
    try:
        for scenes in (parked // 4, parked - parked // 4):
            project_id = api.create_project(
                "Parked", "bench", scenes=[{"prompt": f"scene {i}"} for i in range(scenes)]
            )
            api.run_project(project_id)
            sent += scenes
            # every scene but the one holding the single slot waits in a countdown message
            held = _settled(lambda: client.hlen("unacked"), at_least=sent - 1)
            points.append((_rss_kib(worker.proc.pid), held))
    finally:
        worker.stop()
    (rss1, held1), (rss2, held2) = points
    return (rss2 - rss1) * 1024 / max(held2 - held1, 1), held2


def _rss_kib(pid: int) -> int:
    """The worker's main process alone: it holds the countdown messages (its pool children run
    tasks, and their heaps grow with the work they did, not with what waits)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1])


def _settled(read: Callable[[], int], *, at_least: int, timeout: float = 900.0) -> int:
    """The value once it reached `at_least` and stopped changing for 10 s (every step parked)."""
    last, since, deadline = -1, time.monotonic(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = int(read())
        if value != last:
            last, since = value, time.monotonic()
        elif value >= at_least and time.monotonic() - since > 10:
            return value
        time.sleep(1)
    return last


def record_counts(per: dict[str, float], scenes: int, rate: float) -> None:
    """The per-scene table and its summary rows: what SCALING.md quotes from this benchmark."""
    rows = [(label, f"{per.get(key, 0.0):.2f}", f"{per.get(key, 0.0) * rate:,.0f} /s")
            for key, label in QUOTED]  # fmt: skip
    title = f"Requests per scene ({scenes}-scene run, local provider, poll every 0.2 s)"
    record(table(title, rows, ("per scene", "measured", f"at {rate:.1f} scenes/s")))
    run = f"per scene ({scenes}-scene run)"
    writes, transact, reads = (per.get(f"dynamodb.{k}", 0.0)
                               for k in ("writes", "TransactWriteItems", "reads"))  # fmt: skip
    summary(f"DynamoDB writes (of which TransactWriteItems) / reads {run}",
            f"{writes:.2f} ({transact:.2f}) / {reads:.2f}", "reported (SCALING.md)")  # fmt: skip
    summary(f"S3 PUT / GET / HEAD {run}",
            " / ".join(f"{per.get(f's3.{verb}', 0.0):.2f}" for verb in ("PUT", "GET", "HEAD")),
            "reported (SCALING.md)")  # fmt: skip
    summary(f"Redis commands {run}", f"{per.get('redis.commands', 0.0):.2f}",
            "reported (SCALING.md)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--parked", type=int, default=800)
    parser.add_argument("--projects", type=int, default=10_000)
    parser.add_argument("--scenes-per-project", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=30.0)
    args = parser.parse_args()
    with bench_stack(**COUNT_SETTINGS) as (stack, workdir):
        proxy = proxied(stack)
        try:
            per = measure_counts(stack, workdir, proxy, args.scenes)
            per_byte, held = bytes_per_waiting_scene(stack, workdir, args.parked)
        finally:
            proxy.stop()
    print(f"measured per scene ({args.scenes}-scene run, local provider):")
    for key in sorted(per):
        print(f"  {key:28} {per[key]:8.2f}")
    rate = args.projects * args.scenes_per_project / (args.minutes * 60)
    record_counts(per, args.scenes, rate)
    print(f"\n{args.projects} projects x {args.scenes_per_project} scenes within "
          f"{args.minutes:g} min = {rate:.1f} scenes/s:")  # fmt: skip
    for key in ("dynamodb.writes", "dynamodb.reads", "s3.PUT", "s3.GET", "s3.HEAD",
                "redis.commands"):  # fmt: skip
        print(f"  {key:28} {per.get(key, 0.0) * rate:10.1f} /s")
    jobs = args.projects * 1  # one job in flight per project at a time, at the least
    print(f"\npolls for {jobs} jobs in flight:")
    for provider, seconds in POLL_SECONDS.items():
        print(f"  {provider:10} every {seconds:4g} s: {jobs / seconds:8.0f} polls/s "
              f"(a Celery message and a provider GET each)")  # fmt: skip
    print(f"\nworker memory per waiting scene: {per_byte:.0f} B ({held} countdown messages held)")
    print(f"  10,000 waiting scenes in one worker: {per_byte * 10_000 / 2**20:.0f} MiB")
    summary(f"worker memory per waiting scene ({held} countdown messages held)",
            f"{per_byte:.0f} B", "reported (issue 15)")  # fmt: skip


if __name__ == "__main__":
    main()
