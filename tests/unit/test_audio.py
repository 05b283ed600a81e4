"""PCM helpers: base64 pcm16 codec, int16/float conversion, resampling."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from quillman import errors
from quillman.audio import (
    StreamResampler,
    decode_pcm16_base64,
    encode_pcm16_base64,
    float_to_int16,
    int16_to_float,
    resample,
)


def tone(rate: int, hz: float = 440.0, seconds: float = 0.5, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_base64_round_trip():
    pcm = np.array([0, 1, -1, 32767, -32768, 1234], dtype=np.int16)
    encoded = encode_pcm16_base64(pcm)
    assert base64.b64decode(encoded) == pcm.astype("<i2").tobytes()  # little-endian on the wire
    decoded = decode_pcm16_base64(encoded)
    assert decoded.dtype == np.dtype("<i2")
    np.testing.assert_array_equal(decoded, pcm)


def test_decode_empty():
    assert len(decode_pcm16_base64("")) == 0


def test_encode_accepts_other_int_arrays():
    assert decode_pcm16_base64(encode_pcm16_base64(np.array([1, 2, 3]))).tolist() == [1, 2, 3]


@pytest.mark.parametrize("bad", ["@@@@", "abc", "a b c d", "YWJj\n", "====", "aGVsbG8=x"])
def test_invalid_base64(bad):
    with pytest.raises(errors.InvalidBase64) as info:
        decode_pcm16_base64(bad)
    assert info.value.code == "invalid_base64"
    assert info.value.param == "audio"


@pytest.mark.parametrize("n_bytes", [1, 3, 481])
def test_odd_number_of_bytes(n_bytes):
    with pytest.raises(errors.InvalidAudioLength) as info:
        decode_pcm16_base64(base64.b64encode(b"\x01" * n_bytes).decode())
    assert info.value.code == "invalid_audio_length"
    assert str(n_bytes) in info.value.message


def test_int16_float_conversion():
    pcm = np.array([0, 16384, -16384, 32767, -32768], dtype=np.int16)
    f = int16_to_float(pcm)
    assert f.dtype == np.float32
    np.testing.assert_allclose(f, [0, 0.5, -0.5, 32767 / 32768, -1.0])
    back = float_to_int16(f)
    assert back.dtype == np.int16
    assert np.abs(back.astype(int) - pcm.astype(int)).max() <= 1


def test_float_to_int16_clips():
    assert float_to_int16(np.array([2.0, -3.0, 1.0, -1.0], np.float32)).tolist() == [32767, -32767, 32767, -32767]


def test_resample_same_rate_is_identity():
    pcm = tone(16000)
    assert resample(pcm, 16000, 16000) is pcm
    assert len(resample(np.zeros(0, np.float32), 24000, 16000)) == 0


@pytest.mark.parametrize("from_hz, to_hz", [(24000, 16000), (16000, 24000), (48000, 16000), (8000, 16000),
                                            (44100, 16000), (22050, 24000)])
def test_resample_length_and_pitch(from_hz, to_hz):
    pcm = tone(from_hz, hz=440, seconds=1.0)
    out = resample(pcm, from_hz, to_hz)
    assert out.dtype == np.float32
    assert abs(len(out) - to_hz) <= 2
    spectrum = np.abs(np.fft.rfft(out[: to_hz // 2 * 2]))
    peak_hz = np.argmax(spectrum) * to_hz / (to_hz // 2 * 2)
    assert abs(peak_hz - 440) < 3


def test_resample_int16_keeps_dtype():
    pcm = float_to_int16(tone(24000))
    out = resample(pcm, 24000, 16000)
    assert out.dtype == np.int16
    assert abs(len(out) - len(pcm) * 2 // 3) <= 2


@pytest.mark.parametrize("chunk", [320, 480, 1000, 4800])
def test_stream_resampler_matches_whole_clip(chunk):
    pcm = tone(24000, seconds=1.0)
    stream = StreamResampler(24000, 16000)
    pieces = [stream.process(pcm[i:i + chunk]) for i in range(0, len(pcm), chunk)]
    pieces.append(stream.process(np.zeros(0, np.float32), last=True))
    streamed = np.concatenate(pieces)
    whole = resample(pcm, 24000, 16000)
    assert abs(len(streamed) - len(whole)) <= 2
    n = min(len(streamed), len(whole))
    # No clicks or shifts at chunk edges: the stream equals the one-shot resampling.
    assert np.abs(streamed[:n] - whole[:n]).max() < 1e-3


def test_stream_resampler_is_time_aligned():
    # A click at 0.5 s must come out at 0.5 s: the session dates speech by resampled samples.
    pcm = np.zeros(24000, np.float32)
    pcm[12000] = 1.0
    stream = StreamResampler(24000, 16000)
    out = np.concatenate([stream.process(pcm[i:i + 480]) for i in range(0, len(pcm), 480)]
                         + [stream.process(np.zeros(0, np.float32), last=True)])
    assert abs(int(np.argmax(np.abs(out))) - 8000) <= 2


def test_stream_resampler_same_rate_passthrough():
    stream = StreamResampler(16000, 16000)
    pcm = tone(16000)
    assert stream.process(pcm) is pcm
