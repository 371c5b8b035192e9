"""The local state server: moto's DynamoDB and S3 over HTTP, one request at a time.

moto is not built for concurrent access: a TransactWriteItems that fails puts back a copy of the
whole table taken when it started, erasing what other requests wrote meanwhile (a failed lease
claim could undo another worker's completed scene). Real DynamoDB never does that, so the local
stack serializes requests; moto is bound by the GIL anyway, so little throughput is lost.

    python -m mvpipe.state_server -H 127.0.0.1 -p 5000
"""

from __future__ import annotations

import argparse
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any


def serialized(app: Callable[..., Iterable[bytes]]) -> Callable[..., list[bytes]]:
    lock = threading.Lock()

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with lock:
            return list(app(environ, start_response))  # the whole body, inside the lock

    return wsgi


def main() -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    args = parser.parse_args()
    os.environ.setdefault("MOTO_PORT", str(args.port))
    app = serialized(DomainDispatcherApplication(create_backend_app))
    run_simple(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
