"""What one response puts on the wire: its output items and the events that tell them.

The items are the assistant message (with its one content part), the ``function_call`` items
the client runs, the ``mcp_call`` and ``mcp_approval_request`` items the server runs; each
goes out as ``response.output_item.added`` / ``conversation.item.added`` ... ``.done``, between
``response.created`` and the ``response.done`` object that lists them with the usage. While
a speculation is behind its gate the events are held here, and released when it opens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from quillman import protocol
from quillman.engines.llm.base import ToolCallDelta, Usage
from quillman.pipeline.mcp_connection import ListedTool
from quillman.pipeline.response_calls import FunctionCall, McpCall
from quillman.pipeline.settings import ResponseSettings
from quillman.pipeline.timings import Timings


@dataclass
class TokenUsage:
    """The response's tokens over its generation rounds (one more per MCP follow-up)."""

    input: int = 0
    output: int = 0  # counted one per text delta until the engine's own count comes
    cached: int = 0
    _round_base: tuple[int, int, int] = (0, 0, 0)  # the totals of the rounds before this one

    def engine_count(self, usage: Usage) -> None:
        """The engine's count of this round replaces ours."""
        base_in, base_out, base_cached = self._round_base
        self.input = base_in + usage.input_tokens
        self.output = base_out + usage.output_tokens
        self.cached = base_cached + usage.cached_tokens

    def next_round(self) -> None:
        self._round_base = (self.input, self.output, self.cached)

    def wire(self) -> protocol.Usage:
        return protocol.Usage(
            total_tokens=self.input + self.output, input_tokens=self.input, output_tokens=self.output,
            input_token_details=protocol.InputTokenDetails(cached_tokens=self.cached, text_tokens=self.input))


class ResponseOutput:
    """The items, usage and events of one response (``response_id``; ``item_id``: its message)."""

    def __init__(self, response_id: str, item_id: str, settings: ResponseSettings, timings: Timings,
                 emit: Callable[[protocol.ServerEvent], None],
                 on_item: Callable[[protocol.ServerEvent], str | None] | None, held: bool):
        self.response_id = response_id
        self.item_id = item_id
        self.settings = settings
        # The settings' metadata and what the turn adds as it ends (read when each event is built).
        self.metadata = settings.metadata
        self.timings = timings
        self._emit = emit
        self._on_item = on_item  # places the item in the conversation: see Response.on_item
        self._held: list[protocol.ServerEvent] | None = [] if held else None
        self.created = False  # response.created went out (or is held)
        self.message_index: int | None = None  # output index of the message item, once it is opened
        self.calls: list[FunctionCall] = []
        self.mcp_calls: list[McpCall] = []
        self.approval_items: list[tuple[int, protocol.McpApprovalRequestItem]] = []
        self._round_calls: dict[int, FunctionCall | McpCall] = {}  # this generation's, by the engine's index
        self.placed: list[str] = []  # its items in the conversation, in order
        self._text: list[str] = []
        self.audio_s = 0.0  # seconds of reply audio so far
        self.usage = TokenUsage()
        self.playback_start: float | None = None  # Unix time the client started playing the reply

    # --- the gate and the wire ----------------------------------------------------------------

    @property
    def holding(self) -> bool:
        return self._held is not None

    def release(self) -> None:
        """The gate opened: the held events go out, later ones go out as they come."""
        held, self._held = self._held or [], None
        for event in held:
            self._send(event)

    def event(self, event: protocol.ServerEvent) -> None:
        if self._held is not None:
            self._held.append(event)
        else:
            self._send(event)

    def _send(self, event: protocol.ServerEvent) -> None:
        if self._on_item is not None and isinstance(event, (
                protocol.ConversationItemAdded, protocol.ConversationItemDone, protocol.FunctionCallArgumentsDone)):
            previous = self._on_item(event)
            if not isinstance(event, protocol.FunctionCallArgumentsDone):
                event.previous_item_id = previous
        if isinstance(event, protocol.ConversationItemAdded):
            self.placed.append(event.item.id)
        if isinstance(event, protocol.OutputAudioDelta) and self.timings.first_audio is None:
            self.timings.first_audio = time.perf_counter()
            self.playback_start = time.time()  # the client starts playing now
        self._emit(event)

    # --- the response -------------------------------------------------------------------------

    def open(self) -> None:
        """``response.created`` (once)."""
        if self.created:
            return
        self.event(protocol.ResponseCreated(response=protocol.ResponseObject(
            id=self.response_id, status="in_progress", output_modalities=self._modalities(),
            metadata=self.metadata)))
        self.created = True

    def close(self, status: str, details: protocol.StatusDetails | None) -> None:
        """Every item still open is closed, then ``response.done``."""
        text = self.text
        audio = self.settings.output_audio
        self._close_calls(status)
        self._abandon_mcp_calls()
        if self.message_index is None and not self.calls and not self.mcp_calls:
            self._open_message()  # every response without a call has its message item
        if self.message_index is not None:
            if audio:
                self.event(protocol.OutputAudioDone(**self._part()))
                self.event(protocol.OutputAudioTranscriptDone(transcript=text, **self._part()))
            else:
                self.event(protocol.OutputTextDone(text=text, **self._part()))
            self.event(protocol.ContentPartDone(part=protocol.content_part(text, audio), **self._part()))
            self._item_done(self.message_index, self._message(_item_status(status)))
        self.event(protocol.ResponseDone(response=self._response_object(status, details)))

    def _modalities(self) -> list:
        return ["audio"] if self.settings.output_audio else ["text"]

    def _response_object(self, status: str, details: protocol.StatusDetails | None) -> protocol.ResponseObject:
        timings = self.timings.as_wire()
        measured = timings.measured()
        # A call whose arguments were done stays complete, whatever ends the response after it.
        output: list[tuple[int, Any]] = [(call.output_index, call.item("completed" if call.complete else "incomplete"))
                                         for call in self.calls]
        output += [(call.output_index, call.item()) for call in self.mcp_calls]
        output += self.approval_items
        if self.message_index is not None:
            output.append((self.message_index, self._message(_item_status(status))))
        return protocol.ResponseObject(
            id=self.response_id, status=status, status_details=details,
            output=[item for _, item in sorted(output, key=lambda entry: entry[0])],
            output_modalities=self._modalities(),
            usage=self.usage.wire(),
            # Clients that drop unknown keys still see the timings (as strings, metadata's type).
            metadata={**(self.metadata or {}),
                      **{f"timing_{k}": str(v) for k, v in list(measured.items())[:8]}},
            timings=timings,
            audio_s=round(self.audio_s, 3),
        )

    # --- items --------------------------------------------------------------------------------

    def current_item(self, item_id: str) -> protocol.Item | None:
        """One of its items as it is while it streams (the transcript so far)."""
        if item_id == self.item_id and self.message_index is not None:
            return self._message("in_progress")
        mcp_call = next((c for c in self.mcp_calls if c.item_id == item_id), None)
        if mcp_call is not None:
            return mcp_call.item()
        approval = next((item for _, item in self.approval_items if item.id == item_id), None)
        if approval is not None:
            return approval
        call = next((c for c in self.calls if c.item_id == item_id), None)
        if call is None:
            return None
        return call.item("completed" if call.complete else "incomplete" if call.done else "in_progress")

    def _next_output_index(self) -> int:
        return (len(self.calls) + len(self.mcp_calls) + len(self.approval_items)
                + (self.message_index is not None))

    def _item_added(self, output_index: int, item: protocol.Item) -> None:
        self.event(protocol.OutputItemAdded(response_id=self.response_id, output_index=output_index, item=item))
        self.event(protocol.ConversationItemAdded(item=item))

    def _item_done(self, output_index: int, item: protocol.Item) -> None:
        self.event(protocol.OutputItemDone(response_id=self.response_id, output_index=output_index, item=item))
        self.event(protocol.ConversationItemDone(item=item))

    # --- the message --------------------------------------------------------------------------

    @property
    def text(self) -> str:
        return "".join(self._text)

    def text_ends_in_space(self) -> bool:
        return self._text[-1][-1:].isspace()

    def text_delta(self, delta: str) -> str:
        self._open_message()
        self._text.append(delta)
        delta_event = (protocol.OutputAudioTranscriptDelta if self.settings.output_audio
                       else protocol.OutputTextDelta)
        self.event(delta_event(delta=delta, **self._part()))
        return delta

    def audio_delta(self, pcm: np.ndarray) -> None:
        rate = self.settings.output_rate_hz
        self.audio_s += len(pcm) / rate
        self.event(protocol.OutputAudioDelta.of(pcm, self.settings.output_format, rate, **self._part()))

    def _open_message(self) -> None:
        """The assistant message item opens with its first text (a reply that is only a
        function call has none)."""
        if self.message_index is not None:
            return
        self.message_index = self._next_output_index()
        self._item_added(self.message_index, self._message("in_progress"))
        self.event(protocol.ContentPartAdded(part=protocol.content_part("", self.settings.output_audio),
                                             **self._part()))

    def _message(self, status: protocol.ItemStatus) -> protocol.MessageItem:
        return protocol.assistant_item(self.item_id, self.text, status, self.settings.output_audio)

    def _part(self) -> dict[str, Any]:
        return {"response_id": self.response_id, "item_id": self.item_id, "output_index": self.message_index or 0}

    # --- calls --------------------------------------------------------------------------------

    def opens_call(self, delta: ToolCallDelta) -> bool:
        return delta.index not in self._round_calls

    def next_round(self) -> None:
        """A new generation (an MCP follow-up): its calls are numbered afresh, its usage added."""
        self._round_calls = {}
        self.usage.next_round()

    @property
    def round_made_function_calls(self) -> bool:
        return any(isinstance(call, FunctionCall) for call in self._round_calls.values())

    def tool_call_delta(self, delta: ToolCallDelta, mcp_tool: ListedTool | None) -> None:
        """A tool-call delta (``mcp_tool``: the MCP tool it names, if any): the first of a call
        opens its item, the others stream its arguments."""
        call = self._round_calls.get(delta.index)
        if call is None and mcp_tool is not None:
            self.close_open_calls()  # calls come one after the other
            call = McpCall(output_index=self._next_output_index(), tool=mcp_tool)
            self.mcp_calls.append(call)
            self._round_calls[delta.index] = call
            self._item_added(call.output_index, call.item())
        if isinstance(call, McpCall):
            if delta.arguments and not call.arguments_done:
                call.arguments.append(delta.arguments)
                self.event(protocol.McpCallArgumentsDelta(response_id=self.response_id, item_id=call.item_id,
                                                          output_index=call.output_index, delta=delta.arguments))
            return
        if call is None:
            self.close_open_calls()  # calls come one after the other
            call = FunctionCall(output_index=self._next_output_index(),
                                call_id=delta.call_id or protocol.new_id("call"), name=delta.name or "")
            self.calls.append(call)
            self._round_calls[delta.index] = call
            self._item_added(call.output_index, call.item("in_progress"))
        if delta.arguments and not call.done:
            call.arguments.append(delta.arguments)
            self.event(protocol.FunctionCallArgumentsDelta(
                response_id=self.response_id, item_id=call.item_id, output_index=call.output_index,
                call_id=call.call_id, delta=delta.arguments))

    def close_open_calls(self) -> None:
        """The model went on (text, another call, the end of its round): the call it was
        writing has its arguments done."""
        self._close_calls("completed")
        for call in self.mcp_calls:
            if not call.arguments_done and not call.done:
                call.arguments_done = True  # the server runs it next
                self.event(protocol.McpCallArgumentsDone(response_id=self.response_id, item_id=call.item_id,
                                                         output_index=call.output_index,
                                                         arguments="".join(call.arguments)))

    def _close_calls(self, status: str) -> None:
        """Close the open function calls: complete ones (``status`` completed) with their
        arguments done, from which on the client may answer them; others (the response was
        cancelled or failed in the middle of their arguments) only as ``incomplete`` items."""
        for call in self.calls:
            if call.done:
                continue
            call.done = True
            call.complete = status == "completed"
            item = call.item("completed" if call.complete else "incomplete")
            if call.complete:
                self.event(protocol.FunctionCallArgumentsDone(
                    response_id=self.response_id, item_id=call.item_id, output_index=call.output_index,
                    call_id=call.call_id, name=call.name, arguments=item.arguments))
            self._item_done(call.output_index, item)

    def request_approval(self, call: McpCall, request_id: str) -> None:
        """The ``mcp_approval_request`` item of ``call``: added and done at once."""
        call.approval_request_id = request_id
        item = protocol.McpApprovalRequestItem(id=request_id, server_label=call.tool.server_label,
                                               name=call.tool.name, arguments="".join(call.arguments))
        index = self._next_output_index()
        self.approval_items.append((index, item))
        self._item_added(index, item)
        self._item_done(index, item)

    def mcp_call_running(self, call: McpCall) -> None:
        call.running = True
        self.event(protocol.McpCallInProgress(item_id=call.item_id, output_index=call.output_index))

    def end_mcp_call(self, call: McpCall, error: protocol.McpCallError | None = None) -> None:
        if error is not None:
            call.error = error
        call.done = True
        ended = protocol.McpCallFailed if call.error is not None else protocol.McpCallCompleted
        self.event(ended(item_id=call.item_id, output_index=call.output_index))
        self._item_done(call.output_index, call.item())

    def _abandon_mcp_calls(self) -> None:
        """The response ends (cancelled, failed) with MCP calls not run or not answered yet."""
        for call in self.mcp_calls:
            if not call.done:
                self.end_mcp_call(call, protocol.McpToolExecutionError(
                    message="the response ended before the call finished"))


def _item_status(status: str) -> protocol.ItemStatus:
    """The status of an item the response's end closed."""
    return "completed" if status == "completed" else "incomplete"
