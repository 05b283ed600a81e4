"""One assistant response, as it runs: the user's transcript, then the LLM's rounds (text out
to its speech, tool calls into their items, MCP calls run between rounds), to one response.done.

A response runs as one asyncio task. It may start *speculatively* (at a pause, before the end
of the user's turn is certain): its events are then held back behind a gate and released only if
the turn really ends (``open_gate``); if the user goes on talking it is cancelled unseen.
Cancelling the task (barge-in, ``response.cancel``, disconnect) cancels the handle calls under
it; the ``finally`` blocks of the async iterators cancel the Ray requests. Its items and their
events are kept by :mod:`~quillman.pipeline.response_output`, its text is spoken by
:mod:`~quillman.pipeline.reply_speech`, its MCP calls are run by
:mod:`~quillman.pipeline.response_mcp`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import partial
from typing import AsyncGenerator, AsyncIterator, Awaitable, Callable

from quillman import errors, protocol
from quillman.config import McpConfig
from quillman.engines.llm.base import Delta, GenerationRequest, Message, ToolCallDelta, Usage
from quillman.pipeline.backends import Backends
from quillman.pipeline.mcp_servers import Approvals, McpServers
from quillman.pipeline.model_timeout import each_within, within
from quillman.pipeline.response_mcp import McpCallRunner
from quillman.pipeline.response_calls import FunctionCall, McpCall
from quillman.pipeline.response_output import ResponseOutput
from quillman.pipeline.sentences import FLUSH
from quillman.pipeline.settings import ResponseSettings, generation_params
from quillman.pipeline.reply_speech import ReplySpeech
from quillman.pipeline.timings import Timings
from quillman.scheduling import READING_PACE, SPOKEN_REPLY_PACING

__all__ = ["FunctionCall", "McpCall", "Response", "Timings", "UserInput"]

logger = logging.getLogger(__name__)


@dataclass
class UserInput:
    """The user side of a turn: its transcript arrives later for spoken turns."""

    item_id: str | None
    transcript: Callable[[], Awaitable[str]]  # called when the response needs it
    speech_end: float | None = None  # perf_counter instant of the last speech sample
    asr_last_segment_ms: Callable[[], float | None] = lambda: None


@dataclass
class Response:
    settings: ResponseSettings  # fixed for its run, as its GenerationParams
    backends: Backends
    emit: Callable[[protocol.ServerEvent], None]
    prompt: Callable[[str | None], list[Message]]  # the LLM's messages, given this turn's user text
    on_finished: Callable[["Response", str, str], None]  # (response, status, text)
    timings: Timings
    user: UserInput | None = None
    speculative: bool = False
    after: asyncio.Task | None = None  # a previous response that must finish first
    session_id: str | None = None  # the LLM keeps this conversation's prompt cache under it
    # Called as each conversation.item.added / .done and function_call_arguments.done goes out
    # (not while held behind the gate): the session places the item in the conversation and
    # returns the item event's previous_item_id.
    on_item: Callable[["Response", protocol.ServerEvent], str | None] | None = None
    # The last item of the conversation when the prompt was built (a text turn's reply goes
    # right after what it answers, even if the client added items meanwhile).
    context_end: Callable[[], str | None] | None = None
    # MCP: the session's connections, its pending approvals, the operator's limits.
    mcp: McpServers | None = None
    approvals: Approvals | None = None
    mcp_config: McpConfig = field(default_factory=McpConfig)
    id: str = field(default_factory=lambda: protocol.new_id("resp"))
    item_id: str = field(default_factory=lambda: protocol.new_id("item"))
    status: str = "in_progress"
    cancel_reason: str = "client_cancelled"
    task: asyncio.Task | None = None

    def __post_init__(self) -> None:
        self.timings.speculative = self.speculative
        on_item = None if self.on_item is None else partial(self.on_item, self)
        self.output = ResponseOutput(self.id, self.item_id, self.settings, self.timings, self.emit, on_item,
                                     held=self.speculative)
        self._seen = asyncio.Event()  # visible: a speculation's MCP calls wait for it
        if not self.speculative:
            self._seen.set()
        self._mcp_runner = McpCallRunner(self.settings, self.mcp, self.approvals, self.mcp_config,
                                         self.output, self.timings, self._seen)
        # Its turn was committed while another response was on the wire: still held (one
        # response at a time on the wire), but owed a response.done now, even if cancelled unseen.
        self._committed = False
        # A speculation that finished unseen: its status, built into events when the gate opens
        # (so its response.done carries the turn's detection timings and metadata).
        self._pending_finish: tuple[str, protocol.StatusDetails | None] | None = None
        self._prompt_end: str | None = None
        self._request: GenerationRequest | None = None  # this round's, while MCP calls follow up
        self._joining = False  # the next text continues the message after an MCP call

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "Response":
        self.task = asyncio.create_task(self._run(), name=f"response-{self.id}")
        self.task.add_done_callback(self._on_task_done)
        return self

    def _on_task_done(self, task: asyncio.Task) -> None:
        # Cancelled before its first step: _run never ran, so its response.done is sent here.
        if task.cancelled() and self.status == "in_progress" and self.owed:
            self._finish("cancelled", protocol.StatusDetails(type="cancelled", reason=self.cancel_reason))
        elif not task.cancelled() and task.exception() is not None:  # a bug: not swallowed unseen
            logger.error("response %s crashed", self.id, exc_info=task.exception())

    @property
    def audio_s(self) -> float:
        """Seconds of reply audio sent so far."""
        return self.output.audio_s

    @property
    def visible(self) -> bool:
        return not self.output.holding

    @property
    def owed(self) -> bool:
        """The client will see it: it ends in exactly one response.done."""
        return self.visible or self._committed

    def commit(self, turn_detected: float) -> None:
        """Its turn ended while another response is on the wire: it stays held until
        ``open_gate`` (when that one is done) but can no longer be dropped unseen."""
        self._committed = True
        self.timings.turn_detected = turn_detected

    def open_gate(self, turn_detected: float) -> None:
        """The turn really ended: release held events and stream the rest live."""
        self.timings.turn_detected = turn_detected
        self._seen.set()
        self.output.release()
        if self._pending_finish is not None:  # it finished while unseen: report it now
            status, details = self._pending_finish
            self._pending_finish = None
            self.output.close(status, details)
            self.on_finished(self, status, self.output.text)

    def add_metadata(self, **entries: str) -> None:
        """What the session learns of the turn as it ends (its detector's decision): in the
        response's metadata from now on (its settings stay as they were built)."""
        self.output.metadata = {**(self.output.metadata or {}), **entries}

    def cancel(self, reason: str) -> None:
        if self.task is not None and not self.task.done():
            self.cancel_reason = reason
            self.task.cancel()

    # --- its items ----------------------------------------------------------------------------

    @property
    def calls(self) -> list[FunctionCall]:
        return self.output.calls

    @property
    def mcp_calls(self) -> list[McpCall]:
        return self.output.mcp_calls

    @property
    def anchor(self) -> str | None:
        """The item its next item follows in the conversation: its last one, else the user
        item it answers, else the conversation's last item when its prompt was built (a
        question created while it ran comes after the reply, as the prompt that made it did
        not hold it; None: the end of the conversation)."""
        if self.output.placed:
            return self.output.placed[-1]
        return self.user.item_id if self.user else self._prompt_end

    def owns(self, item_id: str) -> bool:
        return item_id in self.output.placed

    def current_item(self, item_id: str) -> protocol.Item | None:
        """One of its items as it is while it streams (the transcript so far)."""
        return self.output.current_item(item_id)

    # --- the work -----------------------------------------------------------------------------

    async def _run(self) -> None:
        status, details = "completed", None
        try:
            if self.after is not None:
                await asyncio.wait({self.after})  # not gather: cancelling us must not cancel it
            user_text = None
            if self.user is not None:
                user_text = await self._transcript(self.user.transcript)
                self.timings.transcript = time.perf_counter()
                self.timings.asr_last_segment_ms = self.user.asr_last_segment_ms()
            self.output.open()
            if self.user is None or user_text:
                await self._generate(user_text)
        except asyncio.CancelledError:
            if not self.owed:
                raise  # a speculation nobody saw: end silently
            self._finish("cancelled", protocol.StatusDetails(type="cancelled", reason=self.cancel_reason))
            raise
        except Exception as exc:  # noqa: BLE001 - any model failure ends the turn, never hangs it
            failure = exc if isinstance(exc, errors.QuillmanError) else errors.ModelError(
                "a model failed while answering; the turn ended")
            logger.error("response %s failed: %r", self.id, exc, exc_info=not isinstance(exc, errors.QuillmanError))
            status = "failed"
            details = protocol.StatusDetails(type="failed", error=protocol.error_body(failure))
            self.output.open()  # response.created comes before the error about it
            if not isinstance(failure, errors.TranscriptionFailed):  # reported on its item already
                self.output.event(protocol.error_event(failure))
        self._finish(status, details)

    async def _transcript(self, transcript: Callable[[], Awaitable[str]]) -> str:
        try:
            return await within(transcript(), self.settings.pipeline.model_timeout_s)
        except errors.ModelError as exc:
            raise errors.TranscriptionFailed(f"transcription failed: {exc.message}") from None
        except (asyncio.CancelledError, errors.QuillmanError):
            raise
        except Exception:  # noqa: BLE001 - a failed ASR segment
            raise errors.TranscriptionFailed("transcription of the user's audio failed") from None

    def _finish(self, status: str, details: protocol.StatusDetails | None) -> None:
        if self.status != "in_progress":
            return
        self.status = status
        self.output.open()
        self.timings.done = time.perf_counter()
        if self.visible:
            self.output.close(status, details)
            self.on_finished(self, status, self.output.text)
        else:  # a speculation nobody has seen yet: it may still be dropped
            self._pending_finish = (status, details)

    async def _generate(self, user_text: str | None) -> None:
        settings = self.settings
        if self.context_end is not None:
            self._prompt_end = self.context_end()
        tools, tool_choice = await self._mcp_runner.engine_tools()
        request = GenerationRequest(
            messages=self.prompt(user_text),
            params=generation_params(settings),
            session_id=self.session_id,
            tools=tools,
            tool_choice=tool_choice,
            # The first words are due now: the user is waiting (a speculation, until its gate).
            deadline=time.time(),
            pacing=SPOKEN_REPLY_PACING if settings.output_audio else READING_PACE,
        )
        if logger.isEnabledFor(logging.DEBUG):  # the exact prompt: what "answers the wrong question" needs
            logger.debug("[%s] %s prompt: %s", self.session_id, self.id, json.dumps(request.messages))
        self.timings.llm_started = time.perf_counter()
        self._request = request
        deltas = self._transcript_deltas(self.backends.generate(request))
        if not settings.output_audio:
            async for _ in deltas:
                pass
            return
        speech = ReplySpeech(self.backends, settings, self.timings, lambda: self.output.playback_start)
        async with aclosing(speech.chunks(deltas)) as chunks:
            async for pcm in chunks:
                self.output.audio_delta(pcm)

    async def _transcript_deltas(self, deltas: AsyncIterator[Delta]) -> AsyncGenerator[str, None]:
        async with aclosing(self._round(deltas)) as first_round:
            async for text in first_round:
                yield text
        # MCP calls the model made: the server runs them, then the model answers from their
        # results (in the same message, spoken after the filler), up to the calls cap.
        while (pending := [call for call in self.mcp_calls if not call.done]):
            if self.output.text:
                yield FLUSH  # what was said before the call is spoken while it runs
            await self._mcp_runner.run(pending)
            if self._request is None or self.output.round_made_function_calls:
                break  # the client runs the function calls of this round; it asks for the answer
            self._request = self._mcp_runner.follow_up(self._request, pending)
            self.output.next_round()
            self._joining = bool(self.output.text)  # the answer continues the filler's message
            async with aclosing(self._round(self.backends.generate(self._request))) as round_:
                async for text in round_:
                    yield text

    async def _round(self, deltas: AsyncIterator[Delta]) -> AsyncGenerator[str, None]:
        """One generation's deltas: text out, calls into their items."""
        output = self.output
        async with aclosing(each_within(deltas, self.settings.pipeline.model_timeout_s)) as timed:
            async for delta in timed:
                if isinstance(delta, Usage):  # the engine's own count replaces ours (this round's)
                    output.usage.engine_count(delta)
                    self.timings.llm_queue_ms = delta.queued_ms
                    continue
                if isinstance(delta, ToolCallDelta):
                    filler = self.settings.pipeline.tool_filler
                    if output.opens_call(delta) and filler and not output.text and self.settings.output_audio:
                        # Something to hear while the client runs the tool: the reply's message,
                        # before the call (as text the model writes before a call is).
                        yield output.text_delta(filler)
                    output.tool_call_delta(delta, self._mcp_runner.tool(delta.name))
                    continue
                if self.timings.first_token is None:
                    self.timings.first_token = time.perf_counter()
                output.usage.output += 1
                output.close_open_calls()  # text after a call: that call is complete
                if self._joining:  # "One moment." + "The weather…": a space between them
                    self._joining = False
                    if not output.text_ends_in_space() and not delta[:1].isspace():
                        delta = " " + delta
                yield output.text_delta(delta)
        output.close_open_calls()
