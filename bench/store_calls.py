"""CPU and wall time of a scene's three submit-time store calls, one call at a time.

    python bench/store_calls.py [--projects 10]

Against a private state server: for every scene of `--projects` projects of 20 scenes (after
one unmeasured project), the scene read (`SceneStore.get`), the claim and the record of the
operation, as the submit step makes them. Per call: the state server's CPU (its process, from
/proc: 10 ms ticks, so only an average over many calls means anything), this process's CPU
(the client side: botocore and pynamodb) and the wall time.
"""

from __future__ import annotations

import argparse
import time
import uuid

from common import bench_stack, record, table, tree_cpu_seconds

from mvpipe import api
from mvpipe.deps import get_context
from mvpipe.store.claim_outcomes import Claim

SCENES = 20
CALLS = ("get", "claim", "record")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--projects", type=int, default=10)
    args = parser.parse_args()
    spent = {call: [0.0, 0.0, 0.0] for call in CALLS}  # server CPU, client CPU, wall
    with bench_stack() as (stack, _):
        server = next(s for s in stack.services if s.name == "moto").proc.pid
        ctx = get_context()
        for measured in [False] + [True] * args.projects:
            scenes = [{"prompt": f"scene {i}"} for i in range(1, SCENES + 1)]
            project_id = api.create_project("Store calls", "bench", scenes=scenes)
            api.run_project(project_id)  # no worker: the run is only won
            run_id = ctx.projects.get(project_id).active_run_id
            assert run_id is not None
            for sequence in range(1, SCENES + 1):
                token = uuid.uuid4().hex
                for call in CALLS:
                    before = (tree_cpu_seconds(server), time.process_time(), time.perf_counter())
                    if call == "get":
                        assert ctx.scenes.get(project_id, sequence) is not None
                    elif call == "claim":
                        claim = ctx.scenes.claim(
                            project_id,
                            sequence,
                            run_id=run_id,
                            token=token,
                            lease_seconds=60,
                            max_attempts=3,
                        )
                        assert claim.outcome == Claim.WON, claim
                    else:
                        stored = ctx.scenes.record_operation(
                            project_id,
                            sequence,
                            token=token,
                            operation_id=f"op-{sequence}",
                            run_id=run_id,
                        )
                        assert stored == Claim.WON, stored
                    after = (tree_cpu_seconds(server), time.process_time(), time.perf_counter())
                    if measured:
                        for i in range(3):
                            spent[call][i] += after[i] - before[i]
    n = args.projects * SCENES
    rows = [(call, *(f"{1000 * seconds / n:.2f} ms" for seconds in spent[call])) for call in CALLS]
    title = f"Store calls of the submit step ({n} calls each)"
    record(table(title, rows, ("call", "state server CPU", "client CPU", "wall")))


if __name__ == "__main__":
    main()
