"""A store outage a drill switches on and off: the state server answering errors.

Pausing the state server (SIGSTOP) is an outage whose requests all land once it resumes: they
wait in the socket, and a write a worker gave up on is applied after all. An outage of the real
store can also refuse a request (a 5xx, nothing applied) or apply one whose answer is lost. A
drill that needs those asks the server for them:

- `REFUSED`: every request is answered 503 and nothing is applied;
- `UNANSWERED`: every request is applied, and answered 500 (the caller can't know it landed);
- `NO_CONDITION_CHECK`: not an outage but credentials short of one permission: a transaction
  with a ConditionCheck part is refused as DynamoDB refuses a policy without
  `dynamodb:ConditionCheckItem` (400 AccessDeniedException, nothing applied); every other
  request is answered as usual;
- `NONE`: the server answers as usual.

The mode is set by a request to `CONTROL_PATH` + mode (no bucket can be named so).
"""

from __future__ import annotations

import io
import json
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

WsgiApp = Callable[..., Iterable[bytes]]

NONE, REFUSED, UNANSWERED = "none", "refused", "unanswered"
NO_CONDITION_CHECK = "no_condition_check"
MODES = (NONE, REFUSED, UNANSWERED, NO_CONDITION_CHECK)
CONTROL_PATH = "/__outage__/"

_DYNAMODB_ERROR = "com.amazonaws.dynamodb.v20120810#"


def switchable(app: WsgiApp) -> WsgiApp:
    """`app`, answering errors while a drill's outage is on."""
    mode = [NONE]

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = str(environ.get("PATH_INFO", ""))
        if path.startswith(CONTROL_PATH):
            wanted = path[len(CONTROL_PATH) :]
            if wanted not in MODES:
                start_response("400 Bad Request", [("Content-Type", "text/plain")])
                return [f"unknown outage mode {wanted!r}".encode()]
            mode[0] = wanted
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [wanted.encode()]
        if mode[0] == NO_CONDITION_CHECK and _checks_a_condition(environ):
            return _denied(start_response, "dynamodb:ConditionCheckItem")
        if mode[0] in (NONE, NO_CONDITION_CHECK):
            return app(environ, start_response)
        if mode[0] == UNANSWERED:
            answer = app(environ, lambda *_: lambda _: None)
            b"".join(answer)  # applied whole; its answer is lost
            return _error(environ, start_response, "500 Internal Server Error", "InternalError")
        return _error(environ, start_response, "503 Service Unavailable", "ServiceUnavailable")

    return wsgi


def _error(
    environ: dict[str, Any], start_response: Callable[..., Any], status: str, code: str
) -> list[bytes]:
    """The error as the store answers it: DynamoDB's JSON, S3's XML."""
    message = "the store is out (a drill's outage)"
    if environ.get("HTTP_X_AMZ_TARGET"):
        kind = "InternalServerError" if code == "InternalError" else "ServiceUnavailableException"
        body = json.dumps({"__type": _DYNAMODB_ERROR + kind, "message": message}).encode()
        start_response(status, [("Content-Type", "application/x-amz-json-1.0")])
        return [body]
    body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
    start_response(status, [("Content-Type", "application/xml")])
    return [body]


def _checks_a_condition(environ: dict[str, Any]) -> bool:
    """Whether the request is a transaction with a ConditionCheck part. Its body is read here
    and put back for the app."""
    if environ.get("HTTP_X_AMZ_TARGET") != "DynamoDB_20120810.TransactWriteItems":
        return False
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    environ["wsgi.input"] = io.BytesIO(body)
    items = json.loads(body or b"{}").get("TransactItems", [])
    return any("ConditionCheck" in item for item in items)


def _denied(start_response: Callable[..., Any], action: str) -> list[bytes]:
    """DynamoDB's answer to a request its caller's policy does not allow."""
    message = f"User: arn:aws:iam::000000000000:user/drill is not authorized to perform: {action}"
    body = json.dumps({"__type": _DYNAMODB_ERROR + "AccessDeniedException", "message": message})
    start_response("400 Bad Request", [("Content-Type", "application/x-amz-json-1.0")])
    return [body.encode()]


def set_outage(port: int, mode: str) -> None:
    """Switch the local state server on `port` to `mode`."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{CONTROL_PATH}{mode}", method="POST")
    with urllib.request.urlopen(request, timeout=30) as answer:
        if answer.status != 200:
            raise RuntimeError(f"the state server refused outage mode {mode!r}")
