"""The session's replies in order: one in progress at a time, the rest queued behind it.

A reply (:class:`~quillman.pipeline.response.Response`) is *shown* when its turn is decided: it
becomes the one in progress — the one ``response.cancel`` reaches — or, while another is still
on the wire, it waits in the queue, and its events flow once that one's ``response.done`` is out.
A voice reply may start before (speculative, held behind its gate) and only be shown at the
commit. Each finished reply's items, audio and function calls are settled in the conversation.

With a ``playback`` (a WebRTC media track) reply audio goes to the track instead of
``response.output_audio.delta`` events, and a barge-in truncates each cut reply at the position
the track played, so the client need not send ``conversation.item.truncate``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Callable

from quillman import errors, protocol
from quillman.config import LlmConfig, SessionConfig
from quillman.engines.llm.base import Capabilities, GenerationRequest, Message
from quillman.metrics import SessionMetrics
from quillman.pipeline.backends import Backends
from quillman.pipeline.conversation import ROOT, Conversation
from quillman.pipeline.mcp_servers import Approvals, McpServers
from quillman.pipeline.playback import Playback
from quillman.pipeline.response import Response, Timings, UserInput
from quillman.pipeline.settings import ResponseSettings, SessionSettings, generation_params, response_settings
from quillman.pipeline.tools import FunctionCalls

logger = logging.getLogger(__name__)


class ResponseQueue:
    def __init__(self, *, session_id: str, backends: Backends, config: SessionConfig, llm: LlmConfig,
                 capabilities: Capabilities, settings: Callable[[], SessionSettings], conversation: Conversation,
                 function_calls: FunctionCalls, mcp: McpServers, approvals: Approvals, metrics: SessionMetrics,
                 emit: Callable[[protocol.ServerEvent], None], track: Callable[[asyncio.Task], asyncio.Task],
                 playback: Playback | None):
        self.id = session_id
        self.backends = backends
        self.config = config
        self.llm = llm
        self.capabilities = capabilities
        self._settings = settings  # the session's, as session.update last left them
        self.conversation = conversation
        self.function_calls = function_calls
        self.mcp = mcp
        self.approvals = approvals
        self.metrics = metrics
        self._emit = emit
        self._track = track  # the session's close() cancels the replies' tasks
        self.playback = playback
        self.current: Response | None = None  # the visible response, if unfinished
        # Committed turns' responses waiting for it: one response is in progress at a time, the
        # one response.cancel reaches; each of these starts (its events flow) when it is done.
        self._queued: collections.deque[Response] = collections.deque()
        self._truncate_when_done: dict[str, int] = {}  # reply item -> ms played when it was cut
        self.done = 0  # responses that ended (response.done)

    def unfinished(self) -> list[Response]:
        return [r for r in (self.current, *self._queued) if r is not None]

    def refuse_if_in_progress(self, item_id: str) -> None:
        """An item of the reply in progress is not the client's to change yet."""
        if self.current is not None and self.current.owns(item_id):
            raise errors.InvalidEvent("that item's response is still in progress; cancel it first",
                                      param="item_id")

    def in_progress_item(self, item_id: str) -> protocol.Item | None:
        """The item as the reply in progress has it now (None: not one of its items)."""
        if self.current is not None and self.current.owns(item_id):
            return self.current.current_item(item_id)
        return None

    # --- starting, showing, cancelling --------------------------------------------------------

    def create_text(self, options: protocol.ResponseOptions | None) -> None:
        """``response.create``: a reply now, to the conversation as it is."""
        if self._settings().transcription_only:
            raise errors.InvalidEvent("a transcription session makes no responses", param="type")
        if self.current is not None:
            raise errors.ResponseAlreadyActive(
                f"response {self.current.id} is still in progress; cancel it or wait for response.done")
        response = self.new_response(None, speculative=False, options=options, origin=time.perf_counter())
        self.metrics.turn_committed()
        self.show(response, turn_detected=None)
        self._start(response)

    def start_voice(self, user: UserInput, speculative: bool) -> Response:
        """A spoken turn's reply, running from now; ``show`` it when the turn is committed."""
        response = self.new_response(user, speculative, None, origin=user.speech_end or time.perf_counter())
        self._start(response)
        return response

    def _start(self, response: Response) -> None:
        task = response.start().task
        assert task is not None  # start() made it
        self._track(task)

    def new_response(self, user: UserInput | None, speculative: bool,
                     options: protocol.ResponseOptions | None, origin: float) -> Response:
        settings = response_settings(self._settings(), options, self.config, self.llm, self.capabilities,
                                     self.mcp.access)
        self.mcp.check_count(settings.mcp, "response.tools")
        user_item_id = user.item_id if user else None
        last = self._queued[-1] if self._queued else self.current
        previous = last.task if last is not None else None
        return Response(
            settings=settings, backends=self.backends, emit=self._emit,
            prompt=self.prompt(settings, user_item_id),
            on_finished=self._finished, timings=Timings(origin=origin),
            user=user, speculative=speculative, after=previous, session_id=self.id,
            on_item=self._on_item,
            context_end=None if user else lambda: self.conversation.last_item_id or ROOT,
            mcp=self.mcp, approvals=self.approvals, mcp_config=self.mcp.config,
        )

    def prompt(self, settings: ResponseSettings, user_item_id: str | None) -> Callable[[str | None], list[Message]]:
        """The LLM prompt of a reply with these settings, given the user's words."""
        # The examples belong to the server's instructions: a client's own replace both.
        few_shot = (tuple((user, reply) for user, reply in self.config.few_shot)
                    if settings.instructions == self.config.instructions else ())
        return lambda text: self.conversation.messages(settings.instructions, user_item_id, text, few_shot,
                                                       self.config.question_note)

    def request_for(self, item_id: str, heard: str) -> GenerationRequest | None:
        """The request the turn's reply would make if the user stopped after ``heard``; None
        where the reply's prompt is not known yet (tools: the choice reads the whole question)."""
        try:
            settings = response_settings(self._settings(), None, self.config, self.llm, self.capabilities,
                                         self.mcp.access)
        except errors.QuillmanError:
            return None  # the reply will say why
        if settings.mcp or (settings.tools and settings.tool_choice != "none"):
            return None
        return GenerationRequest(messages=self.prompt(settings, item_id)(heard),
                                 params=generation_params(settings), session_id=self.id)

    def show(self, response: Response, turn_detected: float | None) -> None:
        if self.current is not None:
            # It follows the one in progress: a voice reply's task waits for that one's; a
            # speculation started before it stays held until it is current (_finished).
            self._queued.append(response)
            if not response.visible:
                response.commit(turn_detected or time.perf_counter())
            else:
                response.timings.turn_detected = turn_detected
            return
        self.current = response
        if not response.visible:
            response.open_gate(turn_detected or time.perf_counter())
        else:
            response.timings.turn_detected = turn_detected

    def cancel(self, response_id: str | None) -> None:
        """``response.cancel``: the one in progress (if it is ``response_id``, when given)."""
        if self.current is None or (response_id and response_id != self.current.id):
            raise errors.ResponseCancelNotActive("there is no active response to cancel")
        self.current.cancel("client_cancelled")

    def cancel_all(self, reason: str) -> None:
        for response in self.unfinished():
            response.cancel(reason)

    def interrupt(self) -> None:
        """The user speaks (barge-in): every reply is cancelled, the track's audio cut."""
        if not self._settings().interrupt_response:
            return
        if self.current is not None:
            logger.info("[%s] barge-in: cancelling %s", self.id, self.current.id)
            self.cancel_all("turn_detected")
        if self.playback is not None:
            self.cut_playback()

    def _finished(self, response: Response, status: str, text: str) -> None:
        if self.current is response:
            self.current = self._queued.popleft() if self._queued else None
        elif response in self._queued:
            self._queued.remove(response)
        self.done += 1
        timings = response.timings.as_ms()
        self.metrics.response_done(status, timings, spoken=response.user is not None)
        self.metrics.audio_out(response.audio_s)
        if status == "failed":
            self.metrics.error(errors.ModelError.code)
        self.conversation.set_audio(response.item_id, response.audio_s)  # its text came with its item
        if self.playback is not None:
            self.playback.response_finished(response.id)
            if response.item_id in self._truncate_when_done:
                self._truncate_played(response.item_id)
        for call in response.calls:
            # A call cut short (the response was cancelled or failed before its arguments were
            # done) is not run: its output is refused. Complete calls are pending since then.
            if not call.complete:
                self.function_calls.made(call.call_id, cancelled=True)
        logger.info("[%s] response %s %s timings=%s reply=%r", self.id, response.id, status,
                    timings, text[:200])
        if self.current is not None and not self.current.visible:
            # A speculation committed behind the one that just ended: its turn now.
            self.current.open_gate(self.current.timings.turn_detected or time.perf_counter())

    def _on_item(self, response: Response, event: protocol.ServerEvent) -> str | None:
        """A response's item event goes out: place or update the item; its previous_item_id."""
        if isinstance(event, protocol.FunctionCallArgumentsDone):
            # From now on the call may be answered (while the response goes on, a filler plays),
            # and in the conversation it is complete: its output follows it.
            self.conversation.update(protocol.FunctionCallItem(
                id=event.item_id, call_id=event.call_id, name=event.name, arguments=event.arguments))
            self.function_calls.made(event.call_id, cancelled=False)
            return None
        if isinstance(event, protocol.ConversationItemAdded):
            return self.conversation.insert(event.item, after=response.anchor)
        if isinstance(event, protocol.ConversationItemDone):  # the only other event sent here
            self.conversation.update(event.item)
            return self.conversation.previous_id(event.item.id)
        return None

    # --- reply audio on a media track ---------------------------------------------------------

    def play(self, event: protocol.OutputAudioDelta) -> bool:
        """Reply audio goes to the track when there is one (True): no delta event then."""
        if self.playback is None:
            return False
        self.playback.play(event)
        return True

    def cut_playback(self) -> None:
        """Drop the reply audio the track has not played; truncate each cut item there (a reply
        still in progress once it is done: the conversation refuses to truncate it before)."""
        if self.playback is None:
            raise errors.UnsupportedEvent(
                "output_audio_buffer.clear is for WebRTC calls; over a websocket the client "
                "plays the audio itself", param="type")
        for cut in self.playback.clear():
            logger.info("[%s] playback cut: %s heard %d ms", self.id, cut.item_id, cut.played_ms)
            self._truncate_when_done[cut.item_id] = cut.played_ms
            if not any(r.owns(cut.item_id) for r in self.unfinished()):
                self._truncate_played(cut.item_id)

    def _truncate_played(self, item_id: str) -> None:
        played_ms = self._truncate_when_done.pop(item_id)
        if self.conversation.get(item_id) is None:
            return  # deleted meanwhile, or the reply never placed an item
        try:
            self.conversation.truncate(item_id, played_ms)
        except errors.QuillmanError:
            return  # not an assistant message (a function call): nothing was spoken
        self._emit(protocol.ConversationItemTruncated(item_id=item_id, content_index=0, audio_end_ms=played_ms))
