"""What serves the local stack and the fault drills, apart from the product's core.

- `localstack`: starts redis-server, the local state server, Celery workers, beat and Flower as
  processes (the demo, `mvpipe stack`, the tests and the benchmarks use it).
- `cluster`: the whole local stack at a shell's service (servers, workers, beat, Flower), this
  process pointed at it, held until Ctrl-C (`mvpipe stack`, the demo).
- `demo`: the demo's run, from a synthesized song to the video and clips written out.
- `state_server`: moto's DynamoDB and S3 in server mode, serialized, with item-level rollback
  and kept-alive connections.
- `http_front`: the state server's HTTP/1.1 front (kept-alive, one request at a time).
- `failpoints`: named points where a drill kills or holds a worker (armed only when
  `MVPIPE_FAILPOINTS` names them).
- `worker`: the Celery app as the local stack's workers load it, with the failpoints armed.
- `drills`: healing a drilled project and counting paid generations from the provider's ledger.
- `invariants`: docs/DESIGN.md's invariants as a read-only check of one project (tests, benchmarks).

The core never imports this package: the pipeline and the store name their points through
`mvpipe.hooks.reached(...)`, a no-op unless `failpoints.arm` (in `worker`) routes them here.
"""
