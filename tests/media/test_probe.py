"""`probe_video` on a provider's clip: what a player would see, or a typed refusal."""

from __future__ import annotations

import pytest

from mvpipe.errors import InvalidInput
from mvpipe.media.probe import probe_video

from .clips import make_clip


def test_a_clip_whose_sound_has_no_decoder_is_refused_by_type(tmp_path):
    made = make_clip(tmp_path / "src.mp4", frames=6, audio=True).read_bytes()
    assert probe_video(made).audio_codec == "aac"
    # Given a provider's clip whose sound FFmpeg has no decoder for: an unknown fourcc, and no
    # descriptor (esds) that would name AAC anyway
    unknown = made.replace(b"mp4a", b"zzzz").replace(b"esds", b"zzzz")
    # When it is probed, then it is refused by type, naming why (a traceback before)
    with pytest.raises(InvalidInput, match="no decoder for its audio codec"):
        probe_video(unknown)
    # and the same from a file
    (tmp_path / "unknown.mp4").write_bytes(unknown)
    with pytest.raises(InvalidInput, match="no decoder for its audio codec"):
        probe_video(tmp_path / "unknown.mp4")
