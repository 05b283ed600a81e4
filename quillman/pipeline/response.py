"""One assistant response: LLM deltas -> sentences -> parallel TTS -> ordered audio events.

A response runs as one asyncio task. It may start *speculatively* (at a pause, before the end
of the user's turn is certain): its events are then held back behind a gate and released only if
the turn really ends (``open_gate``); if the user goes on talking it is cancelled unseen.
Cancelling the task (barge-in, ``response.cancel``, disconnect) cancels the handle calls under
it; the ``finally`` blocks of the async iterators cancel the Ray requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import numpy as np

from quillman import aio, errors, protocol
from quillman.audio import encode_pcm16_base64
from quillman.engines.llm.base import GenerationParams, Message
from quillman.pipeline.backends import Backends
from quillman.pipeline.fanout import ordered_fanout
from quillman.pipeline.sentences import SentenceSplitter, split_stream

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class ResponseSettings:
    instructions: str
    output_audio: bool
    voice: str
    output_rate_hz: int
    max_output_tokens: int
    temperature: float
    top_p: float
    tts_concurrency: int
    first_chunk_min_words: int
    first_chunk_max_words: int
    max_chunk_words: int
    output_chunk_ms: int
    model_timeout_s: float
    metadata: dict[str, str] | None = None
    sequential: bool = False  # the naive baseline: whole reply text, then one synthesis


@dataclass
class Timings:
    """Instants (perf_counter seconds) of one response; reported relative to ``origin``."""

    origin: float  # end of user speech (voice turn) or response.create (text turn)
    turn_detected: float | None = None
    transcript: float | None = None
    first_token: float | None = None
    first_sentence: float | None = None
    first_audio: float | None = None
    done: float | None = None
    asr_last_segment_ms: float | None = None
    llm_started: float | None = None
    first_sentence_tts_started: float | None = None
    speculative: bool = False

    def as_ms(self) -> dict[str, float]:
        def rel(instant: float | None) -> float | None:
            return None if instant is None else round((instant - self.origin) * 1000, 1)

        out = {
            "turn_detected_ms": rel(self.turn_detected),
            "transcript_ms": rel(self.transcript),
            "first_token_ms": rel(self.first_token),
            "first_sentence_ms": rel(self.first_sentence),
            "first_audio_ms": rel(self.first_audio),
            "total_ms": rel(self.done),
            "asr_last_segment_ms": self.asr_last_segment_ms,
            "llm_ttft_ms": None if self.first_token is None or self.llm_started is None
            else round((self.first_token - self.llm_started) * 1000, 1),
            "tts_first_chunk_ms": None if self.first_audio is None or self.first_sentence_tts_started is None
            else round((self.first_audio - self.first_sentence_tts_started) * 1000, 1),
            "speculative": 1.0 if self.speculative else 0.0,
        }
        return {key: value for key, value in out.items() if value is not None}


@dataclass
class UserInput:
    """The user side of a turn: its transcript arrives later for spoken turns."""

    item_id: str | None
    transcript: Awaitable[str]
    speech_end: float | None = None  # perf_counter instant of the last speech sample
    asr_last_segment_ms: Callable[[], float | None] = lambda: None


@dataclass
class Response:
    settings: ResponseSettings
    backends: Backends
    emit: Callable[[dict[str, Any]], None]
    history: Callable[[str | None], list[Message]]  # given this turn's user text
    on_finished: Callable[["Response", str, str], None]  # (response, status, text)
    timings: Timings
    user: UserInput | None = None
    speculative: bool = False
    after: asyncio.Task | None = None  # a previous response that must finish first
    id: str = field(default_factory=lambda: protocol.new_id("resp"))
    item_id: str = field(default_factory=lambda: protocol.new_id("item"))
    status: str = "in_progress"
    cancel_reason: str = "client_cancelled"
    task: asyncio.Task | None = None
    _held: list[dict[str, Any]] | None = None
    _created: bool = False
    _text: list[str] = field(default_factory=list)
    _audio_s: float = 0.0
    _output_tokens: int = 0
    _pending_finish: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        self._held = [] if self.speculative else None
        self.timings.speculative = self.speculative

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "Response":
        self.task = asyncio.create_task(self._run(), name=f"response-{self.id}")
        self.task.add_done_callback(self._on_task_done)
        return self

    def _on_task_done(self, task: asyncio.Task) -> None:
        # Cancelled before its first step: _run never ran, so its response.done is sent here.
        if task.cancelled() and self.status == "in_progress" and self.visible:
            self._finish("cancelled", {"type": "cancelled", "reason": self.cancel_reason})

    @property
    def audio_s(self) -> float:
        """Seconds of reply audio sent so far."""
        return self._audio_s

    @property
    def visible(self) -> bool:
        return self._held is None

    def open_gate(self, turn_detected: float) -> None:
        """The turn really ended: release held events and stream the rest live."""
        self.timings.turn_detected = turn_detected
        held, self._held = self._held or [], None
        for event in held:
            self._send(event)
        if self._pending_finish is not None:  # it finished while unseen: report it now
            status, text = self._pending_finish
            self._pending_finish = None
            self.on_finished(self, status, text)

    def cancel(self, reason: str) -> None:
        if self.task is not None and not self.task.done():
            self.cancel_reason = reason
            self.task.cancel()

    # --- events -------------------------------------------------------------------------------

    def _send(self, event: dict[str, Any]) -> None:
        if event["type"] == "response.output_audio.delta" and self.timings.first_audio is None:
            self.timings.first_audio = time.perf_counter()
        self.emit(event)

    def _event(self, event_type: str, **fields: Any) -> None:
        event = protocol.event(event_type, **fields)
        if self._held is not None:
            self._held.append(event)
        else:
            self._send(event)

    def _part_fields(self) -> dict[str, Any]:
        return {"response_id": self.id, "item_id": self.item_id, "output_index": 0, "content_index": 0}

    def _response_object(self, status: str, details: dict | None = None) -> dict[str, Any]:
        text = "".join(self._text)
        item_status = "completed" if status == "completed" else "incomplete"
        timings = self.timings.as_ms()
        audio = self.settings.output_audio
        body: dict[str, Any] = {
            "id": self.id,
            "object": "realtime.response",
            "status": status,
            "status_details": details,
            "output": [protocol.assistant_item(self.item_id, text, item_status, audio)] if self._created else [],
            "output_modalities": ["audio"] if audio else ["text"],
            "usage": {
                "total_tokens": self._output_tokens,
                "input_tokens": 0,
                "output_tokens": self._output_tokens,
            },
            "metadata": {
                **(self.settings.metadata or {}),
                **{f"timing_{k}": str(v) for k, v in list(timings.items())[:8]},
            },
            "timings": timings,
            "audio_s": round(self._audio_s, 3),
        }
        return body

    def _open_output(self) -> None:
        audio = self.settings.output_audio
        item = protocol.assistant_item(self.item_id, "", "in_progress", audio)
        self._event("response.created", response={
            "id": self.id, "object": "realtime.response", "status": "in_progress",
            "output": [], "output_modalities": ["audio"] if audio else ["text"],
            "metadata": self.settings.metadata,
        })
        self._event("response.output_item.added", response_id=self.id, output_index=0, item=item)
        self._event("conversation.item.added", item=item)
        self._event("response.content_part.added", part=protocol.content_part("", audio), **self._part_fields())
        self._created = True

    def _close_output(self, status: str, details: dict | None) -> None:
        text = "".join(self._text)
        audio = self.settings.output_audio
        item_status = "completed" if status == "completed" else "incomplete"
        if self._created:
            if audio:
                self._event("response.output_audio.done", **self._part_fields())
                self._event("response.output_audio_transcript.done", transcript=text, **self._part_fields())
            else:
                self._event("response.output_text.done", text=text, **self._part_fields())
            self._event("response.content_part.done", part=protocol.content_part(text, audio), **self._part_fields())
            item = protocol.assistant_item(self.item_id, text, item_status, audio)
            self._event("response.output_item.done", response_id=self.id, output_index=0, item=item)
            self._event("conversation.item.done", item=item)
        self.timings.done = time.perf_counter()
        self._event("response.done", response=self._response_object(status, details))

    # --- the work -----------------------------------------------------------------------------

    async def _run(self) -> None:
        status, details, failure = "completed", None, None
        try:
            if self.after is not None:
                await asyncio.wait({self.after})  # not gather: cancelling us must not cancel it
            user_text = None
            if self.user is not None:
                user_text = await self._with_timeout(self.user.transcript)
                self.timings.transcript = time.perf_counter()
                self.timings.asr_last_segment_ms = self.user.asr_last_segment_ms()
            self._open_output()
            if self.user is None or user_text:
                await self._generate(user_text)
        except asyncio.CancelledError:
            status = "cancelled"
            details = {"type": "cancelled", "reason": self.cancel_reason}
            if not self.visible:
                raise  # a speculation nobody saw: end silently
            self._finish(status, details)
            raise
        except Exception as exc:  # noqa: BLE001 - any model failure ends the turn, never hangs it
            failure = exc if isinstance(exc, errors.QuillmanError) else errors.ModelError(
                f"{type(exc).__name__}: {exc}"[:500]
            )
            logger.exception("response %s failed", self.id)
            status = "failed"
            details = {"type": "failed", "error": {"type": failure.type, "code": failure.code,
                                                   "message": failure.message}}
            if not self._created:
                self._open_output()  # response.created comes before the error about it
            self._event("error", error={"type": failure.type, "code": failure.code,
                                        "message": failure.message})
        self._finish(status, details)

    def _finish(self, status: str, details: dict | None) -> None:
        if self.status != "in_progress":
            return
        self.status = status
        if not self._created:
            self._open_output()
        self._close_output(status, details)
        if self.visible:
            self.on_finished(self, status, "".join(self._text))
        else:  # a speculation nobody has seen yet: it may still be dropped
            self._pending_finish = (status, "".join(self._text))

    async def _generate(self, user_text: str | None) -> None:
        settings = self.settings
        messages = [{"role": "system", "content": settings.instructions}, *self.history(user_text)]
        params = GenerationParams(
            max_tokens=settings.max_output_tokens, temperature=settings.temperature, top_p=settings.top_p
        )
        self.timings.llm_started = time.perf_counter()
        deltas = self._transcript_deltas(self.backends.generate(messages, params))
        if not settings.output_audio:
            async for _ in deltas:
                pass
            return
        splitter = SentenceSplitter(
            settings.first_chunk_min_words, settings.first_chunk_max_words, settings.max_chunk_words
        )
        chunk_samples = max(1, settings.output_rate_hz * settings.output_chunk_ms // 1000)
        sentences = split_stream(deltas, splitter)
        if settings.sequential:
            sentences = _whole_text(sentences)
        fanout = ordered_fanout(
            sentences, self._synthesize, settings.tts_concurrency,
            on_item_start=self._sentence_started, head_start=True,
        )
        try:
            async for _, _, pcm in fanout:
                for start in range(0, len(pcm), chunk_samples):
                    piece = pcm[start:start + chunk_samples]
                    self._audio_s += len(piece) / settings.output_rate_hz
                    self._event("response.output_audio.delta", delta=encode_pcm16_base64(piece),
                                **self._part_fields())
        finally:
            await fanout.aclose()

    def _sentence_started(self, index: int, sentence: str) -> None:
        if index == 0:
            self.timings.first_sentence = self.timings.first_sentence_tts_started = time.perf_counter()

    async def _transcript_deltas(self, deltas: AsyncIterator[str]) -> AsyncIterator[str]:
        async for delta in self._iter_with_timeout(deltas):
            if self.timings.first_token is None:
                self.timings.first_token = time.perf_counter()
            self._output_tokens += 1
            self._text.append(delta)
            event_type = ("response.output_audio_transcript.delta" if self.settings.output_audio
                          else "response.output_text.delta")
            self._event(event_type, delta=delta, **self._part_fields())
            yield delta

    def _synthesize(self, sentence: str) -> AsyncIterator[np.ndarray]:
        return self._iter_with_timeout(
            self.backends.synthesize(sentence, self.settings.voice, self.settings.output_rate_hz)
        )

    async def _with_timeout(self, awaitable: Awaitable[T]) -> T:
        try:
            return await aio.wait_for(awaitable, self.settings.model_timeout_s)
        except asyncio.TimeoutError:
            raise errors.ModelError(f"a model did not answer within {self.settings.model_timeout_s:g} s") from None

    async def _iter_with_timeout(self, iterator: AsyncIterator[T]) -> AsyncIterator[T]:
        """Each item must come within the model timeout: a stuck replica fails the turn."""
        try:
            while True:
                try:
                    item = await self._with_timeout(anext(iterator))
                except StopAsyncIteration:
                    return
                yield item
        finally:
            close = getattr(iterator, "aclose", None)
            if close is not None:
                await close()


async def _whole_text(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    """All chunks joined: the sequential baseline synthesizes the reply in one call."""
    text = " ".join([chunk async for chunk in chunks])
    if text:
        yield text
