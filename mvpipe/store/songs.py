"""Songs and their timelines in S3, under the project's `song/` prefix.

Keys come from the validated project id and the song's content hash, never from a file name:
`projects/{projectId}/song/{sha256[:16]}.{ext}` and `...{sha256[:16]}-timeline.json` beside it.
"""

from __future__ import annotations

import re

from mvpipe.errors import InvalidInput
from mvpipe.models import SONG_FORMATS, validate_project_id
from mvpipe.store.clips import ClipStore

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHORT_HASH = re.compile(r"^[0-9a-f]{16}$")
_CONTENT_TYPES = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "m4a": "audio/mp4",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
}


def song_prefix(project_id: str) -> str:
    return f"projects/{validate_project_id(project_id)}/song/"


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
    """Puts and gets a project's song and timeline; shares the clip store's S3 client."""

    def __init__(self, objects: ClipStore) -> None:
        self.objects = objects

    def put_song(self, project_id: str, sha256: str, ext: str, data: bytes) -> str:
        key = song_key(project_id, sha256, ext)
        self.objects.put(key, data, content_type=_CONTENT_TYPES[ext])
        return key

    def put_timeline(self, project_id: str, sha256: str, data: bytes) -> str:
        key = timeline_key(project_id, sha256)
        self.objects.put(key, data, content_type="application/json")
        return key

    def put_song_aac(self, project_id: str, song_key_: str, data: bytes) -> str:
        key = song_aac_key(project_id, song_key_)
        self.objects.put(key, data, content_type="audio/mp4")
        return key

    def read(self, key: str) -> bytes:
        return self.objects.read(key)

    def delete(self, key: str) -> None:
        self.objects.delete(key)
