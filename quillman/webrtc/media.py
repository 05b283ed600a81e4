"""Audio of a call: the caller's track decoded into the session, the reply paced onto ours.

In: aiortc decodes the caller's Opus (48 kHz) into ``av.AudioFrame``s; :func:`pump_input`
resamples each to mono pcm16 at the session's input rate (it follows ``session.update``) and
hands it to the session as a :class:`~quillman.pipeline.session.PcmFrame`: no base64, no JSON.

Out: :class:`ReplyTrack` is the one audio track we send. aiortc pulls a 20 ms frame at a time
from ``recv()``; we hand one every 20 ms of wall time, from the session's
:class:`~quillman.pipeline.playback.PlaybackBuffer` (silence when no reply plays), so what the
buffer has given out is what the caller has been sent in real time: the played position a
barge-in truncates at. Opus encoding is aiortc's.
"""

from __future__ import annotations

import fractions
import logging
from collections.abc import Callable

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from quillman.pipeline.playback import PlaybackBuffer
from quillman.pipeline.session import PcmFrame
from quillman.webrtc.pacing import FRAME_SAMPLES, RATE_HZ, FrameClock

logger = logging.getLogger(__name__)

MAX_LAG_S = 0.5  # behind schedule by more than this (a stalled loop): restart the clock, don't burst


class ReplyTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, buffer: PlaybackBuffer):
        super().__init__()
        self.buffer = buffer
        self._clock = FrameClock(max_lag_s=MAX_LAG_S)
        self.frames_sent = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        pts = await self._clock.tick()
        pcm = self.buffer.take(FRAME_SAMPLES)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE_HZ
        frame.pts = pts
        frame.time_base = fractions.Fraction(1, RATE_HZ)
        self.frames_sent += 1
        return frame


def set_jitter_buffer(receiver, frames: int) -> bool:
    """Hold ``frames`` 20 ms packets before decoding the caller's audio, instead of aiortc's 4.

    aiortc's audio receiver waits for 4 packets (80 ms) before it decodes, to absorb reordering;
    every one of those ms is voice-to-voice latency (the VAD hears the end of speech that much
    later). On the networks a voice agent runs over, 2 (40 ms) loses little, and Opus conceals what
    comes too late. aiortc has no setting for it, so the receiver's buffer is replaced (a private
    attribute: checked, and left alone with a warning if aiortc renames it)."""
    from aiortc.jitterbuffer import JitterBuffer

    name = "_RTCRtpReceiver__jitter_buffer"
    if not isinstance(getattr(receiver, name, None), JitterBuffer):
        logger.warning("aiortc's receiver has no %s: the jitter buffer stays at aiortc's default", name)
        return False
    setattr(receiver, name, JitterBuffer(capacity=16, prefetch=frames))
    return True


async def pump_input(track: MediaStreamTrack, rate_hz: Callable[[], int],
                     put: Callable[[PcmFrame], None]) -> None:
    """The caller's audio, frame by frame, into the session until the track ends."""
    resampler: av.AudioResampler | None = None
    current = 0
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return  # the caller's track ended (hang-up, peer connection closed)
        wanted = rate_hz()
        if resampler is None or wanted != current:
            resampler, current = av.AudioResampler(format="s16", layout="mono", rate=wanted), wanted
        for out in resampler.resample(frame):
            pcm = out.to_ndarray().reshape(-1).astype(np.int16, copy=False)
            if len(pcm):
                put(PcmFrame(pcm))
