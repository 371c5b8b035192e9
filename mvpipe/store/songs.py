"""Songs and their timelines in S3, under the project's `song/` prefix.

Keys come from the validated project id and the song's content hash, never from a file name:
`projects/{projectId}/song/{sha256[:16]}.{ext}` and `...{sha256[:16]}-timeline.json` beside it.

Every object put here carries the table it belongs to in its S3 user metadata (`OWNER_KEY`):
deployments with tables of their own may share a bucket, and reconcile's stray-song sweep
deletes only the songs its own table's creates left (a table's missing METADATA says nothing of
another table's projects).
"""

from __future__ import annotations

import re

from mvpipe.errors import InvalidInput
from mvpipe.models import SONG_FORMATS, validate_project_id
from mvpipe.store.clips import PROJECTS_PREFIX, ClipStore

#: The S3 user metadata (`x-amz-meta-mvpipe-table`) naming the table a song belongs to.
OWNER_KEY = "mvpipe-table"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHORT_HASH = re.compile(r"^[0-9a-f]{16}$")
_CONTENT_TYPES = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "m4a": "audio/mp4",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
}


def song_prefix(project_id: str) -> str:
    return f"{PROJECTS_PREFIX}{validate_project_id(project_id)}/song/"


def song_key(project_id: str, sha256: str, ext: str) -> str:
    if ext not in SONG_FORMATS:
        raise InvalidInput(f"unknown song format {ext!r}")
    return f"{song_prefix(project_id)}{_short_hash(sha256)}.{ext}"


def timeline_key(project_id: str, sha256: str) -> str:
    return f"{song_prefix(project_id)}{_short_hash(sha256)}-timeline.json"


def song_aac_key(project_id: str, song_key_: str) -> str:
    """The song encoded once as AAC, beside the song it was made from: `{sha256[:16]}-aac.m4a`.

    Every final video copies its packets, so regenerating scenes never encodes the song again.
    """
    prefix = song_prefix(project_id)
    name = song_key_[len(prefix) :] if song_key_.startswith(prefix) else ""
    stem, _, ext = name.partition(".")
    if ext not in SONG_FORMATS or not _SHORT_HASH.match(stem):
        raise InvalidInput(f"not a song key of project {project_id}")
    return f"{prefix}{stem}-aac.m4a"


def _short_hash(sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA256.match(sha256):
        raise InvalidInput("a song's key needs its SHA-256 as 64 lowercase hex digits")
    return sha256[:16]


class SongStore:
    """Puts and gets a project's song and timeline, tagged with `table` (the table the
    projects belong to); shares the clip store's S3 client."""

    def __init__(self, objects: ClipStore, table: str) -> None:
        self.objects = objects
        self.table = table

    def put_song(self, project_id: str, sha256: str, ext: str, data: bytes) -> str:
        key = song_key(project_id, sha256, ext)
        self._put(key, data, _CONTENT_TYPES[ext])
        return key

    def put_timeline(self, project_id: str, sha256: str, data: bytes) -> str:
        key = timeline_key(project_id, sha256)
        self._put(key, data, "application/json")
        return key

    def put_song_aac(self, project_id: str, song_key_: str, data: bytes) -> str:
        key = song_aac_key(project_id, song_key_)
        self._put(key, data, "audio/mp4")
        return key

    def read(self, key: str) -> bytes:
        return self.objects.read(key)

    def is_ours(self, key: str) -> bool:
        """Whether the object at `key` is tagged with this store's table (one HEAD): an untagged
        one, or one gone meanwhile, is not."""
        metadata = self.objects.metadata(key)
        return metadata is not None and metadata.get(OWNER_KEY) == self.table

    def _put(self, key: str, data: bytes, content_type: str) -> None:
        self.objects.put(key, data, content_type=content_type, metadata={OWNER_KEY: self.table})

    def delete(self, key: str) -> None:
        self.objects.delete(key)
