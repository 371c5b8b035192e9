"""Decoding and slicing songs: PyAV reads what we wrote, bad bytes are refused by type."""

from __future__ import annotations

import io
import subprocess
import sys
import wave

import numpy as np
import pytest

from mvpipe.errors import InvalidInput
from mvpipe.media.audio import decode_mono, slice_audio, to_wav
from mvpipe.media.synth import synthesize_song
from tests.songs import make_wav


def test_decode_round_trips_a_wav_at_another_rate(tmp_path):
    # Given one second of a 440 Hz tone written as 16-bit WAV at 44.1 kHz
    t = np.arange(44100) / 44100
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = tmp_path / "tone.wav"
    path.write_bytes(to_wav(tone, 44100))
    # When it is decoded from its path at 22.05 kHz
    samples = decode_mono(path, 22050)
    # Then it is one second of float32 samples at the same loudness and pitch
    assert samples.dtype == np.float32
    assert abs(len(samples) - 22050) <= 64
    assert abs(float(np.max(np.abs(samples))) - 0.5) < 0.02
    spectrum = np.abs(np.fft.rfft(samples[:22050]))
    assert abs(np.argmax(spectrum) * 22050 / 22050 - 440) <= 1


def test_decode_mixes_stereo_down_to_mono():
    # Given a stereo WAV with the same tone in both channels
    t = np.arange(8000) / 8000
    tone = (0.4 * np.sin(2 * np.pi * 200 * t) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(np.repeat(tone, 2).tobytes())
    # When it is decoded from bytes
    samples = decode_mono(buffer.getvalue(), 8000)
    # Then one channel comes out with the tone intact
    assert samples.ndim == 1
    assert len(samples) == 8000
    assert np.allclose(samples, tone / 32767, atol=0.02)


#: Run in a child process: a decoder that crashes must fail the test, not kill the test run.
_MEASURE = """
import io, sys, wave
from pathlib import Path
from mvpipe.media.audio import decode_mono, slot_wav
data = Path(sys.argv[2]).read_bytes()
if sys.argv[1] == "decode_mono":
    print(len(decode_mono(data, 22050)) / 22050)
else:
    with wave.open(io.BytesIO(slot_wav(data, 0.5, 1.5, 22050))) as slot:
        print(slot.getnframes() / slot.getframerate())
"""


@pytest.mark.parametrize(("function", "seconds"), [("decode_mono", 2.0), ("slot_wav", 1.0)])
@pytest.mark.parametrize("channels", [8, 16])
def test_a_song_with_eight_or_more_channels_is_mixed_down(tmp_path, channels, function, seconds):
    # Given a 2 s WAV with 8 or more channels (7.1 and up)
    path = tmp_path / "many.wav"
    path.write_bytes(make_wav(2.0, channels=channels, rate=44100))
    # When the song (or a slot of it, as a lip-sync model hears it) is decoded, in a child
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, function, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Then the child lives and hears the whole song (or slot), within a millisecond
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert abs(float(done.stdout) - seconds) <= 0.001


@pytest.mark.parametrize("data", [b"", b"not audio at all" * 100, b"RIFF\x00\x00\x00\x00WAVE"])
def test_garbage_is_invalid_input(data):
    with pytest.raises(InvalidInput):
        decode_mono(data)


def test_slice_is_clamped_to_the_song():
    samples = np.arange(100, dtype=np.float32)
    assert slice_audio(samples, 10, 2.0, 3.0).tolist() == list(range(20, 30))
    assert slice_audio(samples, 10, 9.5, 20.0).tolist() == list(range(95, 100))
    with pytest.raises(InvalidInput):
        slice_audio(samples, 10, 3.0, 2.0)


def test_synthesized_song_is_deterministic_and_truthful():
    # Given the same arguments twice
    first = synthesize_song(seconds=6.0, bpm=100.0, offset=0.25, sections=1)
    second = synthesize_song(seconds=6.0, bpm=100.0, offset=0.25, sections=1)
    # Then the bytes are equal and the truth lists the beats, bars and section starts
    assert first.wav == second.wav
    assert first.beats[0] == 0.25
    assert np.allclose(np.diff(first.beats), 0.6)
    assert first.bars == first.beats[::4]
    assert first.sections == [0.0, *first.bars[1:]]
    # And the audio is silent before the first beat and loud on it
    samples = decode_mono(first.wav, 22050)
    assert len(samples) == 6 * 22050
    assert float(np.max(np.abs(samples[: int(0.24 * 22050)]))) == 0.0
    assert float(np.max(np.abs(samples[int(0.25 * 22050) : int(0.3 * 22050)]))) > 0.3


@pytest.mark.parametrize(
    "kwargs",
    [{"seconds": 0}, {"bpm": float("nan")}, {"offset": -1.0}, {"offset": 40.0}, {"sections": 0}],
)
def test_synth_rejects_bad_arguments(kwargs):
    with pytest.raises(InvalidInput):
        synthesize_song(**kwargs)
