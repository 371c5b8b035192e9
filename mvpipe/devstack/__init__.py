"""What serves the local stack and the fault drills, apart from the product's core.

- `localstack`: starts redis-server, the local state server, Celery workers, beat and Flower as
  processes (the demo, `mvpipe stack`, the tests and the benchmarks use it).
- `state_server`: moto's DynamoDB and S3 in server mode, serialized, with item-level rollback
  and kept-alive connections.
- `http_front`: the state server's HTTP/1.1 front (kept-alive, one request at a time).
- `failpoints`: named points where a drill kills or holds a worker (inert unless
  `MVPIPE_FAILPOINTS` names them).
- `drills`: healing a drilled project and counting paid generations from the provider's ledger.

The pipeline reaches in only through `failpoints.reached(...)`, a no-op in production; the
store, below this package, through `mvpipe.hooks.reached(...)`, which `failpoints` routes here.
"""
