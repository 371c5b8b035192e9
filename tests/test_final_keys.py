"""Keys of the final video and of the song's AAC copy: built from validated ids and hashes only."""

from __future__ import annotations

import uuid

import pytest

from mvpipe.errors import InvalidInput
from mvpipe.media.assemble import inputs_hash
from mvpipe.media.encoding import OutputFormat
from mvpipe.store.finals import final_video_key
from mvpipe.store.songs import song_aac_key, song_key

PROJECT = str(uuid.uuid4())
SHA = "ab" * 32


def test_the_final_key_is_the_inputs_hash_under_final() -> None:
    digest = inputs_hash("song", ["a.mp4", "b.mp4"], OutputFormat(160, 90, 12))
    assert final_video_key(PROJECT, digest) == f"projects/{PROJECT}/final/{digest}.mp4"
    for bad in ["", "../../x", "ABCDEF0123456789", digest + "0"]:
        with pytest.raises(InvalidInput):
            final_video_key(PROJECT, bad)
    with pytest.raises(InvalidInput):
        final_video_key("not-a-project", digest)


def test_the_song_aac_copy_sits_beside_the_song() -> None:
    key = song_key(PROJECT, SHA, "wav")
    assert song_aac_key(PROJECT, key) == f"projects/{PROJECT}/song/{SHA[:16]}-aac.m4a"
    other = str(uuid.uuid4())
    for bad in [song_key(other, SHA, "wav"), key + "/../x.wav", f"projects/{PROJECT}/song/x.wav"]:
        with pytest.raises(InvalidInput):
            song_aac_key(PROJECT, bad)
