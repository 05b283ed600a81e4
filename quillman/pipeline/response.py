"""One assistant response: LLM deltas -> sentences -> parallel TTS -> ordered audio events.

A response runs as one asyncio task. It may start *speculatively* (at a pause, before the end
of the user's turn is certain): its events are then held back behind a gate and released only if
the turn really ends (``open_gate``); if the user goes on talking it is cancelled unseen.
Cancelling the task (barge-in, ``response.cancel``, disconnect) cancels the handle calls under
it; the ``finally`` blocks of the async iterators cancel the Ray requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import numpy as np

from quillman import errors, protocol
from quillman.engines.llm.base import Delta, GenerationRequest, Message, ToolCallDelta, Usage
from quillman.config import McpConfig
from quillman.pipeline.backends import Backends
from quillman.pipeline.fanout import ordered_fanout
from quillman.pipeline.mcp import Approvals, ListedTool, McpServers
from quillman.pipeline.sentences import FLUSH, SentenceSplitter, split_stream
from quillman.pipeline.settings import ResponseSettings, generation_params
from quillman.pipeline.tools import call_message, mcp_choice, output_message
from quillman.scheduling import READING_PACE, SPOKEN_REPLY_PACING, QueueWait, speech_seconds_estimate

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Timings:
    """Instants (perf_counter seconds) of one response; reported relative to ``origin``."""

    origin: float  # end of user speech (voice turn) or response.create (text turn)
    turn_detected: float | None = None
    turn_decision: float | None = None  # when the turn detector decided the user had finished
    transcript: float | None = None
    first_token: float | None = None
    first_sentence: float | None = None
    first_audio: float | None = None
    done: float | None = None
    asr_last_segment_ms: float | None = None
    llm_started: float | None = None
    first_sentence_tts_started: float | None = None
    llm_queue_ms: float | None = None
    tts_queue_ms: float | None = None
    mcp_call_ms: float | None = None  # MCP tool calls' round trips through the SDK, summed
    speculative: bool = False

    def as_wire(self) -> protocol.ResponseTimings:
        def rel(instant: float | None) -> float | None:
            return None if instant is None else round((instant - self.origin) * 1000, 1)

        def between(start: float | None, end: float | None) -> float | None:
            return None if start is None or end is None else round((end - start) * 1000, 1)

        return protocol.ResponseTimings(
            turn_detected_ms=rel(self.turn_detected), turn_decision_ms=rel(self.turn_decision),
            transcript_ms=rel(self.transcript),
            first_token_ms=rel(self.first_token), first_sentence_ms=rel(self.first_sentence),
            first_audio_ms=rel(self.first_audio), total_ms=rel(self.done),
            asr_last_segment_ms=self.asr_last_segment_ms,
            llm_ttft_ms=between(self.llm_started, self.first_token),
            tts_first_chunk_ms=between(self.first_sentence_tts_started, self.first_audio),
            llm_queue_ms=self.llm_queue_ms, tts_queue_ms=self.tts_queue_ms,
            mcp_call_ms=None if self.mcp_call_ms is None else round(self.mcp_call_ms, 1),
            speculative=1.0 if self.speculative else 0.0,
        )

    def as_ms(self) -> dict[str, float]:
        """The measured stages (``protocol.STAGES``) and ``speculative``, in ms."""
        return self.as_wire().measured()


@dataclass
class UserInput:
    """The user side of a turn: its transcript arrives later for spoken turns."""

    item_id: str | None
    transcript: Callable[[], Awaitable[str]]  # called when the response needs it
    speech_end: float | None = None  # perf_counter instant of the last speech sample
    asr_last_segment_ms: Callable[[], float | None] = lambda: None


@dataclass
class FunctionCall:
    """A call the model made in this response: one ``function_call`` output item."""

    output_index: int
    call_id: str
    name: str
    item_id: str = field(default_factory=lambda: protocol.new_id("item"))
    arguments: list[str] = field(default_factory=list)
    done: bool = False  # closed: its output_item.done went out
    complete: bool = False  # closed with its arguments done: a call the client may answer

    def item(self, status: protocol.ItemStatus) -> protocol.FunctionCallItem:
        return protocol.FunctionCallItem(id=self.item_id, status=status, call_id=self.call_id,
                                         name=self.name, arguments="".join(self.arguments))


@dataclass
class McpCall:
    """A call of an MCP tool in this response: one ``mcp_call`` output item, run by the server."""

    output_index: int
    tool: ListedTool
    item_id: str = field(default_factory=lambda: protocol.new_id("item"))
    arguments: list[str] = field(default_factory=list)
    approval_request_id: str | None = None
    output: str | None = None
    error: protocol.McpCallError | None = None
    arguments_done: bool = False
    running: bool = False  # response.mcp_call.in_progress went out
    done: bool = False  # its output_item.done went out

    def item(self) -> protocol.McpCallItem:
        return protocol.McpCallItem(id=self.item_id, server_label=self.tool.server_label, name=self.tool.name,
                                    arguments="".join(self.arguments), approval_request_id=self.approval_request_id,
                                    output=self.output, error=self.error)


@dataclass
class Response:
    settings: ResponseSettings
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
    _prompt_end: str | None = None
    id: str = field(default_factory=lambda: protocol.new_id("resp"))
    item_id: str = field(default_factory=lambda: protocol.new_id("item"))
    status: str = "in_progress"
    cancel_reason: str = "client_cancelled"
    task: asyncio.Task | None = None
    _held: list[protocol.ServerEvent] | None = None
    # Its turn was committed while another response was on the wire: still held (one response
    # at a time on the wire), but owed a response.done now, even if it is cancelled unseen.
    _committed: bool = False
    _created: bool = False  # response.created sent
    _message_index: int | None = None  # output index of the message item, once it is opened
    calls: list[FunctionCall] = field(default_factory=list)
    mcp_calls: list[McpCall] = field(default_factory=list)
    _approval_items: list[tuple[int, protocol.McpApprovalRequestItem]] = field(default_factory=list)
    _mcp_tools: dict[str, ListedTool] = field(default_factory=dict)  # by the name the LLM calls it
    _mcp_runs: int = 0
    _calls_by_index: dict[int, FunctionCall | McpCall] = field(default_factory=dict)
    _request: GenerationRequest | None = None
    _usage_base: tuple[int, int, int] = (0, 0, 0)
    _joining: bool = False
    _placed: list[str] = field(default_factory=list)  # its items in the conversation, in order
    _text: list[str] = field(default_factory=list)
    _audio_s: float = 0.0
    _input_tokens: int = 0
    _output_tokens: int = 0
    _cached_tokens: int = 0
    # Sentence deadlines: when the reply's audio starts playing (Unix time), and the audio
    # seconds (estimated until synthesized) of each sentence sent to TTS so far.
    _playback_start: float | None = None
    _sentence_s: list[float] = field(default_factory=list)
    # A speculation that finished unseen: its status, built into events when the gate opens
    # (so its response.done carries the turn's detection timings and metadata).
    _pending_finish: tuple[str, protocol.StatusDetails | None] | None = None

    def __post_init__(self) -> None:
        self._held = [] if self.speculative else None
        self.timings.speculative = self.speculative
        self._seen = asyncio.Event()  # visible: a speculation's MCP calls wait for it
        if not self.speculative:
            self._seen.set()

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
        return self._audio_s

    @property
    def visible(self) -> bool:
        return self._held is None

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
        held, self._held = self._held or [], None
        for event in held:
            self._send(event)
        if self._pending_finish is not None:  # it finished while unseen: report it now
            status, details = self._pending_finish
            self._pending_finish = None
            self._close_output(status, details)
            self.on_finished(self, status, "".join(self._text))

    def cancel(self, reason: str) -> None:
        if self.task is not None and not self.task.done():
            self.cancel_reason = reason
            self.task.cancel()

    # --- its items ----------------------------------------------------------------------------

    @property
    def anchor(self) -> str | None:
        """The item its next item follows in the conversation: its last one, else the user
        item it answers, else the conversation's last item when its prompt was built (a
        question created while it ran comes after the reply, as the prompt that made it did
        not hold it; None: the end of the conversation)."""
        if self._placed:
            return self._placed[-1]
        return self.user.item_id if self.user else self._prompt_end

    def owns(self, item_id: str) -> bool:
        return item_id in self._placed

    def current_item(self, item_id: str) -> protocol.Item | None:
        """One of its items as it is while it streams (the transcript so far)."""
        if item_id == self.item_id and self._message_index is not None:
            return self._item("in_progress")
        mcp_call = next((c for c in self.mcp_calls if c.item_id == item_id), None)
        if mcp_call is not None:
            return mcp_call.item()
        approval = next((item for _, item in self._approval_items if item.id == item_id), None)
        if approval is not None:
            return approval
        call = next((c for c in self.calls if c.item_id == item_id), None)
        if call is None:
            return None
        return call.item("completed" if call.complete else "incomplete" if call.done else "in_progress")

    # --- events -------------------------------------------------------------------------------

    def _send(self, event: protocol.ServerEvent) -> None:
        if self.on_item is not None and isinstance(event, (
                protocol.ConversationItemAdded, protocol.ConversationItemDone, protocol.FunctionCallArgumentsDone)):
            previous = self.on_item(self, event)
            if not isinstance(event, protocol.FunctionCallArgumentsDone):
                event.previous_item_id = previous
        if isinstance(event, protocol.ConversationItemAdded):
            self._placed.append(event.item.id)
        if isinstance(event, protocol.OutputAudioDelta) and self.timings.first_audio is None:
            self.timings.first_audio = time.perf_counter()
            self._playback_start = time.time()  # the client starts playing now
        self.emit(event)

    def _event(self, event: protocol.ServerEvent) -> None:
        if self._held is not None:
            self._held.append(event)
        else:
            self._send(event)

    def _part(self) -> dict[str, Any]:
        return {"response_id": self.id, "item_id": self.item_id, "output_index": self._message_index or 0}

    def _item(self, status: protocol.ItemStatus) -> protocol.MessageItem:
        return protocol.assistant_item(self.item_id, "".join(self._text), status, self.settings.output_audio)

    def _modalities(self) -> list:
        return ["audio"] if self.settings.output_audio else ["text"]

    def _response_object(self, status: str, details: protocol.StatusDetails | None) -> protocol.ResponseObject:
        item_status = "completed" if status == "completed" else "incomplete"
        timings = self.timings.as_wire()
        measured = timings.measured()
        # A call whose arguments were done stays complete, whatever ends the response after it.
        output: list[tuple[int, Any]] = [(call.output_index, call.item("completed" if call.complete else "incomplete"))
                                         for call in self.calls]
        output += [(call.output_index, call.item()) for call in self.mcp_calls]
        output += self._approval_items
        if self._message_index is not None:
            output.append((self._message_index, self._item(item_status)))
        return protocol.ResponseObject(
            id=self.id, status=status, status_details=details,
            output=[item for _, item in sorted(output, key=lambda entry: entry[0])],
            output_modalities=self._modalities(),
            usage=protocol.Usage(
                total_tokens=self._input_tokens + self._output_tokens,
                input_tokens=self._input_tokens, output_tokens=self._output_tokens,
                input_token_details=protocol.InputTokenDetails(
                    cached_tokens=self._cached_tokens, text_tokens=self._input_tokens)),
            # Clients that drop unknown keys still see the timings (as strings, metadata's type).
            metadata={**(self.settings.metadata or {}),
                      **{f"timing_{k}": str(v) for k, v in list(measured.items())[:8]}},
            timings=timings,
            audio_s=round(self._audio_s, 3),
        )

    def _open_output(self) -> None:
        self._event(protocol.ResponseCreated(response=protocol.ResponseObject(
            id=self.id, status="in_progress", output_modalities=self._modalities(),
            metadata=self.settings.metadata)))
        self._created = True

    def _next_output_index(self) -> int:
        return (len(self.calls) + len(self.mcp_calls) + len(self._approval_items)
                + (self._message_index is not None))

    def _open_message(self) -> None:
        """The assistant message item opens with its first text (a reply that is only a
        function call has none)."""
        if self._message_index is not None:
            return
        self._message_index = self._next_output_index()
        item = self._item("in_progress")
        self._event(protocol.OutputItemAdded(response_id=self.id, output_index=self._message_index, item=item))
        self._event(protocol.ConversationItemAdded(item=item))
        self._event(protocol.ContentPartAdded(part=protocol.content_part("", self.settings.output_audio),
                                              **self._part()))

    def _on_tool_call(self, delta: ToolCallDelta) -> None:
        """A tool-call delta: the first of a call opens its item, the others stream its
        arguments."""
        call = self._calls_by_index.get(delta.index)
        tool = self._mcp_tools.get(delta.name or "") if call is None else None
        if tool is not None:
            self._close_calls("completed")  # calls come one after the other
            self._close_mcp_arguments()
            call = McpCall(output_index=self._next_output_index(), tool=tool)
            self.mcp_calls.append(call)
            self._calls_by_index[delta.index] = call
            item = call.item()
            self._event(protocol.OutputItemAdded(response_id=self.id, output_index=call.output_index, item=item))
            self._event(protocol.ConversationItemAdded(item=item))
        if isinstance(call, McpCall):
            if delta.arguments and not call.arguments_done:
                call.arguments.append(delta.arguments)
                self._event(protocol.McpCallArgumentsDelta(response_id=self.id, item_id=call.item_id,
                                                           output_index=call.output_index, delta=delta.arguments))
            return
        if call is None:
            self._close_calls("completed")  # calls come one after the other
            self._close_mcp_arguments()
            call = FunctionCall(output_index=self._next_output_index(),
                                call_id=delta.call_id or protocol.new_id("call"), name=delta.name or "")
            self.calls.append(call)
            self._calls_by_index[delta.index] = call
            item = call.item("in_progress")
            self._event(protocol.OutputItemAdded(response_id=self.id, output_index=call.output_index, item=item))
            self._event(protocol.ConversationItemAdded(item=item))
        if delta.arguments and not call.done:
            call.arguments.append(delta.arguments)
            self._event(protocol.FunctionCallArgumentsDelta(
                response_id=self.id, item_id=call.item_id, output_index=call.output_index,
                call_id=call.call_id, delta=delta.arguments))

    def _close_calls(self, status: str) -> None:
        """Close the open calls: complete ones (``status`` completed) with their arguments done,
        from which on the client may answer them; others (the response was cancelled or failed
        in the middle of their arguments) only as ``incomplete`` items."""
        for call in self.calls:
            if call.done:
                continue
            call.done = True
            call.complete = status == "completed"
            item = call.item("completed" if call.complete else "incomplete")
            if call.complete:
                self._event(protocol.FunctionCallArgumentsDone(
                    response_id=self.id, item_id=call.item_id, output_index=call.output_index,
                    call_id=call.call_id, name=call.name, arguments=item.arguments))
            self._event(protocol.OutputItemDone(response_id=self.id, output_index=call.output_index, item=item))
            self._event(protocol.ConversationItemDone(item=item))

    def _close_mcp_arguments(self) -> None:
        """The model finished writing the open MCP call's arguments (the server runs it next)."""
        for call in self.mcp_calls:
            if not call.arguments_done and not call.done:
                call.arguments_done = True
                self._event(protocol.McpCallArgumentsDone(response_id=self.id, item_id=call.item_id,
                                                          output_index=call.output_index,
                                                          arguments="".join(call.arguments)))

    def _end_mcp_call(self, call: McpCall) -> None:
        call.done = True
        ended = protocol.McpCallFailed if call.error is not None else protocol.McpCallCompleted
        self._event(ended(item_id=call.item_id, output_index=call.output_index))
        item = call.item()
        self._event(protocol.OutputItemDone(response_id=self.id, output_index=call.output_index, item=item))
        self._event(protocol.ConversationItemDone(item=item))

    def _abandon_mcp_calls(self) -> None:
        """The response ends (cancelled, failed) with MCP calls not run or not answered yet."""
        for call in self.mcp_calls:
            if not call.done:
                call.error = protocol.McpToolExecutionError(message="the response ended before the call finished")
                self._end_mcp_call(call)

    def _close_output(self, status: str, details: protocol.StatusDetails | None) -> None:
        text = "".join(self._text)
        audio = self.settings.output_audio
        self._close_calls(status)
        self._abandon_mcp_calls()
        if self._message_index is None and not self.calls and not self.mcp_calls:
            self._open_message()  # every response without a call has its message item
        if self._message_index is not None:
            if audio:
                self._event(protocol.OutputAudioDone(**self._part()))
                self._event(protocol.OutputAudioTranscriptDone(transcript=text, **self._part()))
            else:
                self._event(protocol.OutputTextDone(text=text, **self._part()))
            self._event(protocol.ContentPartDone(part=protocol.content_part(text, audio), **self._part()))
            item = self._item("completed" if status == "completed" else "incomplete")
            self._event(protocol.OutputItemDone(response_id=self.id, output_index=self._message_index, item=item))
            self._event(protocol.ConversationItemDone(item=item))
        self._event(protocol.ResponseDone(response=self._response_object(status, details)))

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
            self._open_output()
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
            if not self._created:
                self._open_output()  # response.created comes before the error about it
            if not isinstance(failure, errors.TranscriptionFailed):  # reported on its item already
                self._event(protocol.error_event(failure))
        self._finish(status, details)

    async def _transcript(self, transcript: Callable[[], Awaitable[str]]) -> str:
        try:
            return await self._with_timeout(transcript())
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
        if not self._created:
            self._open_output()
        self.timings.done = time.perf_counter()
        if self.visible:
            self._close_output(status, details)
            self.on_finished(self, status, "".join(self._text))
        else:  # a speculation nobody has seen yet: it may still be dropped
            self._pending_finish = (status, details)

    async def _generate(self, user_text: str | None) -> None:
        settings = self.settings
        if self.context_end is not None:
            self._prompt_end = self.context_end()
        tools, tool_choice = await self._tools()
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
        knobs = settings.pipeline
        splitter = SentenceSplitter(knobs.first_chunk_min_words, knobs.first_chunk_max_words, knobs.max_chunk_words)
        chunk_samples = max(1, settings.output_rate_hz * knobs.output_chunk_ms // 1000)
        sentences = split_stream(deltas, splitter)
        if settings.sequential:
            sentences = _whole_text(sentences)
        fanout = ordered_fanout(
            _numbered(sentences), self._synthesize, knobs.tts_concurrency,
            on_item_start=self._sentence_started, head_start=True,
        )
        try:
            async for _, _, pcm in fanout:
                for start in range(0, len(pcm), chunk_samples):
                    piece = pcm[start:start + chunk_samples]
                    self._audio_s += len(piece) / settings.output_rate_hz
                    self._event(protocol.OutputAudioDelta.of(
                        piece, settings.output_format, settings.output_rate_hz, **self._part()))
        finally:
            await fanout.aclose()

    def _sentence_started(self, index: int, numbered: tuple[int, str]) -> None:
        sentence = numbered[1]
        if index == 0:
            self.timings.first_sentence = self.timings.first_sentence_tts_started = time.perf_counter()
        self._sentence_s.append(speech_seconds_estimate(sentence))

    def _sentence_deadline(self, index: int) -> float:
        """When sentence ``index`` must start playing: the first is due now; a later one when
        the audio before it has played (the client plays from the reply's first delta)."""
        now = time.time()
        if index == 0 or self._playback_start is None:
            return now
        return max(now, self._playback_start + sum(self._sentence_s[:index]))

    async def _tools(self) -> tuple[tuple, str]:
        """The engine's tools: the function tools and the MCP servers' (their listings awaited),
        and the choice with an MCP tool choice resolved to the name the LLM calls it by."""
        settings = self.settings
        tools, choice = settings.tools, settings.tool_choice
        listed: list[ListedTool] = []
        if settings.mcp and self.mcp is not None and choice != "none":
            listed = await self.mcp.tools_for(settings.mcp, {tool.name for tool in tools})
        self._mcp_tools = {tool.engine_name: tool for tool in listed}
        tools = tools + tuple(tool.engine_tool() for tool in listed)
        picked = mcp_choice(choice)
        if picked is not None:
            label, name = picked
            matching = [t for t in listed if t.server_label == label and (name is None or t.name == name)]
            # A tool its server did not list (or a listing that failed, reported then): the
            # model decides among what is there rather than the turn failing.
            choice = matching[0].engine_name if len(matching) == 1 else "required" if matching else "auto"
        if choice == "required" and not tools:
            choice = "auto"
        return tools, choice

    async def _transcript_deltas(self, deltas: AsyncIterator[Delta]) -> AsyncIterator[str]:
        async with aclosing(self._round(deltas)) as first_round:
            async for text in first_round:
                yield text
        # MCP calls the model made: the server runs them, then the model answers from their
        # results (in the same message, spoken after the filler), up to the calls cap.
        while (pending := [call for call in self.mcp_calls if not call.done]):
            if self._text:
                yield FLUSH  # what was said before the call is spoken while it runs
            await self._run_mcp_calls(pending)
            if self._request is None or any(isinstance(c, FunctionCall) for c in self._calls_by_index.values()):
                break  # the client runs the function calls of this round; it asks for the answer
            self._request = self._follow_up(self._request, pending)
            self._calls_by_index = {}
            self._usage_base = (self._input_tokens, self._output_tokens, self._cached_tokens)
            self._joining = bool(self._text)  # the answer continues the filler's message
            async with aclosing(self._round(self.backends.generate(self._request))) as round_:
                async for text in round_:
                    yield text

    def _follow_up(self, request: GenerationRequest, calls: list[McpCall]) -> GenerationRequest:
        from quillman.pipeline.conversation import mcp_result_text

        messages = list(request.messages)
        for call in calls:
            arguments = "".join(call.arguments) or "{}"
            messages.append(call_message(call.item_id, call.tool.engine_name, arguments))
            messages.append(output_message(call.item_id, mcp_result_text(call.item())))
        # After a result the model answers in words, or (a model that decides) calls again
        # while the cap allows; a forced choice applied to the first call only.
        capped = self._mcp_runs >= self.mcp_config.max_calls_per_response
        return replace(request, messages=messages, tool_choice="none" if capped else "auto", deadline=time.time())

    async def _run_mcp_calls(self, calls: list[McpCall]) -> None:
        await self._seen.wait()  # a speculation's calls run only once the turn is certain
        for call in calls:
            if self._mcp_runs >= self.mcp_config.max_calls_per_response:
                call.error = protocol.McpToolExecutionError(
                    message=f"at most {self.mcp_config.max_calls_per_response} MCP calls run per response")
                self._end_mcp_call(call)
                continue
            self._mcp_runs += 1
            await self._run_mcp_call(call)

    async def _run_mcp_call(self, call: McpCall) -> None:
        tool = call.tool
        spec = next((s for s in self.settings.mcp if s.label == tool.server_label), None)
        connection = self.mcp.connection(tool.server_label) if self.mcp is not None else None
        try:
            arguments = json.loads("".join(call.arguments) or "{}")
        except json.JSONDecodeError:
            arguments = None
        if spec is None or connection is None or not isinstance(arguments, dict):
            call.error = protocol.McpToolExecutionError(message="the call's arguments are not a JSON object"
                                                        if spec is not None else "the MCP server is gone")
            self._end_mcp_call(call)
            return
        if spec.needs_approval(tool.name, tool.read_only):
            approved, reason = await self._approval(call)
            if not approved:
                call.error = protocol.McpToolExecutionError(
                    message="the user did not approve this call" + (f": {reason}" if reason else ""))
                self._end_mcp_call(call)
                return
        call.running = True
        self._event(protocol.McpCallInProgress(item_id=call.item_id, output_index=call.output_index))
        result = await connection.call(tool.name, arguments)
        self.timings.mcp_call_ms = (self.timings.mcp_call_ms or 0.0) + result.tool_ms
        call.output, call.error = result.output, result.error
        self._end_mcp_call(call)

    async def _approval(self, call: McpCall) -> tuple[bool, str | None]:
        """An ``mcp_approval_request`` item, then the client's answer (no answer in time: no)."""
        if self.approvals is None:
            return False, None
        request_id = protocol.new_id("mcpr")
        call.approval_request_id = request_id
        item = protocol.McpApprovalRequestItem(id=request_id, server_label=call.tool.server_label,
                                               name=call.tool.name, arguments="".join(call.arguments))
        index = self._next_output_index()
        self._approval_items.append((index, item))
        answer = self.approvals.expect(request_id)
        self._event(protocol.OutputItemAdded(response_id=self.id, output_index=index, item=item))
        self._event(protocol.ConversationItemAdded(item=item))
        self._event(protocol.OutputItemDone(response_id=self.id, output_index=index, item=item))
        self._event(protocol.ConversationItemDone(item=item))
        timeout_s = self.mcp_config.approval_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                return await answer
        except TimeoutError:
            return False, f"no answer within {timeout_s:g} s"
        finally:
            self.approvals.drop(request_id)

    async def _round(self, deltas: AsyncIterator[Delta]) -> AsyncIterator[str]:
        """One generation's deltas: text out, calls into their items."""
        async with aclosing(self._iter_with_timeout(deltas)) as timed:
            async for delta in timed:
                if isinstance(delta, Usage):  # the engine's own count replaces ours (this round's)
                    base_in, base_out, base_cached = self._usage_base
                    self._input_tokens = base_in + delta.input_tokens
                    self._output_tokens = base_out + delta.output_tokens
                    self._cached_tokens = base_cached + delta.cached_tokens
                    self.timings.llm_queue_ms = delta.queued_ms
                    continue
                if isinstance(delta, ToolCallDelta):
                    filler = self.settings.pipeline.tool_filler
                    if (delta.index not in self._calls_by_index and filler and not self._text
                            and self.settings.output_audio):
                        # Something to hear while the client runs the tool: the reply's message,
                        # before the call (as text the model writes before a call is).
                        yield self._text_delta(filler)
                    self._on_tool_call(delta)
                    continue
                if self.timings.first_token is None:
                    self.timings.first_token = time.perf_counter()
                self._output_tokens += 1
                self._close_calls("completed")  # text after a call: that call is complete
                self._close_mcp_arguments()
                if self._joining:  # "One moment." + "The weather…": a space between them
                    self._joining = False
                    if not self._text[-1][-1:].isspace() and not delta[:1].isspace():
                        delta = " " + delta
                yield self._text_delta(delta)
        self._close_calls("completed")
        self._close_mcp_arguments()

    def _text_delta(self, delta: str) -> str:
        self._open_message()
        self._text.append(delta)
        delta_event = (protocol.OutputAudioTranscriptDelta if self.settings.output_audio
                       else protocol.OutputTextDelta)
        self._event(delta_event(delta=delta, **self._part()))
        return delta

    async def _synthesize(self, indexed: tuple[int, str]) -> AsyncIterator[np.ndarray]:
        index, sentence = indexed
        rate = self.settings.output_rate_hz
        pcm_s = 0.0
        stream = self._iter_with_timeout(
            self.backends.synthesize(sentence, self.settings.voice, rate, self._sentence_deadline(index)))
        try:
            async for item in stream:
                if isinstance(item, QueueWait):
                    if index == 0:
                        self.timings.tts_queue_ms = item.ms
                    continue
                pcm_s += len(item) / rate
                yield item
        finally:
            await stream.aclose()
        self._sentence_s[index] = pcm_s  # the estimate gives way to the real length

    async def _with_timeout(self, awaitable: Awaitable[T]) -> T:
        timeout_s = self.settings.pipeline.model_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                return await awaitable
        except TimeoutError:
            raise errors.ModelError(f"a model did not answer within {timeout_s:g} s") from None

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


async def _numbered(items: AsyncIterator[T]) -> AsyncIterator[tuple[int, T]]:
    # Closed with this generator (aclosing): a consumer that stops early (a failed synthesis)
    # closes the whole chain down to the LLM stream at once, not when it is garbage collected.
    async with aclosing(items) as source:  # type: ignore[type-var]
        index = 0
        async for item in source:
            yield index, item
            index += 1


async def _whole_text(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    """All chunks joined: the sequential baseline synthesizes the reply in one call."""
    text = " ".join([chunk async for chunk in chunks])
    if text:
        yield text
