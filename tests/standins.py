"""A small local HTTP server that speaks the subset of the Vertex (Veo), Gemini and Replicate
REST APIs mvpipe uses, so the real SDK clients can be pointed at it (no network, no keys).

Behaviour is scripted per test: how many polls an operation stays pending, how it ends, which
status codes the next requests get. It counts creations, so tests can prove nothing was paid twice.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mvpipe.providers.render import render_clip

CLIP = render_clip("stand-in provider video", 1.0)


class ProviderStandIn:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ids = itertools.count(1)
        #: status codes the next calls of a kind get ("veo.create", "replicate.poll", ...)
        self.fail_next: dict[str, list[int]] = defaultdict(list)
        #: how many next calls of a kind are carried out but never answered (the connection
        #: closes instead): a reset after the provider accepted the job
        self.unanswered: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)
        self.created: dict[str, int] = defaultdict(int)  # accepted (paid) creations per API
        self.paths: list[str] = []
        self.veo_pending_polls = 2
        self.veo_outcome = "video"  # or "safety"
        self.veo_ops: dict[str, int] = {}
        #: the body of every accepted Veo create, in order
        self.veo_bodies: list[dict[str, Any]] = []
        self.replicate_sequence = ["starting", "processing", "succeeded"]
        self.replicate_error: str | None = None
        #: when set, what Replicate's poll and cancel answer instead of the prediction
        self.replicate_reply: Any = None
        self.predictions: dict[str, dict[str, Any]] = {}
        #: the input a Replicate model must get the clip length in
        self.replicate_duration_input = "duration"
        self.gemini_answers: list[Any] = []
        #: the text of every planning request, in order (what the model was asked)
        self.gemini_prompts: list[str] = []
        self.error_message = "request rejected"
        handler = type("Handler", (_Handler,), {"standin": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def start(self) -> ProviderStandIn:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def scripted_failure(self, kind: str) -> int | None:
        with self.lock:
            self.calls[kind] += 1
            queue = self.fail_next[kind]
            return queue.pop(0) if queue else None

    def answer_lost(self, kind: str) -> bool:
        with self.lock:
            lost = self.unanswered[kind] > 0
            self.unanswered[kind] -= int(lost)
            return lost

    # -- Vertex: Veo ---------------------------------------------------------------------------
    @staticmethod
    def veo_refusal(body: dict[str, Any]) -> str | None:
        """Why Veo would refuse this create body (as a 400), or None: one instance with a
        prompt, one sample, a duration Veo 3 makes, a boolean `generateAudio` if any."""
        instances, parameters = body.get("instances"), body.get("parameters") or {}
        if not (isinstance(instances, list) and len(instances) == 1 and instances[0].get("prompt")):
            return "instances must hold exactly one prompt"
        if parameters.get("sampleCount") != 1:
            return "sampleCount must be 1"
        if parameters.get("durationSeconds") not in (4, 6, 8):
            return f"durationSeconds {parameters.get('durationSeconds')!r} is not 4, 6 or 8"
        if "generateAudio" in parameters and not isinstance(parameters["generateAudio"], bool):
            return "generateAudio must be a boolean"
        return None

    def veo_create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        model = path.split("/models/")[1].split(":")[0]
        with self.lock:
            self.created["veo"] += 1
            self.veo_bodies.append(body)
            resource = f"projects/p/locations/l/publishers/google/models/{model}"
            name = f"{resource}/operations/{next(self.ids)}"
            self.veo_ops[name] = self.veo_pending_polls
        return {"name": name}

    def veo_fetch(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body["operationName"]
        with self.lock:
            pending = self.veo_ops.get(name)
            if pending is None:
                return {"name": name, "done": True, "error": {"code": 5, "message": "not found"}}
            if pending > 0:
                self.veo_ops[name] = pending - 1
                return {"name": name, "done": False}
        if self.veo_outcome == "safety":
            response = {
                "raiMediaFilteredCount": 1,
                "raiMediaFilteredReasons": ["The prompt violates the usage guidelines."],
            }
        else:
            encoded = base64.b64encode(CLIP).decode()
            response = {"videos": [{"bytesBase64Encoded": encoded, "mimeType": "video/mp4"}]}
        return {"name": name, "done": True, "response": response}

    # -- Gemini --------------------------------------------------------------------------------
    def gemini_generate(self, body: dict[str, Any]) -> dict[str, Any]:
        text = body["contents"][-1]["parts"][0]["text"]
        with self.lock:
            self.gemini_prompts.append(text)
            answer = self.gemini_answers.pop(0) if self.gemini_answers else None
        if answer is None:
            answer = {"scenes": gemini_scenes(text)}
        part = {"text": json.dumps(answer)}
        return {
            "candidates": [{"content": {"role": "model", "parts": [part]}, "finishReason": "STOP"}]
        }

    @staticmethod
    def gemini_count(text: str) -> int:
        """The number of scenes a planning request asks for."""
        return int(re.search(r"exactly (\d+) scenes", text).group(1))  # type: ignore[union-attr]

    # -- Replicate -----------------------------------------------------------------------------
    def replicate_refusal(self, body: dict[str, Any]) -> str | None:
        """Why the model would refuse this input (as a 422), or None: a prompt, and a whole
        number of seconds in its duration input."""
        fields = body.get("input")
        if not isinstance(fields, dict) or not isinstance(fields.get("prompt"), str):
            return "input.prompt is required"
        duration = fields.get(self.replicate_duration_input)
        if not isinstance(duration, int) or isinstance(duration, bool):
            return f"input.{self.replicate_duration_input} must be an integer, got {duration!r}"
        return None

    def replicate_create(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.created["replicate"] += 1
            pid = f"pred{next(self.ids)}"
            self.predictions[pid] = {
                "step": 0,
                "input": body.get("input", {}),
                "status": "starting",
            }
        return self.prediction_json(pid)

    def replicate_get(self, pid: str) -> dict[str, Any] | None:
        with self.lock:
            record = self.predictions.get(pid)
            if record is None:
                return None
            if record["status"] not in ("canceled", "aborted"):
                step = min(record["step"], len(self.replicate_sequence) - 1)
                record["status"] = self.replicate_sequence[step]
                record["step"] += 1
        return self.prediction_json(pid)

    def replicate_cancel(self, pid: str) -> dict[str, Any] | None:
        with self.lock:
            if pid not in self.predictions:
                return None
            # As Replicate does: a finished prediction stays finished (its status unchanged).
            if self.predictions[pid]["status"] not in ("succeeded", "failed"):
                self.predictions[pid]["status"] = "canceled"
        return self.prediction_json(pid)

    def prediction_json(self, pid: str) -> dict[str, Any]:
        record = self.predictions[pid]
        status = record["status"]
        failed = status == "failed"
        return {
            "id": pid,
            "model": "owner/model",
            "version": "v1",
            "status": status,
            "input": record["input"],
            "output": f"{self.url}/files/{pid}.mp4" if status == "succeeded" else None,
            "error": (self.replicate_error or "model error") if failed else None,
            "logs": "",
            "metrics": {},
            "created_at": "2026-01-01T00:00:00Z",
            "urls": {
                "get": f"{self.url}/v1/predictions/{pid}",
                "cancel": f"{self.url}/v1/predictions/{pid}/cancel",
            },
        }


def gemini_scenes(text: str, count: int | None = None) -> list[dict[str, Any]]:
    """A well-formed answer to a planning request: as many scenes as it asks (or `count`).

    A request on a song's slots gets scenes with a lip-sync flag (every third), no duration.
    """
    count = ProviderStandIn.gemini_count(text) if count is None else count
    if "one per slot" in text:
        return [
            {"prompt": f"slot shot {n}", "negative_prompt": "blur", "lip_sync": n % 3 == 2}
            for n in range(1, count + 1)
        ]
    return [
        {"prompt": f"shot {n}", "negative_prompt": "blur", "duration_seconds": 6}
        for n in range(1, count + 1)
    ]


class _Handler(BaseHTTPRequestHandler):
    standin: ProviderStandIn

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, payload: Any, content_type: str = "application/json") -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, api: str, status: int, message: str | None = None) -> None:
        message = message or self.standin.error_message
        if api == "replicate":
            self._reply(status, {"title": "error", "detail": message, "status": status})
        else:
            self._reply(status, {"error": {"code": status, "message": message, "status": "ERR"}})

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length)) if length else {}

    def _route(self, method: str) -> None:
        s, path = self.standin, self.path.split("?")[0]
        s.paths.append(f"{method} {self.path}")
        body = self._body() if method == "POST" else {}
        kinds = [
            ("POST", r":predictLongRunning$", "veo.create"),
            ("POST", r":fetchPredictOperation$", "veo.poll"),
            ("POST", r":generateContent$", "gemini"),
            ("POST", r"^/v1/(models/[^/]+/[^/]+/)?predictions$", "replicate.create"),
            ("POST", r"^/v1/predictions/[^/]+/cancel$", "replicate.cancel"),
            ("GET", r"^/v1/predictions/[^/]+$", "replicate.poll"),
            ("GET", r"^/files/", "file"),
        ]
        kind = next(
            (k for m, pattern, k in kinds if m == method and re.search(pattern, path)), None
        )
        if kind is None:
            self._reply(404, {"error": {"code": 404, "message": f"no route {path}"}})
            return
        failure = s.scripted_failure(kind)
        if failure is not None:
            self._error(kind.split(".")[0], failure)
            return
        pid = (
            path.split("/")[3]
            if kind.startswith("replicate.") and kind != "replicate.create"
            else ""
        )
        refusal = (
            s.veo_refusal(body)
            if kind == "veo.create"
            else s.replicate_refusal(body)
            if kind == "replicate.create"
            else None
        )
        if refusal is not None:
            status = 400 if kind == "veo.create" else 422
            self._error(kind.split(".")[0], status, f"invalid request: {refusal}")
            return
        answer: Any
        if kind == "veo.create":
            answer = s.veo_create(path, body)
        elif kind == "veo.poll":
            answer = s.veo_fetch(body)
        elif kind == "gemini":
            answer = s.gemini_generate(body)
        elif kind == "replicate.create":
            answer = s.replicate_create(body)
        elif kind == "replicate.cancel":
            answer = s.replicate_cancel(pid) if s.replicate_reply is None else s.replicate_reply
        elif kind == "replicate.poll":
            answer = s.replicate_get(pid) if s.replicate_reply is None else s.replicate_reply
        else:
            self._reply(200, CLIP, "video/mp4")
            return
        if s.answer_lost(kind):
            self.close_connection = True  # done, but the caller never hears of it
            return
        if answer is None:
            self._reply(404, {"title": "not found", "detail": "no such prediction", "status": 404})
        else:
            self._reply(200, answer)

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")
