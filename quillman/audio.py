"""Audio helpers: base64 pcm16 / G.711 <-> numpy and resampling (soxr)."""

from __future__ import annotations

import base64
import binascii
import sys
import warnings

import numpy as np
import soxr

from quillman.errors import InvalidAudioLength, InvalidBase64

if sys.version_info >= (3, 13):  # removed from the stdlib; the audioop-lts package is the port
    import audioop
else:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop

# Wire formats: pcm16 at the session's rate, or G.711 (8 kHz, one byte per sample) as phones use.
PCM16, PCMU, PCMA = "audio/pcm", "audio/pcmu", "audio/pcma"
G711_RATE_HZ = 8000


def _b64decode_strict(data: str) -> bytes:
    try:
        # Strict (RFC 4648): whole 4-character groups, no stray padding or characters;
        # lenient decoders disagree on what those mean.
        if len(data) % 4:
            raise binascii.Error("length is not a multiple of 4")
        return binascii.a2b_base64(data.encode("ascii"), strict_mode=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise InvalidBase64(f"audio is not valid base64: {exc}", param="audio") from None


def decode_audio_base64(data: str, fmt: str = PCM16) -> np.ndarray:
    """base64 audio in the wire format ``fmt`` -> int16 array; typed errors for bad input."""
    if fmt == PCM16:
        return decode_pcm16_base64(data)
    raw = _b64decode_strict(data)
    linear = audioop.ulaw2lin(raw, 2) if fmt == PCMU else audioop.alaw2lin(raw, 2)
    return np.frombuffer(linear, dtype="<i2")


def encode_audio_base64(pcm: np.ndarray, fmt: str = PCM16) -> str:
    """int16 samples -> base64 in the wire format ``fmt`` (G.711: already at 8 kHz)."""
    if fmt == PCM16:
        return encode_pcm16_base64(pcm)
    linear = np.asarray(pcm, dtype="<i2").tobytes()
    coded = audioop.lin2ulaw(linear, 2) if fmt == PCMU else audioop.lin2alaw(linear, 2)
    return base64.b64encode(coded).decode("ascii")


def decode_pcm16_base64(data: str) -> np.ndarray:
    """base64 pcm16 little-endian mono -> int16 array; typed errors for bad input."""
    raw = _b64decode_strict(data)
    if len(raw) % 2:
        raise InvalidAudioLength(
            f"pcm16 audio must have an even number of bytes, got {len(raw)}", param="audio"
        )
    return np.frombuffer(raw, dtype="<i2")


def encode_pcm16_base64(pcm: np.ndarray) -> str:
    return base64.b64encode(np.asarray(pcm, dtype="<i2").tobytes()).decode("ascii")


def int16_to_float(pcm: np.ndarray) -> np.ndarray:
    return pcm.astype(np.float32) / 32768.0


def float_to_int16(pcm: np.ndarray) -> np.ndarray:
    return (np.clip(pcm, -1.0, 1.0) * 32767.0).astype(np.int16)


def resample(pcm: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Resample a whole clip (int16 or float32 in, same dtype out)."""
    if from_hz == to_hz or len(pcm) == 0:
        return pcm
    return soxr.resample(pcm, from_hz, to_hz, quality="HQ")


class StreamResampler:
    """Resample a live stream chunk by chunk without clicks at chunk edges."""

    def __init__(self, from_hz: int, to_hz: int):
        self.from_hz = from_hz
        self.to_hz = to_hz
        self._stream = (
            soxr.ResampleStream(from_hz, to_hz, 1, dtype="float32", quality="HQ")
            if from_hz != to_hz
            else None
        )

    def process(self, pcm: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return pcm
        return self._stream.resample_chunk(pcm, last=last)
