"""Reply audio played on a media track (WebRTC): what the caller has heard, as the server knows it.

Over a websocket the client plays the audio and tells the server what it heard
(``conversation.item.truncate``). On a media track the server plays it, in real time, so it knows
itself: :class:`PlaybackBuffer` holds each response's audio until the track takes it, counts what
was taken (played) per item, and reports playback as the GA API's ``output_audio_buffer.*``
events. Pure and clock-free: the track (:mod:`quillman.webrtc.media`) pulls 20 ms at a time on
its own real-time schedule; this module only does the bookkeeping.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import soxr

from quillman import protocol


@dataclass(frozen=True)
class Cut:
    """Audio of an item dropped unplayed: the item was heard up to ``played_ms``."""

    response_id: str
    item_id: str
    played_ms: int


class Playback(Protocol):
    """What a :class:`~quillman.pipeline.session.RealtimeSession` needs from a media track."""

    def play(self, event: protocol.OutputAudioDelta) -> None: ...

    def response_finished(self, response_id: str) -> None: ...

    def clear(self) -> list[Cut]: ...


@dataclass
class _Chunk:
    response_id: str
    item_id: str
    pcm: np.ndarray  # int16 at the track's rate
    offset: int = 0


@dataclass
class _Reply:
    item_id: str
    played: int = 0  # samples taken by the track
    finished: bool = False  # its response is done: no more audio will come
    started: bool = False


@dataclass
class PlaybackBuffer:
    """Reply audio waiting for the track, per response in arrival order.

    ``emit`` gets ``output_audio_buffer.started`` when a response's first audio is queued for the
    track (it plays within one 20 ms frame; sent then, it comes before the response's
    ``output_audio.done`` and ``response.done``, as in GA), ``stopped`` when a finished response's audio has all been played, ``cleared`` when
    :meth:`clear` drops unplayed audio.
    """

    emit: Callable[[protocol.ServerEvent], None]
    rate_hz: int = 48000
    _chunks: collections.deque[_Chunk] = field(default_factory=collections.deque)
    _replies: dict[str, _Reply] = field(default_factory=dict)  # response id -> its playback
    _dropped: set[str] = field(default_factory=set)  # responses cut by clear(): later audio ignored
    # One streaming resampler per response: its chunks join without clicks at their edges.
    _resamplers: dict[str, soxr.ResampleStream] = field(default_factory=dict)

    def play(self, event: protocol.OutputAudioDelta) -> None:
        if event.pcm is None or not len(event.pcm) or event.response_id in self._dropped:
            return
        pcm = np.asarray(event.pcm, dtype=np.int16)
        if event.rate_hz != self.rate_hz:
            stream = self._resamplers.get(event.response_id)
            if stream is None:
                stream = self._resamplers[event.response_id] = soxr.ResampleStream(
                    event.rate_hz, self.rate_hz, 1, dtype="int16")
            pcm = stream.resample_chunk(pcm)
        reply = self._replies.setdefault(event.response_id, _Reply(event.item_id))
        if not reply.started:
            reply.started = True
            self.emit(protocol.OutputAudioBufferStarted(response_id=event.response_id))
        if len(pcm):
            self._chunks.append(_Chunk(event.response_id, event.item_id, pcm))

    def response_finished(self, response_id: str) -> None:
        stream = self._resamplers.pop(response_id, None)
        reply = self._replies.get(response_id)
        if reply is None:
            return  # no audio: nothing was or will be played
        if stream is not None:  # the resampler's last samples
            tail = stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
            if len(tail):
                self._chunks.append(_Chunk(response_id, reply.item_id, tail))
        reply.finished = True
        self._stop_drained()

    @property
    def queued_samples(self) -> int:
        return sum(len(c.pcm) - c.offset for c in self._chunks)

    @property
    def playing(self) -> bool:
        return bool(self._chunks)

    def played_ms(self, response_id: str) -> int:
        reply = self._replies.get(response_id)
        return 0 if reply is None else reply.played * 1000 // self.rate_hz

    def take(self, samples: int) -> np.ndarray:
        """The next ``samples`` of audio for the track, silence where there is none."""
        out = np.zeros(samples, dtype=np.int16)
        filled = 0
        while filled < samples and self._chunks:
            chunk = self._chunks[0]
            reply = self._replies[chunk.response_id]
            n = min(samples - filled, len(chunk.pcm) - chunk.offset)
            out[filled:filled + n] = chunk.pcm[chunk.offset:chunk.offset + n]
            chunk.offset += n
            filled += n
            reply.played += n
            if chunk.offset == len(chunk.pcm):
                self._chunks.popleft()
        self._stop_drained()
        return out

    def clear(self) -> list[Cut]:
        """Drop every unplayed sample; one ``cleared`` per response whose audio was cut."""
        cut_ids = list(dict.fromkeys(c.response_id for c in self._chunks))
        self._chunks.clear()
        cuts = []
        for response_id in cut_ids:
            reply = self._replies.pop(response_id)
            self.emit(protocol.OutputAudioBufferCleared(response_id=response_id))
            cuts.append(Cut(response_id, reply.item_id, reply.played * 1000 // self.rate_hz))
        # Replies still generating but with nothing queued right now are cut too: later audio
        # of theirs is not wanted (the session cancels them).
        for response_id, reply in list(self._replies.items()):
            if not reply.finished:
                del self._replies[response_id]
                if reply.started:
                    self.emit(protocol.OutputAudioBufferCleared(response_id=response_id))
                cuts.append(Cut(response_id, reply.item_id, reply.played * 1000 // self.rate_hz))
        self._dropped.update(c.response_id for c in cuts)
        for cut in cuts:
            self._resamplers.pop(cut.response_id, None)
        return cuts

    def _stop_drained(self) -> None:
        queued = {c.response_id for c in self._chunks}
        for response_id, reply in list(self._replies.items()):
            if reply.finished and response_id not in queued:
                del self._replies[response_id]
                if reply.started:
                    self.emit(protocol.OutputAudioBufferStopped(response_id=response_id))
