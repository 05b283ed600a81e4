"""G.711 (audio/pcmu, audio/pcma) codec: the wire formats of phone audio."""

import base64

import numpy as np
import pytest

from quillman import errors
from quillman.audio import PCM16, PCMA, PCMU, decode_audio_base64, encode_audio_base64


def tone(n=800, hz=440.0, rate=8000, amplitude=12000):
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(n) / rate)).astype(np.int16)


@pytest.mark.parametrize("fmt", [PCMU, PCMA])
def test_g711_round_trip_keeps_the_signal(fmt):
    pcm = tone()
    encoded = encode_audio_base64(pcm, fmt)
    assert len(base64.b64decode(encoded)) == len(pcm)  # one byte per sample
    decoded = decode_audio_base64(encoded, fmt)
    assert decoded.dtype == np.int16 and len(decoded) == len(pcm)
    noise = (decoded.astype(float) - pcm) ** 2
    snr_db = 10 * np.log10(np.mean(pcm.astype(float) ** 2) / np.mean(noise))
    assert snr_db > 30  # G.711's companding: ~38 dB on a loud tone


def test_pcmu_and_pcma_are_different_codes_of_the_same_audio():
    pcm = tone()
    assert encode_audio_base64(pcm, PCMU) != encode_audio_base64(pcm, PCMA)


def test_mulaw_silence_is_0xff():
    assert base64.b64decode(encode_audio_base64(np.zeros(4, np.int16), PCMU)) == b"\xff" * 4


def test_odd_byte_counts_are_fine_in_g711_but_not_pcm16():
    odd = base64.b64encode(b"\x7f\x00\x10").decode()
    assert len(decode_audio_base64(odd, PCMU)) == 3
    with pytest.raises(errors.InvalidAudioLength):
        decode_audio_base64(odd, PCM16)


@pytest.mark.parametrize("fmt", [PCMU, PCMA])
def test_bad_base64_is_a_typed_error(fmt):
    with pytest.raises(errors.InvalidBase64):
        decode_audio_base64("@@@not base64@@@", fmt)
