"""Clips in S3 under keys built only from validated ids, the operation and content hashes.

`projects/{projectId}/scenes/{seq:03d}/{operationKey}.mp4`: a stale worker's upload lands on its own
operation's key and can never overwrite the recorded clip; a regenerated scene gets a new key.
Its cut is `{operationKey}-cut-{inputsHash}.mp4` beside it: the same inputs give the same key.
A lip-sync job's output is `{lipSyncOperationKey}-lipsync.mp4`, and the song's audio for the slot
it was given is `audio-{inputsHash}.wav`.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
)
from botocore.exceptions import ConnectionError as NoConnection

from mvpipe.errors import NotFound, StoreUnavailable
from mvpipe.models import validate_project_id, validate_sequence
from mvpipe.settings import Settings
from mvpipe.store.pauses import Outages, credentials_missing, no_credentials
from mvpipe.store.sessions import new_session

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Every project's objects live under `projects/{projectId}/`.
PROJECTS_PREFIX = "projects/"
#: The longest key S3 takes, in UTF-8 bytes: a name past it is no position in a listing.
MAX_KEY_BYTES = 1024


def is_name_segment(text: str) -> bool:
    """Whether `text` can stand for one name at one level of a listing (a folder's or a loose
    object's, what `FolderPage.following` gives): no "/", printable, within S3's key length."""
    return 0 < len(text.encode()) <= MAX_KEY_BYTES and "/" not in text and text.isprintable()


def operation_key(operation_id: str) -> str:
    """A fixed-shape, path-safe name for any provider's operation id."""
    return hashlib.sha256(operation_id.encode()).hexdigest()[:32]


def scene_prefix(project_id: str, sequence: int) -> str:
    project = validate_project_id(project_id)
    return f"{PROJECTS_PREFIX}{project}/scenes/{validate_sequence(sequence):03d}/"


def clip_key(project_id: str, sequence: int, operation_id: str) -> str:
    return f"{scene_prefix(project_id, sequence)}{operation_key(operation_id)}.mp4"


def lipsync_key(project_id: str, sequence: int, operation_id: str) -> str:
    """The lip-synced clip of lip-sync operation `operation_id`."""
    return f"{scene_prefix(project_id, sequence)}{operation_key(operation_id)}-lipsync.mp4"


def slot_audio_key(project_id: str, sequence: int, inputs_hash: str) -> str:
    """The song's audio for the scene's slot (a lip-sync job's input)."""
    if not re.fullmatch(r"[0-9a-f]{8,64}", inputs_hash):
        raise ValueError(f"not an inputs hash: {inputs_hash!r}")
    return f"{scene_prefix(project_id, sequence)}audio-{inputs_hash}.wav"


#: The error codes S3 answers a key with no object with (GET: NoSuchKey; HEAD: a bare 404).
_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


class ObjectMissing(NotFound):
    """No object at `key`: it was never written or it vanished. Not an outage: retrying finds it
    no more, so the caller decides (remake the output, or fail with a reason)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no object at {key} (it is gone from the store)")
        self.key = key


def _is_missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in _MISSING_CODES


#: The error codes S3 answers with when it is busy or failing, not refusing (besides a 5xx).
_BUSY_CODES = frozenset({"SlowDown", "RequestTimeout", "OperationAborted"})


def is_outage(exc: ClientError) -> bool:
    """Whether S3's answer says "later" (a 5xx, throttling, a request it timed out) rather than
    "no" (credentials, permissions, a name it rejects): the first passes, the second would be
    met again."""
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    code = exc.response.get("Error", {}).get("Code")
    return status >= 500 or status == 429 or code in _BUSY_CODES


#: What botocore raises when S3 gave no (whole) answer: no connection, a timeout, a cut body.
_NO_ANSWER = (NoConnection, HTTPClientError, IncompleteReadError)


_OPERATION_KEY = re.compile(r"^[0-9a-f]{32}$")


def working_key(project_id: str, sequence: int, original_key: str, inputs_hash: str) -> str:
    """The cut of `original_key` (a key `clip_key` built): `{operationKey}-cut-{inputsHash}.mp4`.

    The operation key is read back from the original's key, so the cut needs no operation id
    (a scene whose stored id was cleared still has its clip)."""
    stem = original_key.rsplit("/", 1)[-1].removesuffix(".mp4")
    if not _OPERATION_KEY.match(stem):
        stem = operation_key(original_key)  # not ours (hand-made): a fixed-shape name anyway
    if not re.fullmatch(r"[0-9a-f]{8,64}", inputs_hash):
        raise ValueError(f"not an inputs hash: {inputs_hash!r}")
    return f"{scene_prefix(project_id, sequence)}{stem}-cut-{inputs_hash}.mp4"


@dataclass(frozen=True)
class StoredObject:
    key: str
    last_modified: datetime


class FolderPage(NamedTuple):
    """One LIST page of the folders under a prefix."""

    #: the folders' names on the page (what follows the prefix up to the next "/")
    names: list[str]
    #: the name the next page starts after (`ClipStore.folders`' `after`), None: the last page
    following: str | None


class ClipStore:
    def __init__(self, settings: Settings) -> None:
        self.bucket = settings.bucket
        self._outages = Outages("S3", settings.store_retry_seconds, _will_pass, log)
        # botocore's own client (what boto3's `client` returns, less its transfer helpers, which
        # nothing here uses), from a session that shares the process's parsed service models.
        self.client = cast(
            "S3Client",
            new_session().create_client(
                "s3",
                region_name=settings.aws_region,
                endpoint_url=settings.s3_endpoint,
                config=Config(
                    connect_timeout=settings.store_timeout_seconds,
                    read_timeout=settings.store_timeout_seconds,
                    # One try per request: `_outages` is the only retry, bounded as DynamoDB's
                    # calls are (botocore's own backoff on a throttling S3 ran ~31 s).
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    max_pool_connections=settings.store_connections,
                    s3={"addressing_style": "path"},
                ),
            ),
        )

    def ensure(self) -> None:
        """Create the bucket if it is not there; botocore's error is left for the caller to
        classify (a refusal, or an outage that outlasted `store_retry_seconds`)."""
        try:
            self._outages.call(lambda: self.client.head_bucket(Bucket=self.bucket))
        except ClientError:
            try:
                self._outages.call(self._create_bucket)
            except ClientError as exc:
                if exc.response["Error"]["Code"] not in {
                    "BucketAlreadyOwnedByYou",
                    "BucketAlreadyExists",
                }:
                    raise

    def _create_bucket(self) -> None:
        region = self.client.meta.region_name
        if region in (None, "us-east-1"):  # the one region that refuses a location constraint
            self.client.create_bucket(Bucket=self.bucket)
        else:
            self.client.create_bucket(
                Bucket=self.bucket,
                CreateBucketConfiguration={"LocationConstraint": region},  # type: ignore[typeddict-item]
            )

    def put(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str = "video/mp4",
        metadata: dict[str, str] | None = None,
    ) -> None:
        """Store `data` at `key`, with S3 user metadata `metadata` (`x-amz-meta-*`) if given."""
        self._call(
            self.client.put_object,
            Bucket=self.bucket,
            Key=key,
            Body=data,
            ContentType=content_type,
            Metadata=metadata or {},
        )

    def metadata(self, key: str) -> dict[str, str] | None:
        """The user metadata of the object at `key` (one HEAD), None when there is none."""
        try:
            response = self._outages.call(
                lambda: self.client.head_object(Bucket=self.bucket, Key=key)
            )
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise StoreUnavailable(f"S3 unavailable: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(f"S3 unavailable: {exc}") from exc
        return dict(response.get("Metadata", {}))

    def exists(self, key: str) -> bool:
        try:
            self._outages.call(lambda: self.client.head_object(Bucket=self.bucket, Key=key))
        except ClientError as exc:
            if _is_missing(exc):
                return False
            raise StoreUnavailable(f"S3 unavailable: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(f"S3 unavailable: {exc}") from exc
        return True

    def read(self, key: str) -> bytes:
        """The object at `key`; `ObjectMissing` when there is none (a lost object is not an
        outage: retried, it would loop forever), `StoreUnavailable` when S3 did not answer."""

        def fetch() -> bytes:  # the body too: a read cut short is tried again whole
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            return bytes(response["Body"].read())

        try:
            return self._outages.call(fetch)
        except ClientError as exc:
            if _is_missing(exc):
                raise ObjectMissing(key) from None
            raise StoreUnavailable(f"S3 unavailable: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(f"S3 unavailable: {exc}") from exc

    def folders(self, prefix: str, after: str | None, limit: int) -> FolderPage:
        """One LIST page of the folders under `prefix`, from past `after` (a page's `following`;
        None: the first page), at most `limit` entries: a walk over a bucket's projects that
        reads one page per call, never the objects inside the folders.

        Loose objects directly under `prefix` take places on a page too (S3 counts them toward
        `MaxKeys`), so the next page starts after the page's last entry, folder or object: a
        page of loose objects alone still moves the walk on, and none is listed twice."""
        start = {} if after is None else {"StartAfter": f"{prefix}{after}"}
        response = self._call(
            self.client.list_objects_v2,
            Bucket=self.bucket,
            Prefix=prefix,
            Delimiter="/",
            MaxKeys=limit,
            **start,
        )
        folders = [p["Prefix"][len(prefix) :] for p in response.get("CommonPrefixes", [])]
        loose = [o["Key"][len(prefix) :] for o in response.get("Contents", [])]
        names = [f.removesuffix("/") for f in folders]
        entries = folders[-1:] + loose[-1:]
        if not response.get("IsTruncated") or not entries:
            return FolderPage(names, None)
        # Entries come in key order: the page's last is the greater of each kind's last. Past a
        # folder "x/" is "x0" ("0" follows "/"), before which every key in the folder sorts.
        last = max(entries)
        return FolderPage(names, f"{last[:-1]}0" if last.endswith("/") else last)

    def list(self, prefix: str) -> list[StoredObject]:
        paginator = self.client.get_paginator("list_objects_v2")

        def walk() -> list[StoredObject]:  # from the first page again when one fails
            pages = paginator.paginate(Bucket=self.bucket, Prefix=prefix)
            return [
                StoredObject(o["Key"], o["LastModified"])
                for page in pages
                for o in page.get("Contents", [])
            ]

        return self._call(walk)

    def delete(self, key: str) -> None:
        self._call(self.client.delete_object, Bucket=self.bucket, Key=key)

    def presigned_url(self, key: str, expires: int = 3600) -> str:
        """A GET of `key` signed locally (no call, so no outage); without credentials to sign
        with, the `ConfigurationError` a call gets (`pauses.no_credentials`)."""
        try:
            return self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires
            )
        except BotoCoreError as exc:
            if credentials_missing(exc):
                raise no_credentials(self._outages.label, exc) from exc
            raise

    def _call(self, fn: Callable[..., T], **kwargs: Any) -> T:
        """`fn(**kwargs)` under the store's outage policy (`pauses.Outages`, which the calls
        that tell a missing object apart use directly), botocore's last error raised as
        `StoreUnavailable` when it ends: a step's S3 call takes `store_call_seconds` at most,
        never past a lease's bound, and a store out for longer is the task's outage retry, not
        a wait inside the step. A refusal is raised at once: trying again meets the same
        answer."""
        try:
            return self._outages.call(lambda: fn(**kwargs))
        except (ClientError, BotoCoreError) as exc:
            raise StoreUnavailable(f"S3 unavailable: {exc}") from exc


def _will_pass(exc: Exception) -> bool:
    """Whether a try's error is S3 saying "later" or giving no (whole) answer."""
    return isinstance(exc, _NO_ANSWER) or (isinstance(exc, ClientError) and is_outage(exc))
