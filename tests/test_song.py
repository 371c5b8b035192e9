"""Song intake without servers: decoding, measuring and refusing songs; keys, settings, specs."""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from pathlib import Path

import av
import pytest
from pydantic import ValidationError

from mvpipe.errors import InvalidInput
from mvpipe.media.audio import decode_mono
from mvpipe.media.song import mp3_header_seconds, probe_song, read_song
from mvpipe.models import ProjectSpec, SongSpec, budget_to_micros
from mvpipe.settings import Settings
from mvpipe.store.records import ProjectRecord, ProjectState, SceneRecord
from mvpipe.store.songs import song_key, timeline_key
from mvpipe.store.table import METADATA, bind_table, project_pk, scene_sk
from tests.songs import (
    ENCODINGS,
    make_glued_mp3,
    make_song,
    make_uneven_song,
    make_video_only,
    make_wav,
    with_latin1_title,
)

LIMITS = dict(min_seconds=5.0, max_seconds=600.0, max_bytes=50 * 1024 * 1024)
#: "Within a frame": one frame of the default 24 fps output.
FRAME = 1 / 24


@pytest.mark.parametrize("kind", sorted(ENCODINGS))
def test_good_songs_are_measured_by_decoding(kind: str) -> None:
    # Given a 6.5 s song in each accepted format
    song = make_song(kind, 6.5)
    # When it is probed
    info = probe_song(song.data, **LIMITS)
    # Then its decoded length is the truth within a frame, and the rest is what went in
    assert abs(info.seconds - song.seconds) <= FRAME, (kind, info.seconds)
    assert info.ext == kind.split("-")[0]
    assert info.channels == song.channels
    # Opus always decodes at 48 kHz, whatever rate it was fed.
    assert info.sample_rate == (48000 if kind == "ogg-opus" else song.sample_rate)
    assert info.sha256 == hashlib.sha256(song.data).hexdigest()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (os.urandom(20_000), "not a readable audio file"),
        (b"RIFF\x00\x00\x00\x00WAVE" + b"\x00" * 100, "not a readable audio file"),
        (make_video_only(), "no audio stream"),
        (make_song("mp3", 8.0).data[:9_000], "truncated"),
        (make_song("wav", 8.0, channels=1).data[:100_000], "truncated"),
        (make_song("ogg-vorbis", 8.0).data[:20_000], "truncated"),
        (make_song("flac", 8.0).data[:30_000], "truncated"),
        (make_song("m4a", 8.0).data[:40_000], "truncated"),
        (make_song("wav", 3.0, channels=1).data, "too short"),
        (make_wav(6.0, tag=3), "no decoder for its audio codec"),  # 16-bit float
        (make_wav(6.0, tag=0x9999), "no decoder for its audio codec"),
        (make_wav(6.0, bits=0), "no decoder for its audio codec"),
        (make_wav(6.0, channels=65), "song has 65 audio channels, at most 64"),
    ],
    ids=[
        "empty",
        "garbage",
        "header-only-wav",
        "video-only",
        "truncated-mp3",
        "truncated-wav",
        "truncated-ogg",
        "truncated-flac",
        "truncated-m4a",
        "too-short",
        "float-16-wav",
        "unknown-format-tag",
        "no-bits-per-sample",
        "65-channels",
    ],
)
def test_bad_songs_are_refused_naming_the_reason(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        probe_song(data, **LIMITS)


@pytest.mark.parametrize("loud_first", [True, False], ids=["guessed-short", "guessed-long"])
@pytest.mark.parametrize("kind", ["mp3", "aac"])
def test_a_song_that_declares_no_length_is_measured_by_its_samples(
    kind: str, loud_first: bool
) -> None:
    # Given 20 s of VBR MP3 with no Xing/Info header, or of raw AAC, whose bitrate changes
    # halfway
    song = make_uneven_song(kind, 20.0, loud_first=loud_first)
    with av.open(io.BytesIO(song.data)) as container:
        guessed = container.duration / av.time_base
    assert abs(guessed - song.seconds) > 5, guessed  # FFmpeg's bitrate guess is far off
    # When it is probed, then it is accepted at the length its samples last (the encoder's
    # delay and padding aside), neither cut at the guess nor refused as truncated
    info = probe_song(song.data, **LIMITS)
    assert abs(info.seconds - song.seconds) <= 0.1, info.seconds


def test_an_mp3_header_declares_a_length_only_with_a_frame_count() -> None:
    # A LAME Info header counts the frames: the truncation check keeps its reference
    whole = make_song("mp3", 8.0).data
    counted = mp3_header_seconds(whole)
    assert counted is not None and abs(counted - 8.0) < 0.1
    assert mp3_header_seconds(whole[:9_000]) == counted  # a cut file keeps its header
    # Without the header, or without its frame count, nothing is declared
    bare = make_song("mp3", 8.0, options={"id3v2_version": "0", "write_xing": "0"}).data
    assert bare[:2] != b"ID3" and mp3_header_seconds(bare) is None
    info = whole.find(b"Info")
    no_count = whole[: info + 7] + bytes([whole[info + 7] & 0xFE]) + whole[info + 8 :]
    assert mp3_header_seconds(no_count) is None
    for junk in [b"", b"ID3", b"\xff\xfb", os.urandom(64), b"ID3\x04\x00\x00\x00\x00\x00\x05ab"]:
        assert mp3_header_seconds(junk) is None


@pytest.mark.parametrize(
    ("rate", "channels", "tail"),
    [(48000, 2, 6.0), (44100, 1, 6.0), (44100, 2, 0.25)],
    ids=["rate", "layout", "short-tail"],
)
def test_glued_songs_are_decoded_whole(rate: int, channels: int, tail: float) -> None:
    # Given 6 s of 44.1 kHz stereo MP3 glued to more at another rate or with one channel, or
    # to a tail too short for FFmpeg to distrust the first part's frame count
    song = make_glued_mp3(rate, channels, tail)
    # When it is probed and decoded for analysis
    info = probe_song(song.data, **LIMITS)
    samples = decode_mono(song.data, 22050)
    # Then both halves count (each part's encoder delay and padding aside), and analysis
    # decodes as long as the probe measured
    assert abs(info.seconds - song.seconds) <= 0.1, info.seconds
    assert (info.sample_rate, info.channels) == (rate, channels)
    assert abs(len(samples) / 22050 - info.seconds) <= FRAME


def test_too_long_and_too_large_use_the_given_limits() -> None:
    song = make_song("flac", 7.0)
    with pytest.raises(InvalidInput, match="too long"):
        probe_song(song.data, min_seconds=1, max_seconds=6, max_bytes=10**7)
    with pytest.raises(InvalidInput, match="too large"):
        probe_song(song.data, min_seconds=1, max_seconds=60, max_bytes=len(song.data) - 1)
    # The size is checked before decoding: oversized garbage is "too large", not "unreadable".
    with pytest.raises(InvalidInput, match="too large"):
        probe_song(os.urandom(5000), min_seconds=1, max_seconds=60, max_bytes=4999)
    assert probe_song(song.data, min_seconds=1, max_seconds=7.5, max_bytes=len(song.data))


def test_reading_a_song_from_a_path(tmp_path: Path) -> None:
    song = make_song("wav", 5.5, channels=1)
    path = tmp_path / "song.wav"
    path.write_bytes(song.data)
    assert read_song(path, max_bytes=10**7) == song.data
    assert read_song(str(path), max_bytes=10**7) == song.data
    assert read_song(bytearray(b"abc"), max_bytes=1) == b"abc"
    with pytest.raises(InvalidInput, match="does not exist"):
        read_song(tmp_path / "missing.wav", max_bytes=10**7)
    with pytest.raises(InvalidInput, match="not a file"):
        read_song(tmp_path, max_bytes=10**7)
    with pytest.raises(InvalidInput, match="cannot be read"):
        read_song(path / "inside-a-file.wav", max_bytes=10**7)
    with pytest.raises(InvalidInput, match="too large"):
        read_song(path, max_bytes=len(song.data) - 1)
    with pytest.raises(InvalidInput, match="path or bytes"):
        read_song(42, max_bytes=10)  # type: ignore[arg-type]


def test_song_keys_come_from_validated_ids_and_the_hash() -> None:
    pid, sha = str(uuid.uuid4()), hashlib.sha256(b"x").hexdigest()
    assert song_key(pid, sha, "mp3") == f"projects/{pid}/song/{sha[:16]}.mp3"
    assert timeline_key(pid, sha) == f"projects/{pid}/song/{sha[:16]}-timeline.json"
    for bad in [("../x", sha, "mp3"), (pid, "../" + sha[3:], "mp3"), (pid, sha, "exe")]:
        with pytest.raises(InvalidInput):
            song_key(*bad)
    with pytest.raises(InvalidInput):
        timeline_key(pid, sha.upper())


def _spec(**kwargs: object) -> ProjectSpec:
    return ProjectSpec.model_validate({"title": "t", "concept": "c", "provider": "local", **kwargs})


def test_with_a_song_the_song_decides_the_scenes() -> None:
    song = SongSpec(sha256="a" * 64, ext="wav", seconds=30.0)
    assert _spec(song=song, lip_sync=True).song == song
    for bad in [
        dict(song=song, requested_scene_count=3),
        dict(song=song, scenes=[{"prompt": "p"}]),
        dict(requested_scene_count=3, lip_sync=True),
        dict(),
    ]:
        with pytest.raises(ValidationError):
            _spec(**bad)
    assert _spec(requested_scene_count=2).song is None


def test_budgets_in_dollars_become_micros() -> None:
    assert budget_to_micros(None) is None
    assert budget_to_micros(0) == 0
    assert budget_to_micros(12.345678) == 12_345_678
    for bad in [-0.01, float("nan"), float("inf"), 1e7, True, "5"]:
        with pytest.raises(InvalidInput):
            budget_to_micros(bad)


def test_settings_for_songs_slots_and_output() -> None:
    s = Settings()
    assert (s.song_min_seconds, s.song_max_seconds, s.song_max_bytes) == (5, 600, 50 * 2**20)
    assert (s.slot_min_seconds, s.output_size, s.output_fps) == (2, "1280x720", 24)
    assert s.durations_for("veo") == [4, 6, 8]
    assert s.durations_for("local") == list(range(1, 31))
    assert Settings(replicate_durations="10,5").durations_for("replicate") == [5, 10]
    assert Settings(replicate_durations="[4, 8]").durations_for("replicate") == [4, 8]
    with pytest.raises(ValueError):
        s.durations_for("nope")
    for bad in [
        dict(replicate_durations="0"),
        dict(replicate_durations="31"),
        dict(output_size="1281x720"),
        dict(output_size="big"),
        dict(output_fps=0),
        dict(song_min_seconds=700),
        dict(slot_min_seconds=9),  # longer than Veo's longest clip
        dict(slot_min_seconds=4, replicate_durations="3"),
        dict(song_max_bytes=0),
    ]:
        with pytest.raises(ValidationError):
            Settings(**bad)


def test_v4_fields_round_trip_from_items_to_views() -> None:
    model = bind_table(Settings())
    pid = str(uuid.uuid4())
    meta = model(
        project_pk(pid),
        METADATA,
        project_id=pid,
        title="t",
        concept="c",
        status="assembling",
        created_at="2026-01-01T00:00:00+00:00",
        updated_at="2026-01-01T00:00:01+00:00",
        song_key=f"projects/{pid}/song/abc.wav",
        song_seconds=31.25,
        timeline_key=f"projects/{pid}/song/abc-timeline.json",
        lip_sync=True,
        final_video_key=f"projects/{pid}/final/f.mp4",
        budget_micros=2_500_000,
        committed_cost_micros=1_250_000,
    )
    project = ProjectRecord.from_item(meta)
    assert project.status == "assembling"
    scene_item = model(
        project_pk(pid),
        scene_sk(3),
        sequence=3,
        prompt="p",
        duration_seconds=4,
        status="processing",
        working_clip_key="w.mp4",
        lip_synced_clip_key="l.mp4",
        start_seconds=4.5,
        end_seconds=7.75,
        lip_sync=True,
        lip_sync_operation_id="op-1",
        lip_sync_attempts=2,
        cost_micros=750_000,
    )
    scene = SceneRecord.from_item(pid, scene_item).view()
    assert (scene.start_seconds, scene.end_seconds) == (4.5, 7.75)
    assert (scene.working_video_clip_s3_key, scene.lip_synced_video_clip_s3_key) == (
        "w.mp4",
        "l.mp4",
    )
    assert scene.lip_sync and scene.lip_sync_operation_id == "op-1"
    assert (scene.lip_sync_attempts, scene.cost_usd) == (2, 0.75)
    pv = ProjectState(project, (SceneRecord.from_item(pid, scene_item),)).view()
    assert pv.song_s3_key == f"projects/{pid}/song/abc.wav" and pv.song_seconds == 31.25
    assert pv.timeline_s3_key == f"projects/{pid}/song/abc-timeline.json" and pv.lip_sync
    assert pv.final_video_s3_key == f"projects/{pid}/final/f.mp4"
    assert (pv.budget_usd, pv.committed_cost_usd) == (2.5, 1.25)
    # Items written before v4 read as "no song, no budget, nothing spent".
    old_item = model(
        project_pk(pid), METADATA, created_at=meta.created_at, updated_at=meta.updated_at
    )
    old = ProjectRecord.from_item(old_item)
    old_view = ProjectState(old, ()).view()
    assert old_view.song_s3_key is None and old_view.budget_usd is None
    assert old_view.committed_cost_usd == 0 and not old_view.lip_sync


def test_a_song_whose_title_is_not_utf8_is_accepted_and_decoded() -> None:
    # Given a valid WAV whose LIST/INFO title is Latin-1 "Café!" (PyAV's strict UTF-8 default
    # raised UnicodeDecodeError on it). Tags are never read, so the song is accepted: refusing
    # it would refuse every song tagged by a tool that writes Latin-1.
    song = make_song("wav", 5.5, channels=1)
    tagged = with_latin1_title(song.data)
    assert "Caf\xe9!".encode("latin-1") in tagged and len(tagged) > len(song.data)
    # When it is probed, then it is measured like the untagged song
    info = probe_song(tagged, **LIMITS)
    assert (info.ext, info.sample_rate, info.channels) == ("wav", song.sample_rate, 1)
    assert abs(info.seconds - song.seconds) < 1e-6
    # And analysis decodes the same samples
    rate = song.sample_rate
    assert len(decode_mono(tagged, rate)) == len(decode_mono(song.data, rate)) > 0
