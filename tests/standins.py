"""A small local HTTP server that speaks the subset of the Vertex (Veo), Gemini and Replicate
REST APIs mvpipe uses, so the real SDK clients can be pointed at it (no network, no keys).

Behaviour is scripted per test: how many polls an operation stays pending, how it ends, which
status codes or transport faults the next requests get. It checks credentials and request bodies
as the real APIs would (a 4xx otherwise), records every request, and counts creations, so tests
can prove nothing was paid twice. The lip-sync model fetches its input URLs itself, as Replicate
does, and records what it got.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import socket
import struct
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from mvpipe.deps import get_context, reset_context
from mvpipe.providers.base import LipSyncRequest
from mvpipe.providers.render import render_clip
from mvpipe.settings import Settings

CLIP = render_clip("stand-in provider video", 1.0)


def output_of(size: int) -> bytes:
    """An output of exactly `size` bytes, the clip padded (the byte cap is at least 1 MiB)."""
    return CLIP + bytes(size - len(CLIP))


#: The credentials the stand-in accepts (each API its own); anything else is refused.
KEYS = {
    "GOOGLE_API_KEY": "vertex-key-123456",
    "GEMINI_API_KEY": "gemini-key-123456",
    "REPLICATE_API_TOKEN": "r8-token-123456",
}
#: What a transport fault does instead of answering (after the work is done, so a create that
#: meets one has started its job, as when a real answer is lost on the way back):
#: "slow" holds the answer until `released` is set (past any client timeout), "reset" resets the
#: connection (RST), "close" closes it without a word, "garbage" answers 200 with an HTML page,
#: "mistyped" 200 with JSON of the wrong shape, "bad_gateway" a 502 (a gateway that lost the
#: provider's answer), "undecodable" 201 with a body that is not UTF-8 (a proxy's Latin-1 page).
FAULTS = (
    "slow",
    "reset",
    "close",
    "garbage",
    "mistyped",
    "bad_gateway",
    "undecodable",
    "trickle",
    "trickle_head",
)
#: the pause between two bytes of a trickled answer: far inside any read timeout, so only a
#: deadline on the whole call ends it
TRICKLE_SECONDS = 0.05
#: a "mistyped" answer: JSON, but no field of the shape any of the APIs answers with
MISTYPED = {"name": 123, "done": "maybe", "id": 123, "status": 5, "candidates": 5}
GS_PREFIX = r"^gs://[a-z0-9][a-z0-9._-]+[a-z0-9](/|$)"
SYNC_MODES = ("loop", "bounce", "cut_off", "silence", "remap")


@dataclass(frozen=True)
class Recorded:
    """One request as the stand-in received it."""

    kind: str
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass(frozen=True)
class Fetched:
    """One input URL the lip-sync model fetched: what it got."""

    url: str
    status: int
    content_type: str
    size: int
    sha256: str


def media_kind(data: bytes) -> str | None:
    """ "video" for an MP4, "audio" for WAV/MP3/FLAC/OGG, by their magic bytes."""
    if data[4:8] == b"ftyp":
        return "video"
    if (data[:4] == b"RIFF" and data[8:12] == b"WAVE") or data[:3] == b"ID3":
        return "audio"
    if data[:4] in (b"fLaC", b"OggS") or data[:2] in (b"\xff\xfb", b"\xff\xf3"):
        return "audio"
    return None


class ProviderStandIn:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ids = itertools.count(1)
        #: status codes the next calls of a kind get ("veo.create", "replicate.poll", ...)
        self.fail_next: dict[str, list[int]] = defaultdict(list)
        #: transport faults (see FAULTS) the next calls of a kind meet, after being carried out
        self.faults: dict[str, list[str]] = defaultdict(list)
        #: lets the answers held by a "slow" fault go (set at stop)
        self.released = threading.Event()
        #: trickled answers ("trickle", "trickle_head") sent to their last byte
        self.trickled_whole = 0
        #: every request that reached a known route, in order
        self.requests: list[Recorded] = []
        self.keys = dict(KEYS)
        self.calls: dict[str, int] = defaultdict(int)
        self.created: dict[str, int] = defaultdict(int)  # accepted (paid) creations per API
        self.paths: list[str] = []
        self.veo_pending_polls = 2
        self.veo_outcome = "video"  # or "safety"
        self.veo_ops: dict[str, int] = {}
        #: the body of every accepted Veo create, in order
        self.veo_bodies: list[dict[str, Any]] = []
        #: where each Veo operation writes its video (`parameters.storageUri`), if anywhere
        self.veo_storage: dict[str, str] = {}
        #: the GCS stand-in's objects, {(bucket, name): bytes}, served on the JSON API's media
        #: download path (point google-cloud-storage at it with STORAGE_EMULATOR_HOST)
        self.gcs_objects: dict[tuple[str, str], bytes] = {}
        #: a finished job's output: the file Replicate's output URL serves and the object Veo
        #: writes to GCS (Veo's inline bytes stay CLIP)
        self.output = CLIP
        #: how the output file is served: "length" (a Content-Length), "chunked" (HTTP/1.1
        #: chunked, no length) or "drip" (declared, then 1 KiB pieces 50 ms apart until sent
        #: or released: a server too slow for any whole-download deadline)
        self.output_framing = "length"
        #: output pieces sent so far, in all (drip framing: each at least 50 ms after the last)
        self.pieces_sent = 0
        #: a Content-Encoding header the output is served with, whatever the client asked
        #: (the body is `output` as it is: gzip it for a valid encoded answer)
        self.output_encoding: str | None = None
        #: the Location of a 302 each next output request gets instead; a redirect declares a
        #: body and holds it until released, so a client that reads it waits for its timeout
        self.redirects: list[str] = []
        self.replicate_sequence = ["starting", "processing", "succeeded"]
        self.replicate_error: str | None = None
        #: when set, what Replicate's poll and cancel answer instead of the prediction
        self.replicate_reply: Any = None
        self.predictions: dict[str, dict[str, Any]] = {}
        #: the input a Replicate model must get the clip length in
        self.replicate_duration_input = "duration"
        #: models that lip-sync (inputs `video`, `audio`, `sync_mode`) rather than make video
        self.lipsync_models = {"sync/lipsync-2"}
        #: what each lip-sync prediction fetched from its input URLs: {id: {"video": ..., ...}}
        self.lipsync_fetched: dict[str, dict[str, Fetched]] = {}
        self.gemini_answers: list[Any] = []
        #: the text of every planning request, in order (what the model was asked)
        self.gemini_prompts: list[str] = []
        self.error_message = "request rejected"
        handler = type("Handler", (_Handler,), {"standin": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def start(self) -> ProviderStandIn:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

    def scripted_failure(self, kind: str) -> int | None:
        with self.lock:
            self.calls[kind] += 1
            queue = self.fail_next[kind]
            return queue.pop(0) if queue else None

    def next_fault(self, kind: str) -> str | None:
        with self.lock:
            queue = self.faults[kind]
            return queue.pop(0) if queue else None

    def bodies(self, kind: str) -> list[dict[str, Any]]:
        return [r.body for r in self.requests if r.kind == kind]

    def auth_refusal(self, kind: str, headers: dict[str, str]) -> tuple[int, str] | None:
        """Why the API would refuse these credentials, or None. Each API takes its own key
        only: the Gemini API must never get the Vertex key (nor Vertex the Gemini one)."""
        api = kind.split(".")[0]
        if api == "replicate":
            expected = f"Bearer {self.keys['REPLICATE_API_TOKEN']}"
            if headers.get("authorization") != expected:
                return 401, "Unauthenticated: a valid Bearer token is required"
            return None
        if api not in ("veo", "gemini"):
            return None  # output files and other URLs are unauthenticated
        own, other = ("GOOGLE_API_KEY", "GEMINI_API_KEY")[:: 1 if api == "veo" else -1]
        if any(self.keys[other] in value for value in headers.values()):
            return 403, f"the {other} key was sent to the {api} API"
        if headers.get("x-goog-api-key") != self.keys[own]:
            return 401, "API key not valid"
        return None

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
        storage = parameters.get("storageUri")
        if storage is not None and not re.match(
            r"^gs://[a-z0-9][a-z0-9._-]+[a-z0-9](/|$)", storage
        ):
            return f"storageUri {storage!r} is not a gs:// URI"
        return None

    def veo_create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        model = path.split("/models/")[1].split(":")[0]
        with self.lock:
            self.created["veo"] += 1
            self.veo_bodies.append(body)
            resource = f"projects/p/locations/l/publishers/google/models/{model}"
            name = f"{resource}/operations/{next(self.ids)}"
            self.veo_ops[name] = self.veo_pending_polls
            storage = (body.get("parameters") or {}).get("storageUri")
            if storage:
                self.veo_storage[name] = storage
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
        elif name in self.veo_storage:  # written to GCS: the answer holds its gs:// URI
            bucket, _, prefix = self.veo_storage[name].removeprefix("gs://").partition("/")
            number = name.rsplit("/", 1)[1]
            obj = "/".join(p for p in (prefix.strip("/"), number, "sample_0.mp4") if p)
            with self.lock:
                self.gcs_objects[(bucket, obj)] = self.output
            video = {"gcsUri": f"gs://{bucket}/{obj}", "mimeType": "video/mp4"}
            response = {"videos": [video]}
        else:
            encoded = base64.b64encode(CLIP).decode()
            response = {"videos": [{"bytesBase64Encoded": encoded, "mimeType": "video/mp4"}]}
        return {"name": name, "done": True, "response": response}

    # -- Google Cloud Storage (JSON API media download) -----------------------------------------
    #: every stored object's generation (one write each)
    GCS_GENERATION = "1"

    def gcs_object(self, path: str, query: str) -> bytes | None:
        """The object a media download asks for (`alt=media` required, and a generation
        condition, when sent, met), or None."""
        match = re.match(r"^/download/storage/v1/b/([^/]+)/o/(.+)$", path)
        params = query.split("&")
        if match is None or "alt=media" not in params:
            return None
        conditions = [p.partition("=")[2] for p in params if p.startswith("ifGenerationMatch=")]
        if any(generation != self.GCS_GENERATION for generation in conditions):
            return None
        with self.lock:
            return self.gcs_objects.get((match[1], unquote(match[2])))

    def gcs_metadata(self, path: str) -> dict[str, Any] | None:
        """An object's metadata (JSON API `objects.get`), or None when there is no such object."""
        match = re.match(r"^/storage/v1/b/([^/]+)/o/(.+)$", path)
        if match is None:
            return None
        bucket, name = match[1], unquote(match[2])
        with self.lock:
            data = self.gcs_objects.get((bucket, name))
        if data is None:
            return None
        size, generation = str(len(data)), self.GCS_GENERATION
        return {
            "kind": "storage#object",
            "bucket": bucket,
            "name": name,
            "size": size,
            "generation": generation,
            "contentType": "video/mp4",
        }

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
        """Why the model would refuse this input (as a 422), or None: a prompt (text, like
        a negative prompt if any), and a whole number of seconds in its duration input."""
        fields = body.get("input")
        if isinstance(fields, dict) and not isinstance(fields.get("negative_prompt", ""), str):
            return "input.negative_prompt must be a string"
        if not isinstance(fields, dict) or not isinstance(fields.get("prompt"), str):
            return "input.prompt is required"
        duration = fields.get(self.replicate_duration_input)
        if not isinstance(duration, int) or isinstance(duration, bool):
            return f"input.{self.replicate_duration_input} must be an integer, got {duration!r}"
        return None

    def lipsync_refusal(self, body: dict[str, Any]) -> str | dict[str, Fetched]:
        """Why the lip-sync model refuses this input, or what it fetched from its URLs."""
        fields = body.get("input")
        if not isinstance(fields, dict):
            return "input is required"
        if fields.get("sync_mode", "loop") not in SYNC_MODES:
            return f"input.sync_mode must be one of {SYNC_MODES}"
        fetched: dict[str, Fetched] = {}
        for name in ("video", "audio"):
            url = fields.get(name)
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                return f"input.{name} must be a URL"
            got, data = self.fetch(url)
            if got.status != 200 or media_kind(data) != name:  # echoing the URL, as Replicate
                return f"input.{name}: could not fetch {name} from {url} (HTTP {got.status})"
            fetched[name] = got
        return fetched

    @staticmethod
    def fetch(url: str) -> tuple[Fetched, bytes]:
        response = httpx.get(url, timeout=10)
        data = response.content
        got = Fetched(
            url=url,
            status=response.status_code,
            content_type=response.headers.get("content-type", ""),
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        return got, data

    def replicate_create(
        self, body: dict[str, Any], fetched: dict[str, Fetched] | None = None
    ) -> dict[str, Any]:
        with self.lock:
            self.created["replicate"] += 1
            pid = f"pred{next(self.ids)}"
            if fetched is not None:
                self.lipsync_fetched[pid] = fetched
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


@contextmanager
def running_standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[ProviderStandIn]:
    """A started stand-in, with the credentials it accepts set in the environment."""
    server = ProviderStandIn().start()
    for key, value in KEYS.items():
        monkeypatch.setenv(key, value)
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def configured_standin(
    monkeypatch: pytest.MonkeyPatch, env: Callable[[str], dict[str, str]]
) -> Iterator[ProviderStandIn]:
    """`running_standin` with `env(its url)` set too, and this process's context rebuilt for
    them (and again after, for the settings the test leaves)."""
    with running_standin(monkeypatch) as server:
        for key, value in env(server.url).items():
            monkeypatch.setenv(key, value)
        reset_context()
        yield server
    reset_context()


#: The Replicate video model the stand-in's projects use.
REPLICATE_MODEL = "minimax/video-01"


def replicate_env(
    durations: str, *, usd_per_second: float = 0.1
) -> Callable[[str], dict[str, str]]:
    """For `configured_standin`: every provider at the stand-in's url, a priced Replicate model
    making clips of `durations` seconds, and a quota no test here reaches."""
    return lambda url: {
        "MVPIPE_REPLICATE_BASE_URL": url,
        "MVPIPE_GENAI_BASE_URL": url,
        "MVPIPE_REPLICATE_MODEL": REPLICATE_MODEL,
        "MVPIPE_PRICES": json.dumps({f"replicate:{REPLICATE_MODEL}": usd_per_second}),
        "MVPIPE_REPLICATE_DURATIONS": durations,
        "MVPIPE_PROVIDER_CONCURRENCY": "100",
    }


def settings_for(standin: ProviderStandIn, **extra: object) -> Settings:
    """Settings pointing every provider at the stand-in."""
    values: dict[str, object] = {
        "genai_base_url": standin.url,
        "replicate_base_url": standin.url,
        "provider_timeout_seconds": 5,
        **extra,
    }
    return Settings(**values)  # type: ignore[arg-type]


def stored_lip_sync_request() -> LipSyncRequest:
    """A lip-sync request whose cut clip and audio are stored (in the context's bucket) and
    reached through presigned URLs, as the lip-sync model fetches them itself."""
    clips = get_context().clips
    clips.ensure()
    key = f"projects/{uuid.uuid4()}/scenes/001/op-cut-x.mp4"
    clips.put(key, b"\0\0\0\x18ftypisom" + bytes(64))
    audio_key = key.replace(".mp4", ".wav")
    clips.put(audio_key, b"RIFF\0\0\0\0WAVEfmt " + bytes(64), content_type="audio/wav")
    return LipSyncRequest(
        "p", 1, clips.presigned_url(key, 300), clips.presigned_url(audio_key, 300), 1.0
    )


class _Handler(BaseHTTPRequestHandler):
    standin: ProviderStandIn

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, payload: Any, content_type: str = "application/json") -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True  # the caller gave up first (a timeout)

    def _redirect(self, location: str) -> None:
        """A 302 whose declared body never comes (until released)."""
        self.close_connection = True
        try:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "1024")
            self.end_headers()
            self.wfile.flush()
            self.standin.released.wait(60)
            self.wfile.write(b"x" * 1024)
        except OSError:
            pass  # the client went on without it

    def _output(self, data: bytes) -> None:
        """The output file, framed as `output_framing` says (see there)."""
        s = self.standin
        framing, pieces = s.output_framing, [data]
        if framing == "drip":
            pieces = [data[i : i + 1024] for i in range(0, len(data), 1024)]
        try:
            if framing == "chunked":
                self.protocol_version = "HTTP/1.1"  # chunked framing needs it
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            if s.output_encoding:
                self.send_header("Content-Encoding", s.output_encoding)
            if framing == "chunked":
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
            else:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.close_connection = True
            for number, piece in enumerate(pieces):
                if number and s.released.wait(0.05):
                    return
                if framing == "chunked":
                    for part in (piece[i : i + 65536] for i in range(0, len(piece), 65536)):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                else:
                    self.wfile.write(piece)
                self.wfile.flush()
                with s.lock:
                    s.pieces_sent += 1
            if framing == "chunked":
                self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True  # the caller gave up first

    def _trickle(self, answer: Any, *, head_too: bool) -> None:
        """A 200 sent a byte every `TRICKLE_SECONDS` (the body, or its head too), each well
        inside any read timeout: a broken proxy's pace. Stops when released."""
        s, data = self.standin, json.dumps(answer).encode().ljust(400)  # 20 s at least
        head = (
            b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(data)
        )
        sent_at_once = 0 if head_too else len(head)
        raw = head + data
        try:
            self.wfile.write(raw[:sent_at_once])
            self.wfile.flush()
            for offset in range(sent_at_once, len(raw)):
                if s.released.wait(TRICKLE_SECONDS):
                    return
                self.wfile.write(raw[offset : offset + 1])
                self.wfile.flush()
        except OSError:
            return  # the caller gave up
        with s.lock:
            s.trickled_whole += 1

    def _error(self, api: str, status: int, message: str | None = None) -> None:
        message = message or self.standin.error_message
        if api == "replicate":
            self._reply(status, {"title": "error", "detail": message, "status": status})
        else:
            self._reply(status, {"error": {"code": status, "message": message, "status": "ERR"}})

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length)) if length else {}

    def _fault(self, api: str, fault: str, answer: Any) -> None:
        """Meet a transport fault instead of answering (see FAULTS)."""
        self.close_connection = True
        if fault == "slow":
            self.standin.released.wait(60)
            self._reply(200, answer)
        elif fault == "reset":  # RST, not FIN: the client reads ECONNRESET
            linger = struct.pack("ii", 1, 0)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        elif fault == "mistyped":
            self._reply(200, MISTYPED)
        elif fault == "bad_gateway":
            self._error(api, 502, "Bad Gateway: the upstream's answer was lost")
        elif fault == "garbage":
            page = b"<html><body>502 Bad Gateway</body></html>"
            self._reply(200, page, "text/html")
        elif fault == "undecodable":
            page = "<html><body>Café: accepted</body></html>".encode("latin-1")
            self._reply(201, page, "text/html")
        elif fault in ("trickle", "trickle_head"):
            self._trickle(answer, head_too=fault == "trickle_head")
        elif fault != "close":
            raise ValueError(f"unknown fault {fault!r}; expected one of {FAULTS}")

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
            ("GET", r"^/download/storage/v1/b/", "gcs"),
            ("GET", r"^/storage/v1/b/[^/]+/o/", "gcs.metadata"),
        ]
        kind = next(
            (k for m, pattern, k in kinds if m == method and re.search(pattern, path)), None
        )
        if kind is None:
            self._reply(404, {"error": {"code": 404, "message": f"no route {path}"}})
            return
        headers = {name.lower(): value for name, value in self.headers.items()}
        with s.lock:
            s.requests.append(Recorded(kind, method, path, headers, body))
        api = kind.split(".")[0]
        denied = s.auth_refusal(kind, headers)
        if denied is not None:
            self._error(api, *denied)
            return
        failure = s.scripted_failure(kind)
        if failure is not None:
            self._error(api, failure)
            return
        answer = self._answer(kind, path, body)
        if answer is None:
            return  # refused or already answered
        fault = s.next_fault(kind)
        if fault is not None:
            self._fault(api, fault, answer)
        elif kind in ("file", "gcs"):
            self._output(answer)
        else:
            self._reply(200, answer)

    def _answer(self, kind: str, path: str, body: dict[str, Any]) -> Any:
        """Carry the request out; its answer, or None once a refusal was sent."""
        s = self.standin
        if kind == "veo.create":
            refusal = s.veo_refusal(body)
            if refusal is None:
                return s.veo_create(path, body)
            self._error("veo", 400, f"invalid request: {refusal}")
            return None
        if kind == "veo.poll":
            return s.veo_fetch(body)
        if kind == "gemini":
            return s.gemini_generate(body)
        if kind == "file":
            with s.lock:
                location = s.redirects.pop(0) if s.redirects else None
            if location is None:
                return s.output
            self._redirect(location)
            return None
        if kind == "gcs":
            found = s.gcs_object(path, self.path.partition("?")[2])
            if found is None:
                self._error("gcs", 404, f"No such object: {path}")
            return found
        if kind == "gcs.metadata":
            metadata = s.gcs_metadata(path)
            if metadata is None:
                self._error("gcs", 404, f"No such object: {path}")
            return metadata
        if kind == "replicate.create":
            model = path.removeprefix("/v1/models/").removesuffix("/predictions")
            fetched: dict[str, Fetched] | None = None
            if model in s.lipsync_models:
                checked = s.lipsync_refusal(body)
                refusal = checked if isinstance(checked, str) else None
                fetched = None if isinstance(checked, str) else checked
            else:
                refusal = s.replicate_refusal(body)
            if refusal is None:
                return s.replicate_create(body, fetched)
            self._error("replicate", 422, f"invalid request: {refusal}")
            return None
        pid = path.split("/")[3]
        if s.replicate_reply is not None:
            return s.replicate_reply
        answer = s.replicate_cancel(pid) if kind == "replicate.cancel" else s.replicate_get(pid)
        if answer is None:
            self._reply(404, {"title": "not found", "detail": "no such prediction", "status": 404})
        return answer

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")
