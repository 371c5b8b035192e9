"""Assembly measured with PyAV: a remux (packets byte-identical), the song in sync, exact length."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from mvpipe.errors import InvalidInput
from mvpipe.media.assemble import assemble, cut_in, encode_song, inputs_hash
from mvpipe.media.audio import decode_mono
from mvpipe.media.cut import cut_clip
from mvpipe.media.encoding import OutputFormat
from mvpipe.media.song import probe_song
from mvpipe.media.synth import synthesize_song
from tests.songs import make_glued_mp3, make_song, with_latin1_title

from .clips import luma_levels, make_clip, source_index

FMT = OutputFormat(160, 90, 12)


def _cuts(tmp_path: Path, lengths: list[int]) -> list[Path]:
    """Cuts of `lengths` frames, each from its own source frames (levels never repeat)."""
    paths = []
    for k, frames in enumerate(lengths):
        src = make_clip(tmp_path / f"src{k}.mp4", frames=min(frames, 6), first=6 * k)
        dst = tmp_path / f"cut{k}.mp4"
        cut_clip(src, dst, frames=frames, fmt=FMT)
        paths.append(dst)
    return paths


def _packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(container.streams.video[0]) if p.size]


@pytest.fixture
def song(tmp_path) -> tuple[Path, float]:
    path = tmp_path / "song.wav"
    path.write_bytes(synthesize_song(seconds=3.0, bpm=120.0, offset=0.1, sample_rate=44100).wav)
    return path, 3.0


def test_clips_and_song_become_one_h264_aac_video_as_long_as_the_song(tmp_path, song):
    song_path, seconds = song
    clips = _cuts(tmp_path, [10, 14, 12])  # 36 frames = 3 s at 12 fps
    report = assemble(clips, tmp_path / "final.mp4", fmt=FMT, song=song_path, song_seconds=seconds)
    assert (report.frames, report.clips, report.dropped_frames) == (36, 3, 0)
    with av.open(str(tmp_path / "final.mp4")) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264"
        assert (video.codec_context.width, video.codec_context.height) == (160, 90)
        assert video.average_rate == 12
        assert audio.codec_context.name == "aac"
        frames = sum(1 for _ in container.decode(video))
    assert frames == 36
    sound = decode_mono(tmp_path / "final.mp4", 44100)
    assert abs(len(sound) / 44100 - seconds) <= 1 / 12
    assert report.audio_seconds == pytest.approx(seconds, abs=1 / 12)


@pytest.mark.parametrize(("rate", "channels"), [(48000, 2), (44100, 1)], ids=["rate", "layout"])
def test_a_song_whose_rate_or_channels_change_midway_is_joined_whole(tmp_path, rate, channels):
    # Given a song whose second half has another rate or fewer channels, measured at intake
    song_path = tmp_path / "glued.mp3"
    song_path.write_bytes(make_glued_mp3(rate, channels).data)
    info = probe_song(song_path.read_bytes(), min_seconds=1, max_seconds=60, max_bytes=10**7)
    frames = round(info.seconds * FMT.fps)
    # When it is encoded once as AAC and joined with clips as long as it, as a project does
    aac = tmp_path / "song.m4a"
    assert encode_song(song_path, aac) == pytest.approx(info.seconds, abs=1 / 12)
    clips = _cuts(tmp_path, [frames // 2, frames - frames // 2])
    report = assemble(clips, tmp_path / "f.mp4", fmt=FMT, song=aac, song_seconds=info.seconds)
    # Then the final video's sound lasts the whole song, within a frame
    assert report.frames == frames
    heard = decode_mono(tmp_path / "f.mp4", 44100)
    assert abs(len(heard) / 44100 - info.seconds) <= 1 / FMT.fps


def test_the_join_copies_packets_without_re_encoding(tmp_path):
    clips = _cuts(tmp_path, [5, 7, 6])
    assemble(clips, tmp_path / "final.mp4", fmt=FMT, song=None, song_seconds=None)
    assert _packets(tmp_path / "final.mp4") == [p for c in clips for p in _packets(c)]


def test_the_picture_changes_exactly_at_the_clip_boundaries(tmp_path):
    clips = _cuts(tmp_path, [4, 6, 5])
    assemble(clips, tmp_path / "final.mp4", fmt=FMT, song=None, song_seconds=None)
    shown = [source_index(v) for v in luma_levels(tmp_path / "final.mp4")]
    # Clip 0 shows source frames 0-3; clip 1 frames 6-11; clip 2 frames 12-16.
    assert shown == [0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]


def test_without_a_song_the_video_is_silent(tmp_path):
    clips = _cuts(tmp_path, [5, 7])
    report = assemble(clips, tmp_path / "final.mp4", fmt=FMT, song=None, song_seconds=None)
    with av.open(str(tmp_path / "final.mp4")) as container:
        assert len(container.streams.audio) == 0
        assert sum(1 for _ in container.decode(video=0)) == 12
    assert report.audio_seconds is None


def _audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size]


@pytest.mark.parametrize("pre_encoded", [False, True])
def test_the_song_is_in_sync(tmp_path, song, pre_encoded):
    song_path, seconds = song
    if pre_encoded:
        # A song encoded to AAC once is copied into every final video, not encoded again.
        aac = tmp_path / "song.m4a"
        assert encode_song(song_path, aac) == pytest.approx(seconds, abs=0.03)
        clips = _cuts(tmp_path, [18, 18])
        report = assemble(clips, tmp_path / "final.mp4", fmt=FMT, song=aac, song_seconds=seconds)
        copied, original = _audio_packets(tmp_path / "final.mp4"), _audio_packets(aac)
        assert copied and copied == original[: len(copied)]
        assert len(copied) >= len(original) - 1
        assert report.audio_seconds == pytest.approx(seconds, abs=1 / 12)
        heard = decode_mono(tmp_path / "final.mp4", 44100)
        assert abs(len(heard) / 44100 - seconds) <= 1 / 12
    else:
        clips = _cuts(tmp_path, [18, 18])
        assemble(clips, tmp_path / "final.mp4", fmt=FMT, song=song_path, song_seconds=seconds)
    original = decode_mono(song_path, 8000)
    muxed = decode_mono(tmp_path / "final.mp4", 8000)
    n = min(len(original), len(muxed))
    a, b = original[:n] ** 2, muxed[:n] ** 2  # energy: robust to the codec's phase changes
    lags = range(-80, 81)  # ±10 ms at 8 kHz
    scores = [
        float(np.dot(a[max(0, -k) : n - max(0, k)], b[max(0, k) : n - max(0, -k)])) for k in lags
    ]
    best = list(lags)[int(np.argmax(scores))]
    assert abs(best) <= 8, f"audio is {best / 8} ms off"


def _first_click(path: Path) -> float:
    """When the first click (a sample above 0.5) plays: its frame's timestamp plus its place."""
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.audio[0]):
            loud = np.flatnonzero(np.abs(frame.to_ndarray()).max(axis=0) > 0.5)
            if len(loud) and frame.time is not None:
                return frame.time + int(loud[0]) / frame.sample_rate
    raise AssertionError(f"{path.name} has no click")


def test_an_aac_song_that_starts_late_plays_from_the_first_frame_and_whole(tmp_path):
    # Given an M4A whose audio starts 0.5 s in (as copied out of a video), measured at intake
    song = tmp_path / "late.m4a"
    song.write_bytes(make_song("m4a", 3.0, rate=22050, start=0.5).data)
    info = probe_song(song.read_bytes(), min_seconds=1, max_seconds=60, max_bytes=10**7)
    analysed = decode_mono(song, 22050)  # what analysis and the slots count from 0
    heard_click = float(np.flatnonzero(np.abs(analysed) > 0.5)[0]) / 22050
    # When it is encoded once (its AAC copied) and joined with clips as long as it
    aac = tmp_path / "song.m4a"
    assert encode_song(song, aac) == pytest.approx(info.seconds, abs=1 / FMT.fps)
    frames = round(info.seconds * FMT.fps)
    clips = _cuts(tmp_path, [frames // 2, frames - frames // 2])
    report = assemble(clips, tmp_path / "f.mp4", fmt=FMT, song=aac, song_seconds=info.seconds)
    # Then the sound starts with the picture, each click on the frame analysis put it on
    with av.open(str(tmp_path / "f.mp4")) as container:
        audio = container.streams.audio[0]
        assert audio.start_time is not None and audio.time_base is not None
        assert float(audio.start_time * audio.time_base) <= 1 / FMT.fps
    assert abs(_first_click(tmp_path / "f.mp4") - heard_click) <= 1 / FMT.fps
    # And the whole song is heard, its end not cut
    final = decode_mono(tmp_path / "f.mp4", 22050)
    assert abs(len(final) / 22050 - info.seconds) <= 1 / FMT.fps
    assert report.audio_seconds == pytest.approx(info.seconds, abs=1 / FMT.fps)


def test_a_pre_encoded_song_is_cut_to_the_song_length(tmp_path, song):
    song_path, _ = song
    aac = tmp_path / "song.m4a"
    encode_song(song_path, aac)
    clips = _cuts(tmp_path, [12, 12])
    report = assemble(clips, tmp_path / "f.mp4", fmt=FMT, song=aac, song_seconds=2.0)
    assert report.frames == 24
    assert report.audio_seconds == pytest.approx(2.0, abs=1 / 12)
    assert abs(len(decode_mono(tmp_path / "f.mp4", 44100)) / 44100 - 2.0) <= 1 / 12


def test_the_song_length_defaults_to_the_song_itself(tmp_path, song):
    song_path, _ = song
    report = assemble(
        _cuts(tmp_path, [18, 18]), tmp_path / "f.mp4", fmt=FMT, song=song_path, song_seconds=None
    )
    assert report.frames == 36
    assert report.audio_seconds == pytest.approx(3.0, abs=1 / 12)


def test_clips_past_the_song_are_cut_to_its_length(tmp_path, song):
    song_path, _ = song
    clips = _cuts(tmp_path, [20, 20])  # 40 frames for a 3 s song at 12 fps (36)
    report = assemble(clips, tmp_path / "final.mp4", fmt=FMT, song=song_path, song_seconds=3.0)
    assert (report.frames, report.dropped_frames) == (36, 4)
    with av.open(str(tmp_path / "final.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 36


def test_the_index_comes_first(tmp_path, song):
    song_path, _ = song
    assemble(
        _cuts(tmp_path, [18, 18]), tmp_path / "f.mp4", fmt=FMT, song=song_path, song_seconds=3.0
    )
    data = (tmp_path / "f.mp4").read_bytes()
    assert 0 < data.index(b"moov") < data.index(b"mdat")


def test_clips_shorter_than_the_song_are_refused(tmp_path, song):
    song_path, _ = song
    with pytest.raises(InvalidInput):
        assemble(
            _cuts(tmp_path, [10, 10]), tmp_path / "f.mp4", fmt=FMT, song=song_path, song_seconds=3.0
        )
    assert not (tmp_path / "f.mp4").exists()
    assert [p.name for p in tmp_path.glob(".partial-*")] == []


def test_a_clip_in_another_format_is_refused(tmp_path):
    good = _cuts(tmp_path, [5])
    foreign = make_clip(tmp_path / "raw.mp4", frames=5, width=320, height=180)
    with pytest.raises(InvalidInput):
        assemble([*good, foreign], tmp_path / "f.mp4", fmt=FMT, song=None, song_seconds=None)
    with pytest.raises(InvalidInput):
        assemble([], tmp_path / "f.mp4", fmt=FMT, song=None, song_seconds=None)
    assert not (tmp_path / "f.mp4").exists()


def test_a_clip_is_told_in_the_format_only_when_assemble_would_join_it(tmp_path):
    (cut,) = _cuts(tmp_path, [5])
    assert cut_in(cut, FMT)
    assert not cut_in(cut, OutputFormat(320, 180, 12))  # the size changed since its cut
    assert not cut_in(cut, OutputFormat(160, 90, 24))  # the rate changed
    assert not cut_in(make_clip(tmp_path / "raw.mp4", frames=5), FMT)  # not made by the cut
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video")
    assert not cut_in(garbage, FMT)


def test_inputs_hash_covers_song_clips_order_and_format():
    base = inputs_hash("song/a.wav", ["c1", "c2"], FMT)
    assert base == inputs_hash("song/a.wav", ["c1", "c2"], OutputFormat(160, 90, 12))
    assert len(base) == 16 and int(base, 16) >= 0
    variants = {
        inputs_hash("song/b.wav", ["c1", "c2"], FMT),
        inputs_hash(None, ["c1", "c2"], FMT),
        inputs_hash("song/a.wav", ["c2", "c1"], FMT),
        inputs_hash("song/a.wav", ["c1", "c3"], FMT),
        inputs_hash("song/a.wav", ["c1", "c2"], OutputFormat(160, 90, 24)),
    }
    assert base not in variants and len(variants) == 5
    with pytest.raises(InvalidInput):
        inputs_hash("song/a.wav", [], FMT)


def test_a_song_whose_title_is_not_utf8_is_joined(tmp_path, song):
    # Given the song with a Latin-1 LIST/INFO title, as intake accepts it
    song_path, seconds = song
    song_path.write_bytes(with_latin1_title(song_path.read_bytes()))
    clips = _cuts(tmp_path, [18, 18])
    # When the video is assembled, then the song is its sound
    report = assemble(clips, tmp_path / "final.mp4", fmt=FMT, song=song_path, song_seconds=seconds)
    assert report.frames == 36
    assert report.audio_seconds == pytest.approx(seconds, abs=1 / 12)
    sound = decode_mono(tmp_path / "final.mp4", 44100)
    assert abs(len(sound) / 44100 - seconds) <= 1 / 12
