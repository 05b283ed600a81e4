"""One Realtime conversation over one socket: protocol, VAD turns, segments, responses.

Free of Ray and FastAPI: it takes the three models as a :class:`Backends` and the socket as two
callables, so the same code runs in the ingress and in unit tests.

Flow of a spoken turn (server VAD):
  speech starts -> ``speech_started``; each pause closes a segment that goes to ASR at once,
  while the user may still be talking, and starts a *speculative* response held behind a gate;
  speech resumes -> the speculation is cancelled unseen; ``silence_duration_ms`` of silence ->
  ``speech_stopped`` + ``committed``, the speculation's gate opens and its events flow.
Speech while a response is visible and unfinished cancels it (barge-in).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import numpy as np

from quillman import aio, errors, protocol
from quillman.audio import StreamResampler, decode_pcm16_base64, int16_to_float
from quillman.config import SessionConfig, VadConfig
from quillman.engines.asr.base import ASR_SAMPLE_RATE_HZ, Transcript
from quillman.engines.llm.base import Message
from quillman.metrics import SessionMetrics
from quillman.pipeline.backends import Backends
from quillman.pipeline.response import Response, ResponseSettings, Timings, UserInput
from quillman.pipeline.vad import (
    VAD_WINDOW_SAMPLES,
    SegmentEnded,
    SpeechResumed,
    SpeechStarted,
    SpeechStopped,
    TurnDetector,
    VadOptions,
    ms_to_samples,
    samples_to_ms,
)

logger = logging.getLogger(__name__)

MAX_ASR_SEGMENT_S = 28.0  # Whisper's window is 30 s


class TokenBucket:
    """Events per second with a burst allowance (per-session rate limit)."""

    def __init__(self, rate_per_s: float, burst: int):
        self.rate = rate_per_s
        self.burst = float(burst)
        self._tokens = float(burst)
        self._last = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class AudioTimeline:
    """The session's input audio at 16 kHz, addressed by absolute sample index.

    Also remembers when each chunk arrived, to turn a sample index (the end of speech) into the
    wall-clock instant it reached the server: the origin of every latency we report.
    """

    def __init__(self, keep_s: float = 60.0):
        self._chunks: deque[np.ndarray] = deque()
        self._start = 0  # absolute index of the first kept sample
        self.end = 0  # absolute index after the last sample
        self._arrivals: deque[tuple[int, float]] = deque()
        self._keep = int(keep_s * ASR_SAMPLE_RATE_HZ)

    def append(self, pcm: np.ndarray, arrived: float) -> None:
        if len(pcm) == 0:
            return
        self._chunks.append(pcm)
        self.end += len(pcm)
        self._arrivals.append((self.end, arrived))

    def slice(self, start: int, end: int) -> np.ndarray:
        start = max(start, self._start)
        if end <= start:
            return np.zeros(0, dtype=np.float32)
        data = np.concatenate(list(self._chunks)) if len(self._chunks) > 1 else (
            self._chunks[0] if self._chunks else np.zeros(0, dtype=np.float32))
        if len(self._chunks) > 1:
            self._chunks = deque([data])
        return data[start - self._start:end - self._start]

    def arrival_of(self, sample: int) -> float:
        for end, arrived in self._arrivals:
            if end >= sample:
                return arrived
        return self._arrivals[-1][1] if self._arrivals else time.perf_counter()

    def trim_before(self, sample: int) -> None:
        """Forget audio before ``sample`` (bounded memory), keeping at most ``keep_s`` anyway."""
        sample = max(sample, self.end - self._keep)
        if sample <= self._start:
            return
        data = self.slice(self._start, self.end)
        drop = min(sample - self._start, len(data))
        self._chunks = deque([data[drop:]]) if drop < len(data) else deque()
        self._start += drop
        while len(self._arrivals) > 1 and self._arrivals[0][0] < self._start:
            self._arrivals.popleft()


@dataclass
class UserTurn:
    item_id: str
    start_sample: int
    segment_start: int
    segments: list[asyncio.Task[Transcript]] = field(default_factory=list)
    speech_end: float | None = None  # perf_counter instant
    speculation: Response | None = None
    transcript: asyncio.Task[str] | None = None

    def join_transcripts(self) -> Awaitable[str]:
        """The transcript of the segments cut so far, in order.

        Shielded: a speculation that is cancelled must not cancel segments the turn still needs.
        """
        segments = list(self.segments)

        async def join() -> str:
            results = await asyncio.gather(*(asyncio.shield(task) for task in segments))
            return " ".join(r.text.strip() for r in results if r.text.strip()).strip()

        return join()

    def last_segment_ms(self) -> float | None:
        if not self.segments or not self.segments[-1].done() or self.segments[-1].cancelled():
            return None
        exc = self.segments[-1].exception()
        return None if exc else round(self.segments[-1].result().inference_ms, 1)


class RealtimeSession:
    def __init__(
        self,
        backends: Backends,
        config: SessionConfig,
        vad_config: VadConfig,
        make_vad: Callable[[], Callable[[np.ndarray], np.ndarray]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
        voices: list[str] | None = None,
        llm_defaults: dict[str, float] | None = None,
        session_id: str | None = None,
        metrics: SessionMetrics | None = None,
    ):
        self.id = session_id or protocol.new_id("sess")
        self.backends = backends
        self.metrics = metrics or SessionMetrics()
        self.config = config
        self._send = send
        self._outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.voices = voices or [config.voice]
        self._llm_defaults = llm_defaults or {}
        # Session state, changed by session.update
        self.instructions = config.instructions
        self.voice = config.voice
        self.output_modalities = ["audio"]
        self.max_output_tokens: int | None = None
        self.input_rate = config.sample_rate_hz
        self.output_rate = config.sample_rate_hz
        self.language: str | None = None
        self.vad_options: VadOptions | None = VadOptions(**vad_config.model_dump())
        self.create_response = True
        self.interrupt_response = True
        self.sequential = False  # quillman.pipeline = "sequential": the naive baseline
        # Audio
        self._make_vad = make_vad
        self._vad = make_vad()
        self._detector = TurnDetector(self.vad_options)
        self._resampler = StreamResampler(self.input_rate, ASR_SAMPLE_RATE_HZ)
        self._timeline = AudioTimeline(keep_s=config.max_turn_s + 10)
        self._vad_cursor = 0  # next sample to analyse
        self._commit_cursor = 0  # start of audio not yet committed
        self._first_append: float | None = None
        self._audio_in_s = 0.0
        # Conversation
        self.history: list[tuple[str, Message]] = []  # (item_id, message)
        self._reply_audio_s: dict[str, float] = {}  # assistant item -> seconds of audio sent
        self.turn: UserTurn | None = None
        self.response: Response | None = None  # the visible response, if unfinished
        self._tasks: set[asyncio.Task] = set()
        self._bucket = TokenBucket(config.max_events_per_s, config.event_burst)
        self.turns_committed = 0
        self.responses_done = 0

    # --- socket loop ----------------------------------------------------------------------

    async def run(self, receive: Callable[[], Awaitable[str | bytes | None]]) -> None:
        """Serve until the client goes away; ``receive`` returns None on disconnect."""
        sender = asyncio.create_task(self._sender())
        self.metrics.session_opened()
        self.emit("session.created", session=self.session_object())
        try:
            while True:
                try:
                    frame = await aio.wait_for(receive(), self.config.idle_timeout_s)
                except asyncio.TimeoutError:
                    self.error(errors.IdleTimeout(
                        f"no client event for {self.config.idle_timeout_s:g} s; closing the session"))
                    break
                if frame is None:
                    break
                await self.handle_frame(frame)
        finally:
            self.metrics.session_closed()
            await self.close()
            self._outbox.put_nowait(None)
            try:
                await asyncio.wait_for(sender, 5)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - the peer is gone
                sender.cancel()

    async def _sender(self) -> None:
        while True:
            event = await self._outbox.get()
            if event is None:
                return
            try:
                await self._send(event)
            except Exception:  # noqa: BLE001 - socket closed under us; drain until closed
                logger.debug("[%s] send failed; client gone", self.id)

    def emit(self, event_type: str, **fields: Any) -> None:
        self.put(protocol.event(event_type, **fields))

    def put(self, event: dict[str, Any]) -> None:
        self._outbox.put_nowait(event)

    def error(self, exc: errors.QuillmanError) -> None:
        logger.info("[%s] error %s: %s", self.id, exc.code, exc.message)
        self.metrics.error(exc.code)
        self.put(protocol.error_event(exc))

    async def close(self) -> None:
        """Cancel every piece of work of this session (disconnect): nothing keeps running."""
        if self.turn is not None:
            self._abandon_turn(self.turn)
        if self.response is not None:
            self.response.cancel("client_cancelled")
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _track(self, task: asyncio.Task) -> None:
        """close() cancels and awaits every tracked task (responses included)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        task.set_name(f"{self.id}-{name}")
        self._track(task)
        return task

    # --- client events ----------------------------------------------------------------------

    async def handle_frame(self, frame: str | bytes) -> None:
        try:
            if not self._bucket.take():
                raise errors.RateLimited(
                    f"more than {self.config.max_events_per_s:g} events/s; this event was dropped")
            size = len(frame) if isinstance(frame, bytes) else len(frame.encode("utf-8", "replace"))
            if size > self.config.max_frame_bytes:
                raise errors.FrameTooLarge(
                    f"frame of {size} bytes exceeds the limit of {self.config.max_frame_bytes}"
                )
            event = protocol.parse_client_event(frame)
            try:
                await self.handle_event(event)
            except errors.QuillmanError as exc:
                exc.event_id = exc.event_id or event.event_id
                raise
        except errors.QuillmanError as exc:
            self.error(exc)

    async def handle_event(self, event: protocol.ClientEvent) -> None:
        match event:
            case protocol.InputAudioBufferAppend():
                await self.append_audio(event.audio)
            case protocol.SessionUpdateEvent():
                self.update_session(event.session)
                self.emit("session.updated", session=self.session_object())
            case protocol.InputAudioBufferCommit():
                self.commit()
            case protocol.InputAudioBufferClear():
                self.clear()
                self.emit("input_audio_buffer.cleared")
            case protocol.ConversationItemCreate():
                self.add_item(event.item)
            case protocol.ConversationItemTruncate():
                self.truncate_item(event.item_id, event.audio_end_ms)
                self.emit("conversation.item.truncated", item_id=event.item_id,
                          content_index=event.content_index, audio_end_ms=event.audio_end_ms)
            case protocol.ResponseCreate():
                self.create_text_response(event.response)
            case protocol.ResponseCancel():
                if self.response is None or (event.response_id and event.response_id != self.response.id):
                    raise errors.ResponseCancelNotActive("there is no active response to cancel")
                self.response.cancel("client_cancelled")

    # --- session.update -----------------------------------------------------------------------

    def update_session(self, update: protocol.SessionUpdate) -> None:
        audio = update.audio
        # Validate everything before changing anything: a rejected update changes nothing.
        in_format = audio.input.format if audio and audio.input else None
        out_format = audio.output.format if audio and audio.output else None
        for name, fmt in (("audio.input.format", in_format), ("audio.output.format", out_format)):
            if fmt is not None and (fmt.type != "audio/pcm" or fmt.rate not in protocol.SUPPORTED_RATES_HZ):
                raise errors.UnsupportedAudioFormat(
                    f"{name} {fmt.type} at {fmt.rate} Hz is not supported; use audio/pcm (pcm16 mono) "
                    f"at one of {', '.join(map(str, protocol.SUPPORTED_RATES_HZ))} Hz",
                    param=name,
                )
        voice = audio.output.voice if audio and audio.output else None
        if isinstance(voice, dict):
            voice = voice.get("id")
        if update.quillman is not None and update.quillman.pipeline is not None:
            self.sequential = update.quillman.pipeline == "sequential"
        if update.instructions is not None:
            self.instructions = update.instructions
        if update.output_modalities:
            self.output_modalities = list(update.output_modalities)
        if update.max_output_tokens is not None:
            self.max_output_tokens = None if update.max_output_tokens == "inf" else int(update.max_output_tokens)
        if voice:
            # Unknown names (OpenAI's "alloy", ...) keep working with the default voice.
            self.voice = voice if voice in self.voices else self.config.voice
        if out_format is not None:
            self.output_rate = out_format.rate
        if in_format is not None and in_format.rate != self.input_rate:
            self.input_rate = in_format.rate
            self._resampler = StreamResampler(self.input_rate, ASR_SAMPLE_RATE_HZ)
        if audio and audio.input:
            if audio.input.transcription is not None and audio.input.transcription.language:
                self.language = audio.input.transcription.language
            if "turn_detection" in audio.input.model_fields_set:
                self._set_turn_detection(audio.input.turn_detection)

    def _set_turn_detection(self, td: protocol.TurnDetection | None) -> None:
        if td is None:
            if self.turn is not None:
                self._abandon_turn(self.turn)
            self.vad_options = None
            return
        base = self.vad_options or VadOptions()
        options = VadOptions(
            threshold=td.threshold if td.threshold is not None else base.threshold,
            prefix_padding_ms=td.prefix_padding_ms if td.prefix_padding_ms is not None else base.prefix_padding_ms,
            silence_duration_ms=td.silence_duration_ms if td.silence_duration_ms is not None else base.silence_duration_ms,
            pause_ms=base.pause_ms,
            min_speech_ms=base.min_speech_ms,
            max_segment_s=base.max_segment_s,
        )
        options = VadOptions(**{**options.__dict__, "pause_ms": min(options.pause_ms, options.silence_duration_ms)})
        self.create_response = td.create_response
        self.interrupt_response = td.interrupt_response
        if options != self.vad_options:
            self.vad_options = options
            state = self._detector.state
            self._detector = TurnDetector(options)
            if state != TurnDetector.SILENCE and self.turn is not None:
                self._abandon_turn(self.turn)

    def session_object(self) -> dict[str, Any]:
        vad = self.vad_options
        turn_detection = None if vad is None else {
            "type": "server_vad", "threshold": vad.threshold,
            "prefix_padding_ms": vad.prefix_padding_ms, "silence_duration_ms": vad.silence_duration_ms,
            "create_response": self.create_response, "interrupt_response": self.interrupt_response,
        }
        return {
            "type": "realtime",
            "id": self.id,
            "object": "realtime.session",
            "model": "quillman",
            "instructions": self.instructions,
            "output_modalities": self.output_modalities,
            "max_output_tokens": self.max_output_tokens or "inf",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": self.input_rate},
                    "transcription": {"model": "whisper", "language": self.language},
                    "turn_detection": turn_detection,
                    "noise_reduction": None,
                },
                "output": {
                    "format": {"type": "audio/pcm", "rate": self.output_rate},
                    "voice": self.voice,
                    "speed": 1.0,
                },
            },
            "voices": self.voices,
            "quillman": {"pipeline": "sequential" if self.sequential else "streaming"},
        }

    # --- audio in -----------------------------------------------------------------------------

    async def append_audio(self, audio_b64: str) -> None:
        pcm16 = decode_pcm16_base64(audio_b64)
        now = time.perf_counter()
        seconds = len(pcm16) / self.input_rate
        if self._first_append is None:
            self._first_append = now
        ahead = self._audio_in_s + seconds - (now - self._first_append)
        if ahead > self.config.max_audio_ahead_s:
            raise errors.AudioBufferOverflow(
                f"audio is arriving {ahead:.1f} s ahead of real time (limit "
                f"{self.config.max_audio_ahead_s:g} s); send it at playback speed",
                param="audio",
            )
        if self.vad_options is None and (
                self._timeline.end - self._commit_cursor > self.config.max_turn_s * ASR_SAMPLE_RATE_HZ):
            raise errors.AudioBufferFull(
                f"more than {self.config.max_turn_s:g} s of uncommitted audio; commit or clear the buffer",
                param="audio")
        self._audio_in_s += seconds
        self.metrics.audio_in(seconds)
        pcm = self._resampler.process(int16_to_float(pcm16))
        self._timeline.append(pcm, now)
        if self.vad_options is not None:
            await self._run_vad()
        if self.turn is not None and (self._timeline.end - self.turn.start_sample
                                      > self.config.max_turn_s * ASR_SAMPLE_RATE_HZ):
            logger.info("[%s] turn reached max_turn_s; ending it", self.id)
            self.commit()
        self._trim()

    async def _run_vad(self) -> None:
        usable = (self._timeline.end - self._vad_cursor) // VAD_WINDOW_SAMPLES * VAD_WINDOW_SAMPLES
        if usable <= 0:
            return
        start = self._vad_cursor
        windows = self._timeline.slice(start, start + usable)
        self._vad_cursor += usable
        probabilities = await asyncio.to_thread(self._vad, windows)
        for i, probability in enumerate(probabilities):
            window_end = start + (i + 1) * VAD_WINDOW_SAMPLES
            for vad_event in self._detector.process(float(probability), window_end):
                self._on_vad_event(vad_event)

    def _on_vad_event(self, vad_event: Any) -> None:
        options = self.vad_options
        match vad_event:
            case SpeechStarted(start_sample=start):
                if self.response is not None and self.interrupt_response:
                    logger.info("[%s] barge-in: cancelling %s", self.id, self.response.id)
                    self.response.cancel("turn_detected")
                audio_start = max(start - ms_to_samples(options.prefix_padding_ms), self._commit_cursor, 0)
                self.turn = UserTurn(protocol.new_id("item"), audio_start, audio_start)
                self.emit("input_audio_buffer.speech_started",
                          audio_start_ms=samples_to_ms(audio_start), item_id=self.turn.item_id)
            case SegmentEnded(end_sample=end, speech_end_sample=speech_end, pause=pause):
                turn = self.turn
                if turn is None:
                    return
                turn.speech_end = self._timeline.arrival_of(speech_end)
                if self.sequential:
                    return  # the baseline transcribes the whole utterance at the end of turn
                self._transcribe_segment(turn, end)
                if pause and self.create_response:
                    turn.speculation = self._start_voice_response(turn, speculative=True)
            case SpeechResumed():
                turn = self.turn
                if turn is not None and turn.speculation is not None:
                    turn.speculation.cancel("turn_detected")
                    turn.speculation = None
            case SpeechStopped(speech_end_sample=speech_end):
                turn = self.turn
                if turn is None:
                    return
                self.emit("input_audio_buffer.speech_stopped",
                          audio_end_ms=samples_to_ms(speech_end), item_id=turn.item_id)
                # Audio after the last cut is silence unless speech came after it.
                self._commit_turn(turn, self._timeline.end, tail=turn.segment_start < speech_end)

    def _transcribe_segment(self, turn: UserTurn, end: int) -> None:
        while turn.segment_start < end:
            stop = min(end, turn.segment_start + int(MAX_ASR_SEGMENT_S * ASR_SAMPLE_RATE_HZ))
            pcm = self._timeline.slice(turn.segment_start, stop)
            turn.segments.append(self._spawn(self.backends.transcribe(pcm, self.language), "asr"))
            turn.segment_start = stop

    # --- committing turns -------------------------------------------------------------------

    def commit(self) -> None:
        """``input_audio_buffer.commit`` (or a turn over max length): commit what is buffered."""
        turn = self.turn
        if turn is None:
            start = self._commit_cursor
            if self._timeline.end - start < ms_to_samples(100):
                raise errors.CommitEmpty(
                    "the input audio buffer holds less than 100 ms of audio; nothing to commit"
                )
            turn = UserTurn(protocol.new_id("item"), start, start)
        if turn.speculation is not None:
            turn.speculation.cancel("turn_detected")
            turn.speculation = None
        turn.speech_end = time.perf_counter()
        self._detector.reset()
        self._commit_turn(turn, self._timeline.end)

    def _commit_turn(self, turn: UserTurn, end: int, tail: bool = True) -> None:
        now = time.perf_counter()
        if tail and turn.segment_start < end and turn.speculation is None:
            self._transcribe_segment(turn, end)
        self._commit_cursor = end
        self.turn = None
        self.turns_committed += 1
        self.metrics.turn_committed()
        turn.transcript = self._spawn(turn.join_transcripts(), "transcript")
        previous = self.history[-1][0] if self.history else None
        # The user's place in the history is fixed now; the text comes with the transcript.
        self._add_history(turn.item_id, {"role": "user", "content": ""})
        self.emit("input_audio_buffer.committed", item_id=turn.item_id, previous_item_id=previous)
        self.emit("conversation.item.added", item=protocol.user_audio_item(turn.item_id, None, "in_progress"),
                  previous_item_id=previous)
        duration_s = (end - turn.start_sample) / ASR_SAMPLE_RATE_HZ
        self._spawn(self._finish_user_item(turn, duration_s), "user-item")
        if not self.create_response:
            return
        # Started at the last pause (speculative) or, e.g. in the sequential baseline, only now.
        response = turn.speculation or self._start_voice_response(turn, speculative=False)
        turn.speculation = None
        self._show(response, turn_detected=now)

    async def _finish_user_item(self, turn: UserTurn, duration_s: float) -> None:
        try:
            text = await turn.transcript
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the response reports the failure too
            self.error(errors.ModelError(f"transcription failed: {exc}"[:500]))
            text = ""
        self.emit("conversation.item.input_audio_transcription.completed", item_id=turn.item_id,
                  content_index=0, transcript=text,
                  usage={"type": "duration", "seconds": round(max(duration_s, 0.0), 3)})
        self.emit("conversation.item.done", item=protocol.user_audio_item(turn.item_id, text))
        for item_id, message in self.history:
            if item_id == turn.item_id:
                message["content"] = text
        logger.info("[%s] user: %s", self.id, text)

    def _abandon_turn(self, turn: UserTurn) -> None:
        if turn.speculation is not None:
            turn.speculation.cancel("turn_detected")
        for task in turn.segments:
            task.cancel()
        self.turn = None

    def clear(self) -> None:
        if self.turn is not None:
            self._abandon_turn(self.turn)
        self._detector.reset()
        self._commit_cursor = self._timeline.end
        self._vad_cursor = self._timeline.end
        self._vad = self._make_vad()

    def _trim(self) -> None:
        keep_from = self._commit_cursor if self.turn is None else self.turn.start_sample
        if self.vad_options is not None:
            keep_from = min(keep_from, self._vad_cursor - ms_to_samples(self.vad_options.prefix_padding_ms))
        self._timeline.trim_before(keep_from)

    # --- conversation items and responses ------------------------------------------------------

    def add_item(self, item: protocol.ConversationItem) -> None:
        text = item.text()
        item_id = item.id or protocol.new_id("item")
        previous = self.history[-1][0] if self.history else None
        stored = protocol.user_text_item(item_id, text) if item.role == "user" else {
            "id": item_id, "object": "realtime.item", "type": "message", "role": item.role,
            "status": "completed", "content": [{"type": "input_text" if item.role == "system" else "output_text", "text": text}],
        }
        self._add_history(item_id, {"role": item.role, "content": text})
        self.emit("conversation.item.added", item=stored, previous_item_id=previous)
        self.emit("conversation.item.done", item=stored, previous_item_id=previous)

    def truncate_item(self, item_id: str, audio_end_ms: int) -> None:
        """Keep the part of an assistant reply the user heard, so the LLM doesn't assume more."""
        if self.response is not None and self.response.item_id == item_id:
            raise errors.InvalidEvent("that response is still in progress; cancel it first",
                                      param="item_id")
        entry = next((m for i, m in self.history if i == item_id and m["role"] == "assistant"), None)
        if entry is None:
            raise errors.InvalidEvent(f"no assistant item {item_id!r} in the conversation", param="item_id")
        audio_s = self._reply_audio_s.get(item_id, 0.0)
        if audio_s > 0 and audio_end_ms / 1000 < audio_s:
            words = entry["content"].split()
            entry["content"] = " ".join(words[:round(len(words) * audio_end_ms / 1000 / audio_s)])

    def _add_history(self, item_id: str, message: Message) -> None:
        self.history.append((item_id, message))
        # Bounded: the oldest turns go first (the system prompt is not part of the history), cut
        # to half at once so the prompt prefix, and the LLM's prefix cache, change rarely.
        limit = self.config.max_history_messages
        if len(self.history) > limit:
            for dropped, _ in self.history[:len(self.history) - limit // 2]:
                self._reply_audio_s.pop(dropped, None)
            del self.history[:len(self.history) - limit // 2]

    def _messages(self, user_item_id: str | None, user_text: str | None) -> list[Message]:
        messages = [m for item_id, m in self.history if item_id != user_item_id and m["content"]]
        if user_text:
            messages.append({"role": "user", "content": user_text})
        return messages

    def create_text_response(self, options: protocol.ResponseOptions | None) -> None:
        if self.response is not None:
            raise errors.ResponseAlreadyActive(
                f"response {self.response.id} is still in progress; cancel it or wait for response.done"
            )
        response = self._new_response(None, speculative=False, options=options, origin=time.perf_counter())
        self.metrics.turn_committed()
        self._show(response, turn_detected=None)
        response.start()
        self._track(response.task)

    def _start_voice_response(self, turn: UserTurn, speculative: bool) -> Response:
        user = UserInput(
            item_id=turn.item_id,
            transcript=asyncio.shield(turn.transcript) if turn.transcript else turn.join_transcripts(),
            speech_end=turn.speech_end,
            asr_last_segment_ms=turn.last_segment_ms,
        )
        response = self._new_response(user, speculative, None, origin=turn.speech_end or time.perf_counter()).start()
        self._track(response.task)
        return response

    def _new_response(self, user: UserInput | None, speculative: bool,
                      options: protocol.ResponseOptions | None, origin: float) -> Response:
        options = options or protocol.ResponseOptions()
        modalities = options.output_modalities or self.output_modalities
        voice = self.voice
        if options.audio and options.audio.output and isinstance(options.audio.output.voice, str):
            voice = options.audio.output.voice if options.audio.output.voice in self.voices else voice
        max_tokens = options.max_output_tokens if options.max_output_tokens not in (None, "inf") else self.max_output_tokens
        ceiling = int(self._llm_defaults.get("max_tokens", 96))
        settings = ResponseSettings(
            instructions=options.instructions or self.instructions,
            output_audio="audio" in modalities,
            voice=voice,
            output_rate_hz=self.output_rate,
            # The server's llm.max_tokens is a ceiling: a client may ask for less, never more.
            max_output_tokens=min(int(max_tokens or ceiling), ceiling),
            temperature=float(self._llm_defaults.get("temperature", 0.2)),
            top_p=float(self._llm_defaults.get("top_p", 0.9)),
            tts_concurrency=self.config.tts_concurrency,
            first_chunk_min_words=self.config.first_chunk_min_words,
            first_chunk_max_words=self.config.first_chunk_max_words,
            max_chunk_words=self.config.max_chunk_words,
            output_chunk_ms=self.config.output_chunk_ms,
            model_timeout_s=self.config.model_timeout_s,
            metadata=options.metadata,
            sequential=self.sequential,
        )
        user_item_id = user.item_id if user else None
        previous = self.response.task if self.response is not None else None
        return Response(
            settings=settings, backends=self.backends, emit=self.put,
            history=lambda text: self._messages(user_item_id, text),
            on_finished=self._response_finished, timings=Timings(origin=origin),
            user=user, speculative=speculative, after=previous,
        )

    def _show(self, response: Response, turn_detected: float | None) -> None:
        self.response = response
        if not response.visible:
            response.open_gate(turn_detected or time.perf_counter())
        else:
            response.timings.turn_detected = turn_detected

    def _response_finished(self, response: Response, status: str, text: str) -> None:
        if self.response is response:
            self.response = None
        self.responses_done += 1
        timings = response.timings.as_ms()
        self.metrics.response_done(status, timings, spoken=response.user is not None)
        self.metrics.audio_out(response.audio_s)
        if status == "failed":
            self.metrics.error(errors.ModelError.code)
        if text:
            self._add_history(response.item_id, {"role": "assistant", "content": text})
            self._reply_audio_s[response.item_id] = response.audio_s
        logger.info("[%s] response %s %s timings=%s reply=%r", self.id, response.id, status,
                    timings, text[:200])
