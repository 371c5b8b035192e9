"""Cutting measured with PyAV: exact frame count, format, frame content by timestamp, held end."""

from __future__ import annotations

from fractions import Fraction

import av
import pytest

from mvpipe.errors import InvalidInput
from mvpipe.media.cut import cut_clip
from mvpipe.media.encoding import OutputFormat

from .clips import luma_levels, luma_plane, make_clip, source_index, with_latin1_title

FMT = OutputFormat(160, 90, 12)


def _probe(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return {
            "codec": stream.codec_context.name,
            "size": (stream.codec_context.width, stream.codec_context.height),
            "pix_fmt": stream.codec_context.pix_fmt,
            "rate": stream.average_rate,
            "frames": frames,
            "audio": len(container.streams.audio),
            "seconds": float(stream.duration * stream.time_base),
        }


def test_cut_has_exactly_the_frames_in_the_output_format(tmp_path):
    src = make_clip(tmp_path / "src.mp4", frames=24, fps=12, width=320, height=180, audio=True)
    report = cut_clip(src, tmp_path / "cut.mp4", frames=17, fmt=FMT)
    probe = _probe(tmp_path / "cut.mp4")
    assert probe == {
        "codec": "h264",
        "size": (160, 90),
        "pix_fmt": "yuv420p",
        "rate": 12,
        "frames": 17,
        "audio": 0,
        "seconds": pytest.approx(17 / 12, abs=1e-6),
    }
    assert (report.frames, report.held_frames, report.source_frames) == (17, 0, 17)
    assert [source_index(v) for v in luma_levels(tmp_path / "cut.mp4")] == list(range(17))


def test_frames_are_resampled_by_timestamp(tmp_path):
    # Given an 8 fps clip, cut at 12 fps: output frame i shows source frame floor(i * 8 / 12)
    src = make_clip(tmp_path / "src.mp4", frames=16, fps=8)
    report = cut_clip(src, tmp_path / "cut.mp4", frames=24, fmt=FMT)
    shown = [source_index(v) for v in luma_levels(tmp_path / "cut.mp4")]
    assert shown == [i * 8 // 12 for i in range(24)]
    assert report.source_frames == 16
    assert report.held_frames == 0


def test_a_faster_source_drops_frames_by_timestamp(tmp_path):
    src = make_clip(tmp_path / "src.mp4", frames=24, fps=24)
    cut_clip(src, tmp_path / "cut.mp4", frames=12, fmt=FMT)
    assert [source_index(v) for v in luma_levels(tmp_path / "cut.mp4")] == list(range(0, 24, 2))


def test_a_short_clip_holds_its_last_frame_never_loops(tmp_path):
    src = make_clip(tmp_path / "src.mp4", frames=10, fps=12)
    report = cut_clip(src, tmp_path / "cut.mp4", frames=18, fmt=FMT)
    shown = [source_index(v) for v in luma_levels(tmp_path / "cut.mp4")]
    assert shown == [*range(10), *[9] * 8]
    assert (report.held_frames, report.source_frames) == (8, 10)


def test_a_late_first_timestamp_counts_from_the_first_frame(tmp_path):
    src = make_clip(tmp_path / "src.mp4", frames=6, fps=12, start_pts=30)
    report = cut_clip(src, tmp_path / "cut.mp4", frames=6, fmt=FMT)
    assert [source_index(v) for v in luma_levels(tmp_path / "cut.mp4")] == list(range(6))
    assert report.held_frames == 0


def test_other_aspect_ratios_are_letterboxed(tmp_path):
    # A square clip in a 16:9 frame: scaled to 90x90, black bars of 35 columns either side
    src = make_clip(tmp_path / "src.mp4", frames=2, fps=12, width=120, height=120)
    cut_clip(src, tmp_path / "cut.mp4", frames=2, fmt=FMT)
    with av.open(str(tmp_path / "cut.mp4")) as container:
        frame = next(container.decode(video=0))
        luma = luma_plane(frame)
    assert luma.shape == (90, 160)
    assert abs(float(luma[:, :33].mean()) - 16) < 3
    assert abs(float(luma[:, -33:].mean()) - 16) < 3
    assert abs(float(luma[:, 37:123].mean()) - 30) < 3


def test_every_cut_carries_the_same_stream_headers(tmp_path):
    # The final join copies packets: every cut must share one set of H.264 headers.
    a = cut_clip(make_clip(tmp_path / "a.mp4", frames=5), tmp_path / "a-cut.mp4", frames=7, fmt=FMT)
    b = make_clip(tmp_path / "b.mp4", frames=20, fps=8, width=320, height=240)
    cut_clip(b, tmp_path / "b-cut.mp4", frames=30, fmt=FMT)
    assert a.frames == 7
    extradata = []
    for name in ("a-cut.mp4", "b-cut.mp4"):
        with av.open(str(tmp_path / name)) as container:
            stream = container.streams.video[0]
            extradata.append(bytes(stream.codec_context.extradata or b""))
            assert stream.codec_context.profile == "High"
            keyframes = [p.is_keyframe for p in container.demux(stream) if p.size]
            assert keyframes[0] is True
    assert extradata[0] and extradata[0] == extradata[1]


def test_output_timestamps_are_consecutive_frames(tmp_path):
    cut_clip(make_clip(tmp_path / "s.mp4", frames=12), tmp_path / "c.mp4", frames=30, fmt=FMT)
    with av.open(str(tmp_path / "c.mp4")) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.size]
        times = [p.pts * p.time_base for p in packets]
        dts = [p.dts * p.time_base for p in packets]
    assert times == [Fraction(i, 12) for i in range(30)]
    assert dts == times


@pytest.mark.parametrize("content", [b"", b"garbage" * 50])
def test_an_undecodable_clip_is_refused_and_nothing_written(tmp_path, content):
    src = tmp_path / "bad.mp4"
    src.write_bytes(content)
    with pytest.raises(InvalidInput):
        cut_clip(src, tmp_path / "out" / "cut.mp4", frames=5, fmt=FMT)
    assert list((tmp_path / "out").glob("*")) == []


def test_a_clip_in_a_codec_without_a_decoder_is_refused_and_nothing_written(tmp_path):
    # Given a provider's clip whose video codec FFmpeg has no decoder for (an unknown fourcc)
    made = make_clip(tmp_path / "src.mp4", frames=6).read_bytes()
    src = tmp_path / "unknown.mp4"
    src.write_bytes(made.replace(b"avc1", b"zzzz"))
    # When it is cut, then it is refused by type, naming why, and nothing is written
    with pytest.raises(InvalidInput, match="no decoder for its video codec"):
        cut_clip(src, tmp_path / "out" / "cut.mp4", frames=5, fmt=FMT)
    assert list((tmp_path / "out").glob("*")) == []


def test_a_clip_without_picture_is_refused(tmp_path):
    path = tmp_path / "sound.m4a"
    with av.open(str(path), mode="w", format="mp4") as out:
        sound = out.add_stream("aac", rate=22050)
        import numpy as np

        chunk = av.AudioFrame.from_ndarray(
            np.zeros((1, 22050), dtype=np.float32), format="fltp", layout="mono"
        )
        chunk.sample_rate = 22050
        for packet in [*sound.encode(chunk), *sound.encode(None)]:
            out.mux(packet)
    with pytest.raises(InvalidInput):
        cut_clip(path, tmp_path / "cut.mp4", frames=5, fmt=FMT)
    assert not (tmp_path / "cut.mp4").exists()


@pytest.mark.parametrize("frames", [0, -3, 2.5])
def test_frame_count_must_be_positive_whole(tmp_path, frames):
    with pytest.raises(InvalidInput):
        cut_clip(
            make_clip(tmp_path / "s.mp4", frames=2), tmp_path / "c.mp4", frames=frames, fmt=FMT
        )


def test_a_bare_stream_without_timestamps_is_cut_at_its_nominal_rate(tmp_path):
    # Given an H.264 elementary stream (no container timestamps at all)
    from av.bitstream import BitStreamFilterContext

    make_clip(tmp_path / "s.mp4", frames=6)
    with (
        av.open(str(tmp_path / "s.mp4")) as src,
        av.open(str(tmp_path / "s.h264"), "w", "h264") as raw,
    ):
        video = src.streams.video[0]
        out = raw.add_stream_from_template(video)
        annexb = BitStreamFilterContext("h264_mp4toannexb", video)
        for packet in src.demux(video):
            for converted in annexb.filter(packet if packet.size else None):
                converted.stream = out
                raw.mux(converted)
    # When it is cut, frames follow each other at the stream's nominal rate
    report = cut_clip(tmp_path / "s.h264", tmp_path / "c.mp4", frames=8, fmt=FMT)
    shown = [source_index(v) for v in luma_levels(tmp_path / "c.mp4")]
    assert len(shown) == 8
    assert shown[0] == 0 and shown[-1] == 5
    assert shown == sorted(shown)
    assert report.held_frames > 0


def test_a_clip_whose_title_is_not_utf8_cuts(tmp_path):
    # Given a provider's clip whose container title is Latin-1 bytes (PyAV's strict default
    # raised UnicodeDecodeError on opening it)
    src = make_clip(tmp_path / "plain.mp4", frames=6)
    tagged = with_latin1_title(src, tmp_path / "tagged.mp4")
    # When it is cut, then it is cut like any clip
    report = cut_clip(tagged, tmp_path / "cut.mp4", frames=6, fmt=FMT)
    assert (report.frames, report.source_frames) == (6, 6)
    assert [source_index(v) for v in luma_levels(tmp_path / "cut.mp4")] == list(range(6))


def test_a_clip_with_frames_larger_than_the_limit_is_refused_before_decoding(tmp_path):
    # Given a real clip of 320x180 frames and a limit below that (the default is 4K)
    src = make_clip(tmp_path / "src.mp4", frames=4, width=320, height=180)
    # When it is cut, then it is refused by its declared size, and nothing is written
    with pytest.raises(InvalidInput, match=r"frames are too large: 320x180"):
        cut_clip(src, tmp_path / "out" / "cut.mp4", frames=4, fmt=FMT, max_pixels=320 * 179)
    assert list((tmp_path / "out").glob("*")) == []
    # At the limit it cuts
    cut_clip(src, tmp_path / "out" / "cut.mp4", frames=4, fmt=FMT, max_pixels=320 * 180)
    assert len(luma_levels(tmp_path / "out" / "cut.mp4")) == 4


def test_a_frame_larger_than_any_provider_makes_is_refused_by_default(tmp_path):
    # Given a clip 8,200 pixels wide (past H.264's longest side) but tiny in pixels and bytes
    src = make_clip(tmp_path / "wide.mp4", frames=1, width=8200, height=16)
    with pytest.raises(InvalidInput, match=r"8200x16"):
        cut_clip(src, tmp_path / "cut.mp4", frames=2, fmt=FMT)
    assert not (tmp_path / "cut.mp4").exists()


def test_a_clip_decoding_far_more_frames_than_its_slot_is_refused(tmp_path):
    # Given a clip of 24 frames at 24 fps, cut to a 0.5 s slot (6 frames at 12 fps)
    src = make_clip(tmp_path / "src.mp4", frames=24, fps=24)
    # When at most 6 source frames a second are allowed (the slot and a second: 9 frames), then
    # the cut stops decoding and refuses the clip
    with pytest.raises(InvalidInput, match="too many frames: more than 9"):
        cut_clip(src, tmp_path / "cut.mp4", frames=6, fmt=FMT, max_fps=6)
    assert not (tmp_path / "cut.mp4").exists()
    # At the default limit the same clip cuts
    assert cut_clip(src, tmp_path / "cut.mp4", frames=6, fmt=FMT).frames == 6
