"""An HTTP reverse proxy in front of the state server that counts requests by kind.

It sits on the wire between every mvpipe process and DynamoDB/S3, so it counts what the clients
really send (retries included): DynamoDB by `X-Amz-Target` operation, S3 by method. It also
counts the items each Query and Scan read (their answers' `ScannedCount`), by operation and
index (`items`): what a request costs grows with those, not with the request count alone. With a
`delay` it also holds every request that long before forwarding it: a network round trip to a
remote store, which the local state server (on the same machine) does not have.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DYNAMO_WRITES = {"UpdateItem", "PutItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"}
DYNAMO_READS = {"GetItem", "Query", "Scan", "BatchGetItem", "TransactGetItems"}


class CountingProxy:
    def __init__(self, upstream_port: int, delay: float = 0.0) -> None:
        self.counts: Counter[str] = Counter()
        #: items read by Query / Scan: "dynamodb.Query", "dynamodb.Query.GSI1", "dynamodb.Scan"
        self.items: Counter[str] = Counter()
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # The answer goes out as two writes (head, then body): with Nagle's algorithm the
            # body waited for the client's delayed ACK, ~40 ms on every request.
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                target = self.headers.get("X-Amz-Target", "")
                kind = f"dynamodb.{target.split('.')[-1]}" if target else f"s3.{self.command}"
                with proxy.lock:
                    proxy.counts[kind] += 1
                if delay:
                    time.sleep(delay)
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                operation = target.split(".")[-1]
                if operation in ("Query", "Scan") and response.status == 200:
                    index = json.loads(body or b"{}").get("IndexName")
                    read = json.loads(data).get("ScannedCount", 0)
                    with proxy.lock:
                        proxy.items[".".join(filter(None, (kind, index)))] += read
                self.send_response(response.status)
                head = self.command == "HEAD"
                for key, value in response.getheaders():
                    skip = ("transfer-encoding", "connection") + (
                        () if head else ("content-length",)
                    )
                    if key.lower() not in skip:
                        self.send_header(key, value)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # Polled every 50 ms, not the default 0.5 s: `stop` waits for the next poll (a test's
        # teardown).
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def reset(self) -> None:
        with self.lock:
            self.counts.clear()
            self.items.clear()

    def items_read(self) -> Counter[str]:
        with self.lock:
            return Counter(self.items)

    def snapshot(self) -> Counter[str]:
        with self.lock:
            return Counter(self.counts)

    def stop(self) -> None:
        self.server.shutdown()
