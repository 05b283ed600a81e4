"""One Realtime conversation over one socket: event dispatch and responses.

Free of Ray and FastAPI: it takes the three models as a :class:`Backends` and the socket as two
callables, so the same code runs in the ingress and in unit tests. Its concerns live in their own
modules: the user's audio and turns in :mod:`~quillman.pipeline.turns`, the items and the LLM's
prompt in :mod:`~quillman.pipeline.conversation`, ``session.update`` in
:mod:`~quillman.pipeline.settings`, limits in :mod:`~quillman.pipeline.limits`, one assistant
reply in :mod:`~quillman.pipeline.response`. Wire shapes come only from :mod:`quillman.protocol`.

A session is a TaskGroup of two loops, receive and send, with a bounded outgoing queue between
the session and the socket. Every client frame is handled to the end: a refused one gets one
``error`` with a stable code, anything unexpected one ``server_error``, and the session goes on.
A fatal state (a client that stopped reading) gets one ``error``, then the socket closes (1011).

Flow of a spoken turn (server VAD):
  speech starts -> ``speech_started``; each pause closes a segment that goes to ASR at once,
  while the user may still be talking, and starts a *speculative* response held behind a gate;
  speech resumes -> the speculation is cancelled unseen; ``silence_duration_ms`` of silence ->
  ``speech_stopped`` + ``committed``, the speculation's gate opens and its events flow.
  Under ``semantic_vad`` each pause is also judged (:mod:`~quillman.pipeline.semantic`): a
  complete utterance ends the turn at that pause, an unsure one after a short wait, an
  incomplete one waits up to the cap.
Speech while a response is visible and unfinished cancels it (barge-in).

Transports: a websocket hands ``run`` text frames. Another transport may hand it typed input
instead of JSON it would have to build: a parsed :data:`protocol.ClientEvent`, or a
:class:`PcmFrame` of linear audio (a WebRTC track, already decoded). With a ``playback``
(:class:`~quillman.pipeline.playback.Playback`, a media track), reply audio goes to it instead
of ``response.output_audio.delta`` events, and a barge-in truncates the reply at the position the
track played, so the client need not send ``conversation.item.truncate``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass

import numpy as np
from typing import Any, Awaitable, Callable

from quillman import errors, protocol
from quillman.audio import decode_audio_base64
from quillman.config import LlmConfig, McpConfig, SessionConfig, VadConfig
from quillman.engines.llm.base import GenerationRequest, Message
from quillman.engines.loader import language_model_capabilities
from quillman.metrics import SessionMetrics
from quillman.pipeline.backends import Backends
from quillman.pipeline.conversation import ROOT, Conversation
from quillman.pipeline import semantic
from quillman.pipeline.limits import SessionLimits
from quillman.pipeline.mcp import Approvals, McpServers
from quillman.pipeline.mcp_access import Access
from quillman.pipeline.playback import Playback
from quillman.pipeline.response import Response, Timings, UserInput
from quillman.pipeline.prefill import SpeechPrefill
from quillman.pipeline.settings import (ResponseSettings, SessionSettings, check_capabilities, generation_params,
                                        response_settings)
from quillman.pipeline.tools import FunctionCalls
from quillman.pipeline.transcription import PartialTranscripts
from quillman.pipeline.turns import (
    DraftDropped,
    SegmentCut,
    SegmentDraft,
    SpeechEnded,
    StreamingVad,
    TurnCommitted,
    TurnEvent,
    TurnResumed,
    TurnStarted,
    TurnTracker,
    UserTurn,
)

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class PcmFrame:
    """Linear pcm16 mono audio at the session's input rate, from a transport that decoded it."""

    pcm: np.ndarray


ClientInput = str | bytes | protocol.ClientEvent | PcmFrame  # what ``receive`` may return

FLUSH_TIMEOUT_S = 5.0  # after the client leaves, how long queued events may take to go out
CLOSE_NORMAL, CLOSE_INTERNAL_ERROR = 1000, 1011


class Outbox:
    """Serialized server events waiting for the socket, bounded in bytes.

    A client that stops reading makes ``send`` block; the queue then grows, and past
    ``max_bytes`` the session ends instead of memory.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.queued_bytes = 0
        self._frames: collections.deque[str] = collections.deque()
        self._ready = asyncio.Event()
        self.finished = False

    def put(self, frame: str) -> bool:
        """False if the bound is passed (the frame is kept: the caller decides what is fatal)."""
        if self.finished:
            return True
        self._frames.append(frame)
        self.queued_bytes += len(frame)
        self._ready.set()
        return self.queued_bytes <= self.max_bytes

    def finish(self) -> None:
        self.finished = True
        self._ready.set()

    def empty(self) -> bool:
        return not self._frames

    async def get(self) -> str | None:
        """The next frame, or None once finished and drained."""
        while not self._frames:
            if self.finished:
                return None
            self._ready.clear()
            await self._ready.wait()
        frame = self._frames.popleft()
        self.queued_bytes -= len(frame)
        return frame


class RealtimeSession:
    def __init__(
        self,
        backends: Backends,
        config: SessionConfig,
        vad_config: VadConfig,
        make_vad: Callable[[], StreamingVad],
        send: Callable[[str], Awaitable[None]],
        llm: LlmConfig,
        voices: list[str] | None = None,
        session_id: str | None = None,
        metrics: SessionMetrics | None = None,
        end_of_turn: semantic.EndOfTurnModel | None = None,  # None: semantic_vad is refused
        playback: Playback | None = None,  # a media track that plays the reply audio (WebRTC)
        mcp: McpConfig | None = None,  # None: MCP tools are refused (mcp_disabled)
        mcp_connector: Callable[..., Any] | None = None,  # tests: connect without HTTP
    ):
        self.id = session_id or protocol.new_id("sess")
        self.backends = backends
        self.metrics = metrics or SessionMetrics()
        self.end_of_turn = end_of_turn
        self.config = config
        self.llm = llm
        self.capabilities = language_model_capabilities(llm)  # what its engine honours
        self._send = send
        self.playback = playback
        self._truncate_when_done: dict[str, int] = {}  # reply item -> ms played when it was cut
        if end_of_turn is None and vad_config.type == "semantic_vad":
            logger.warning("no end-of-turn model: sessions start with server_vad instead of semantic_vad")
            vad_config = vad_config.model_copy(update={"type": "server_vad"})
        self._outbox = Outbox(config.max_outbox_bytes)
        self.settings = SessionSettings.initial(config, vad_config, voices or [config.voice])
        self.limits = SessionLimits(config)
        self.turns = TurnTracker(make_vad, self.settings.turn_detection, self.settings.input_rate_hz,
                                 config.max_turn_s)
        self.conversation = Conversation(config.max_history_messages, llm.prompt_char_budget())
        self.function_calls = FunctionCalls()
        self.mcp_config = mcp or McpConfig()
        self.mcp_access = Access(self.mcp_config.allowed_servers)
        self.mcp = McpServers(self.mcp_access, self.mcp_config, self.emit, self._place_mcp_item, self.id,
                              mcp_connector)
        self.approvals = Approvals()
        self.speech_prefill = SpeechPrefill(self.backends.prefill, self._spawn, self._prefill_request) \
            if config.prefill_during_speech and self.capabilities.prefill else None
        self.partials = PartialTranscripts(
            lambda pcm: self.backends.transcribe(pcm, self.settings.language), self.emit, self._spawn,
            config.partial_transcript_interval_ms / 1000,
            on_hypothesis=self.speech_prefill.heard if self.speech_prefill else None,
            deltas=lambda: self.settings.wants_partials)
        self.denoiser = None  # a NoiseSuppressor while audio.input.noise_reduction is set
        self.response: Response | None = None  # the visible response, if unfinished
        # Committed turns' responses waiting for it: one response is in progress at a time, the
        # one response.cancel reaches; each of these starts (its events flow) when it is done.
        self._queued: collections.deque[Response] = collections.deque()
        self._tasks: set[asyncio.Task] = set()
        self._receiver: asyncio.Task | None = None
        self.close_code = CLOSE_NORMAL
        self.turns_committed = 0
        self.responses_done = 0

    # --- the socket ---------------------------------------------------------------------------

    async def run(self, receive: Callable[[], Awaitable[ClientInput | None]]) -> int:
        """Serve until the client goes away (``receive`` returns None) or the session ends;
        returns the websocket close code."""
        self.metrics.session_opened()
        self.emit(protocol.SessionCreated(session=self.settings.session_object(self.id)))
        try:
            async with asyncio.TaskGroup() as loops:
                sender = loops.create_task(self._send_loop(), name=f"{self.id}-send")
                self._receiver = loops.create_task(self._receive_loop(receive), name=f"{self.id}-receive")
                await asyncio.wait({self._receiver})
                await self.close()
                self._outbox.finish()
                await asyncio.wait({sender}, timeout=FLUSH_TIMEOUT_S)
                sender.cancel()  # a peer that does not read: its queue is dropped
        finally:
            await self.close()  # also when the caller (the ingress) is cancelled
            self._outbox.finish()
            self.metrics.session_closed()
        return self.close_code

    async def _receive_loop(self, receive: Callable[[], Awaitable[ClientInput | None]]) -> None:
        while True:
            try:
                async with asyncio.timeout(self.config.idle_timeout_s):
                    frame = await receive()
            except TimeoutError:
                self.error(errors.IdleTimeout(
                    f"no client event for {self.config.idle_timeout_s:g} s; closing the session"))
                return
            except Exception:  # noqa: BLE001 - a broken transport is a disconnect
                logger.info("[%s] receive failed; closing", self.id, exc_info=True)
                return
            if frame is None:
                return
            if isinstance(frame, PcmFrame):
                await self.handle_pcm(frame.pcm)
            elif isinstance(frame, (str, bytes)):
                await self.handle_frame(frame)
            else:
                await self.handle_typed(frame)

    async def _send_loop(self) -> None:
        while (frame := await self._outbox.get()) is not None:
            try:
                await self._send(frame)
            except Exception:  # noqa: BLE001 - socket closed under us; drain until finished
                logger.debug("[%s] send failed; client gone", self.id)

    def emit(self, event: protocol.ServerEvent) -> None:
        """Queue one server event for the client, serialized here, once."""
        if isinstance(event, protocol.OutputAudioDelta) and self.emit_audio(event):
            return
        if not self._outbox.put(protocol.serialize(event)) and self.close_code == CLOSE_NORMAL:
            self._fatal(errors.ClientTooSlow(
                f"more than {self._outbox.max_bytes} bytes of events are waiting for the client; "
                "it is not reading them, so the session ends"))

    def _fatal(self, exc: errors.QuillmanError) -> None:
        """One ``error``, then the socket closes with 1011; the session's work is cancelled."""
        logger.warning("[%s] fatal %s: %s", self.id, exc.code, exc.message)
        self.metrics.error(exc.code)
        self.close_code = CLOSE_INTERNAL_ERROR
        self._outbox.put(protocol.serialize(protocol.error_event(exc)))
        if self._receiver is not None and not self._receiver.done():
            self._receiver.cancel()

    def error(self, exc: errors.QuillmanError) -> None:
        logger.info("[%s] error %s: %s", self.id, exc.code, exc.message)
        self.metrics.error(exc.code)
        self.emit(protocol.error_event(exc))

    async def close(self) -> None:
        """Cancel every piece of work of this session (disconnect): nothing keeps running."""
        self._abandon(self.turns.abandon())
        for response in (self.response, *self._queued):
            if response is not None:
                response.cancel("client_cancelled")
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.mcp.close()  # after the responses: their calls are cancelled first

    def _track(self, task: asyncio.Task) -> asyncio.Task:
        """close() cancels and awaits every tracked task (responses included)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task:
        return self._track(asyncio.ensure_future(coro))

    # --- client events ----------------------------------------------------------------------

    async def handle_frame(self, frame: str | bytes) -> None:
        """One client frame, handled to the end: refused -> one ``error``; never raises."""
        try:
            self.limits.check_frame(frame)
            event = protocol.parse_client_event(frame)  # its refusals carry the frame's event_id
        except errors.QuillmanError as exc:
            self.error(exc)
            return
        except Exception:  # noqa: BLE001 - a bug must not end the session; the log has it
            logger.exception("[%s] internal error handling a client event", self.id)
            self.error(errors.InternalError("the server failed to handle this event; the session goes on"))
            return
        await self.handle_typed(event)

    async def handle_typed(self, event: protocol.ClientEvent) -> None:
        """A parsed client event (a frame, or a transport's typed input): refused -> one ``error``."""
        await self._handled(self.handle_event(event), event.event_id, "this event")

    async def handle_pcm(self, pcm16: np.ndarray) -> None:
        """Decoded audio from a media track; refused -> one ``error`` (audio limits)."""
        await self._handled(self.append_pcm(pcm16), None, "the audio")

    async def _handled(self, work: Awaitable[None], event_id: str | None, what: str) -> None:
        """Run one client input to the end: a refusal -> one ``error`` with the client's
        ``event_id``; a bug -> one ``server_error``, and the session goes on; never raises."""
        try:
            await work
        except errors.QuillmanError as exc:
            if exc.event_id is None:  # an empty event_id is still the client's to get back
                exc.event_id = event_id
            self.error(exc)
        except Exception:  # noqa: BLE001 - a bug must not end the session; the log has it
            logger.exception("[%s] internal error handling %s", self.id, what)
            self.error(errors.InternalError(f"the server failed to handle {what}; the session goes on",
                                            event_id=event_id))

    async def handle_event(self, event: protocol.ClientEvent) -> None:
        match event:
            case protocol.InputAudioBufferAppend():
                await self.append_audio(event.audio)
            case protocol.SessionUpdateEvent():
                self.update_session(event.session)
                self.emit(protocol.SessionUpdated(session=self.settings.session_object(self.id)))
            case protocol.InputAudioBufferCommit():
                self._on_turn_events([self.turns.commit()])
            case protocol.InputAudioBufferClear():
                self._abandon(self.turns.clear())
                self.emit(protocol.InputAudioBufferCleared())
            case protocol.ConversationItemCreate():
                self.create_item(event)
            case protocol.ConversationItemTruncate():
                self._refuse_if_in_progress(event.item_id)
                self.conversation.truncate(event.item_id, event.audio_end_ms)
                self.emit(protocol.ConversationItemTruncated(
                    item_id=event.item_id, content_index=event.content_index, audio_end_ms=event.audio_end_ms))
            case protocol.ConversationItemDelete():
                self.delete_item(event.item_id)
            case protocol.ConversationItemRetrieve():
                self.emit(protocol.ConversationItemRetrieved(item=self.current_item(event.item_id)))
            case protocol.ResponseCreate():
                self.create_text_response(event.response)
            case protocol.ResponseCancel():
                if self.response is None or (event.response_id and event.response_id != self.response.id):
                    raise errors.ResponseCancelNotActive("there is no active response to cancel")
                self.response.cancel("client_cancelled")
            case protocol.OutputAudioBufferClear():
                if self.playback is None:
                    raise errors.UnsupportedEvent(
                        "output_audio_buffer.clear is for WebRTC calls; over a websocket the client "
                        "plays the audio itself", param="type")
                self._cut_playback()

    # --- conversation items -----------------------------------------------------------------

    def create_item(self, event: protocol.ConversationItemCreate) -> None:
        call_id = event.item.call_id if isinstance(event.item, protocol.FunctionCallOutputInput) else None
        approval = event.item if isinstance(event.item, protocol.McpApprovalResponseInput) else None
        if call_id is not None:
            self.function_calls.check(call_id)  # unknown, answered, cancelled: refused
        if approval is not None:
            self.approvals.check(approval.approval_request_id)  # unknown, answered, expired: refused
        item, previous = self.conversation.add_client_item(event.item, event.previous_item_id)
        if call_id is not None:
            self.function_calls.answer(call_id)
        self.emit(protocol.ConversationItemAdded(item=item, previous_item_id=previous))
        self.emit(protocol.ConversationItemDone(item=item, previous_item_id=previous))
        if approval is not None:  # after its echo: the call it allows runs now
            self.approvals.answer(approval.approval_request_id, approval.approve, approval.reason)

    def _place_mcp_item(self, event: protocol.ServerEvent) -> str | None:
        """An MCP listing's item goes out: placed at the end of the conversation, then updated."""
        if isinstance(event, protocol.ConversationItemAdded):
            return self.conversation.insert(event.item)
        self.conversation.update(event.item)
        return self.conversation.previous_id(event.item.id)

    def delete_item(self, item_id: str) -> None:
        self._refuse_if_in_progress(item_id)
        item = self.conversation.delete(item_id).item  # raises for an unknown id
        # The prompt stays valid by itself (a call is shown only with its output); the call's
        # bookkeeping follows: no call, no output for it; no output, it may be answered again.
        if isinstance(item, protocol.FunctionCallItem):
            self.function_calls.forget(item.call_id)
        elif isinstance(item, protocol.FunctionCallOutputItem):
            self.function_calls.reopen(item.call_id)
        self.emit(protocol.ConversationItemDeleted(item_id=item_id))

    def current_item(self, item_id: str) -> protocol.Item:
        """``conversation.item.retrieve``: the item as it is now."""
        entry = self.conversation.get(item_id)
        if entry is None:
            raise errors.ItemRetrieveInvalidItemId(
                f"Error retrieving item: the item with id {item_id[:64]!r} does not exist.", param="item_id")
        if self.response is not None and self.response.owns(item_id):
            return self.response.current_item(item_id) or entry.item
        return entry.item

    def _refuse_if_in_progress(self, item_id: str) -> None:
        if self.response is not None and self.response.owns(item_id):
            raise errors.InvalidEvent("that item's response is still in progress; cancel it first",
                                      param="item_id")

    def _on_response_item(self, response: Response, event: protocol.ServerEvent) -> str | None:
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
        self.conversation.update(event.item)
        return self.conversation.previous_id(event.item.id)

    def update_session(self, update: protocol.SessionUpdate) -> None:
        if update.instructions is not None:
            self.conversation.check_text(update.instructions, "the instructions", "session.instructions")
        # Raises before any change (an MCP server outside the allowlist, too).
        settings = self.settings.apply(update, default_voice=self.config.voice, access=self.mcp_access)
        if update.tools is not None or update.tool_choice is not None:
            check_capabilities(bool(settings.tools), bool(settings.mcp), settings.tool_choice, self.capabilities,
                               "session.tools")
        self.mcp.check_count(settings.mcp, "session.tools")
        if self.end_of_turn is None and settings.turn_detection and settings.turn_detection.type == "semantic_vad":
            raise errors.UnsupportedFeature(
                "semantic_vad needs the end-of-turn model, which this server has not loaded; use server_vad",
                param="session.audio.input.turn_detection.type")
        self._set_noise_reduction(settings.noise_reduction, settings.input_rate_hz)
        self.settings = settings
        self.turns.set_input_rate(settings.input_rate_hz)
        self.turns.cut_at_pauses = not settings.sequential
        self._abandon(self.turns.set_detection(settings.turn_detection))
        if update.tools is not None:  # listed now, while the user speaks, not at the first turn
            self.mcp.retain(settings.mcp)
            self.mcp.connect(settings.mcp)

    def _set_noise_reduction(self, kind: str | None, rate_hz: int) -> None:
        if kind is None:
            self.denoiser = None
        elif self.denoiser is None or self.denoiser.rate_hz != rate_hz:
            try:
                from quillman.engines.noise import NoiseSuppressor  # loads RNNoise only when asked for

                self.denoiser = NoiseSuppressor(rate_hz)
            except (ImportError, OSError):
                logger.warning("noise reduction asked for but RNNoise (pyrnnoise) cannot load", exc_info=True)
                raise errors.UnsupportedFeature(
                    "audio.input.noise_reduction is not available on this server (RNNoise is not "
                    "installed); send null", param="session.audio.input.noise_reduction") from None

    # --- audio in, turns --------------------------------------------------------------------

    async def append_audio(self, audio_b64: str) -> None:
        await self.append_pcm(decode_audio_base64(audio_b64, self.settings.input_format))

    async def append_pcm(self, pcm16: np.ndarray) -> None:
        """Linear pcm16 at the session's input rate (decoded from the wire or from a track)."""
        now = time.perf_counter()
        seconds = len(pcm16) / self.settings.input_rate_hz
        self.limits.admit_audio(seconds, now)
        self.metrics.audio_in(seconds)
        if self.denoiser is not None:
            pcm16 = self.denoiser.process(pcm16)
        self._on_turn_events(await self.turns.append(pcm16, now))
        if self.settings.wants_partials or self._prefills():
            self.partials.on_audio(self.turns.turn, self.turns.timeline)

    def _prefills(self) -> bool:
        """Whether the reply's prompt is prefilled from partial transcripts (prefill.py)."""
        return (self.speech_prefill is not None and self.settings.responds
                and self.settings.turn_detection is not None)

    def _prefill_request(self, item_id: str, heard: str) -> GenerationRequest | None:
        """The request the turn's reply would make if the user stopped after ``heard``; None
        where the reply's prompt is not known yet (tools: the choice reads the whole question)."""
        try:
            settings = response_settings(self.settings, None, self.config, self.llm, self.capabilities,
                                         self.mcp_access)
        except errors.QuillmanError:
            return None  # the reply will say why
        if settings.mcp or (settings.tools and settings.tool_choice != "none"):
            return None
        return GenerationRequest(messages=self._prompt(settings, item_id)(heard),
                                 params=generation_params(settings), session_id=self.id)

    def _on_turn_events(self, events: list[TurnEvent]) -> None:
        for turn_event in events:
            match turn_event:
                case TurnStarted(turn=turn, audio_start_ms=start_ms):
                    if self.response is not None and self.settings.interrupt_response:
                        logger.info("[%s] barge-in: cancelling %s", self.id, self.response.id)
                        for response in (self.response, *self._queued):
                            response.cancel("turn_detected")
                    if self.playback is not None and self.settings.interrupt_response:
                        self._cut_playback()
                    self.emit(protocol.SpeechStartedEvent(audio_start_ms=start_ms, item_id=turn.item_id))
                case SegmentDraft(turn=turn, pcm=pieces):
                    self._draft(turn, pieces)
                case DraftDropped(turn=turn):
                    self._drop_draft(turn)
                case SegmentCut(turn=turn, pcm=pieces, pause=pause, drafted=drafted):
                    if drafted and turn.draft is not None:
                        turn.segments.append(turn.draft)  # transcribed since the first silence
                        turn.draft = None
                    else:
                        self._drop_draft(turn)
                        self._transcribe(turn, pieces)
                    if pause and self.settings.responds:
                        self._stop_prefill()  # the reply's own request evaluates from here on
                        turn.speculation = self._start_voice_response(turn, speculative=True)
                    if pause and self._semantic():
                        turn.judgment = self._spawn(self._judge(turn, pieces), "turn-judgment")
                case TurnResumed(turn=turn):
                    self._cancel_speculation(turn)
                    self._cancel_judgment(turn)
                case SpeechEnded(turn=turn, audio_end_ms=end_ms):
                    self.emit(protocol.SpeechStoppedEvent(audio_end_ms=end_ms, item_id=turn.item_id))
                case TurnCommitted():
                    self._commit(turn_event)

    def _transcribe(self, turn: UserTurn, pieces: list) -> None:
        for pcm in pieces:
            # Due now: if the turn ends here, the reply waits for this segment.
            turn.segments.append(self._spawn(
                self.backends.transcribe(pcm, self.settings.language, time.time()), "asr"))

    def _draft(self, turn: UserTurn, pieces: list) -> None:
        """The open segment's ASR from its first silence, due when that silence would be the
        pause: at a real pause the last segment's transcript is ready that much sooner."""
        self._drop_draft(turn)
        vad = self.settings.turn_detection
        if len(pieces) != 1 or vad is None:
            return
        due = time.time() + max(vad.pause_ms - vad.early_asr_ms, 0) / 1000
        turn.draft = self._spawn(self.backends.transcribe(pieces[0], self.settings.language, due), "asr-draft")

    @staticmethod
    def _drop_draft(turn: UserTurn) -> None:
        if turn.draft is not None:
            turn.draft.cancel()
            turn.draft = None

    def _semantic(self) -> bool:
        vad = self.settings.turn_detection
        return self.end_of_turn is not None and vad is not None and vad.type == "semantic_vad"

    async def _judge(self, turn: UserTurn, segment: list) -> None:
        """Is the turn complete at this pause? Yes: it ends now. Unsure: it ends after the short
        wait unless speech resumes. No: the cap will end it. The audio model hears the speech
        since the previous pause (``segment``), beside the ASR of that segment: measured on the
        labeled set, a pause inside its window makes it call finished utterances unfinished."""
        pcm = np.concatenate(segment) if segment else np.zeros(0, dtype=np.float32)
        try:
            decision = await semantic.judge(self.end_of_turn, pcm, turn.join_transcripts(),
                                            self.settings.turn_detection)
        except Exception:  # noqa: BLE001 - a failed judgment leaves the turn to the cap
            logger.warning("[%s] end-of-turn judgment failed; waiting for the cap", self.id, exc_info=True)
            return
        turn.decision = decision
        if decision.wait_ms is not None:  # once the pause has lasted wait_ms (now, if it has)
            self._on_turn_events(self.turns.end_turn_after(turn, decision.wait_ms))
        elif decision.complete:
            turn.decided_at = time.perf_counter()
            self._on_turn_events(self.turns.end_turn(turn))

    def _cancel_judgment(self, turn: UserTurn) -> None:
        if turn.judgment is not None:
            turn.judgment.cancel()
            turn.judgment = None

    def _stop_prefill(self) -> None:
        if self.speech_prefill is not None:
            self.speech_prefill.stop()

    def _cancel_speculation(self, turn: UserTurn) -> None:
        if turn.speculation is not None:
            turn.speculation.cancel("turn_detected")
            turn.speculation = None

    def _abandon(self, turn: UserTurn | None) -> None:
        if turn is not None:
            self.partials.drop(turn.item_id)
            self._stop_prefill()
            self._cancel_speculation(turn)
            self._cancel_judgment(turn)
            self._drop_draft(turn)
            for task in turn.segments:
                task.cancel()

    def _commit(self, committed: TurnCommitted) -> None:
        now = time.perf_counter()
        turn = committed.turn
        if turn.judgment is not None and turn.decided_at is None:
            self._cancel_judgment(turn)  # the cap or a commit came first
        if committed.reason != "vad":
            self._cancel_speculation(turn)  # a commit is not the pause the speculation bet on
        self._drop_draft(turn)  # a commit before the pause: its tail is transcribed whole
        if committed.reason == "max_turn":
            logger.info("[%s] turn reached max_turn_s; ending it", self.id)
        if turn.speculation is None:
            self._transcribe(turn, committed.tail)
        self.turns_committed += 1
        self.metrics.turn_committed()
        turn.transcript = self._spawn(turn.join_transcripts()(), "transcript")
        self.partials.stop(turn.item_id)
        self._stop_prefill()
        # The user's place in the conversation is fixed now; the text comes with the transcript.
        item = protocol.user_audio_item(turn.item_id, None, "in_progress")
        previous = self.conversation.insert(item)
        self.emit(protocol.InputAudioBufferCommitted(item_id=turn.item_id, previous_item_id=previous))
        self.emit(protocol.ConversationItemAdded(item=item, previous_item_id=previous))
        self._spawn(self._finish_user_item(turn, committed.duration_s), "user-item")
        if not self.settings.responds:
            return
        # Started at the last pause (speculative) or, e.g. in the sequential baseline, only now.
        response = turn.speculation or self._start_voice_response(turn, speculative=False)
        turn.speculation = None
        signal = semantic.end_signal(self.settings.turn_detection, committed.reason, turn.decision,
                                     waited=turn.waited)
        response.timings.turn_decision = turn.decided_at or now
        response.add_metadata(turn_decision=signal)
        self._show(response, turn_detected=now)

    async def _finish_user_item(self, turn: UserTurn, duration_s: float) -> None:
        try:
            text = await turn.transcript
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported once, on the item
            self.partials.drop(turn.item_id)
            logger.warning("[%s] transcription of %s failed: %r", self.id, turn.item_id, exc)
            self.metrics.error(errors.TranscriptionFailed.code)
            failure = errors.TranscriptionFailed("transcription of the user's audio failed")
            self.emit(protocol.InputAudioTranscriptionFailed(item_id=turn.item_id,
                                                             error=protocol.error_body(failure)))
            self._user_item_done(protocol.user_audio_item(turn.item_id, None, "incomplete"))
            return
        self.partials.finish(turn.item_id, text)
        self.emit(protocol.InputAudioTranscriptionCompleted(
            item_id=turn.item_id, transcript=text,
            usage=protocol.TranscriptionUsage(seconds=round(max(duration_s, 0.0), 3))))
        self._user_item_done(protocol.user_audio_item(turn.item_id, text))
        logger.info("[%s] user: %s", self.id, text)

    # --- reply audio on a media track ---------------------------------------------------------

    def _cut_playback(self) -> None:
        """Drop the reply audio the track has not played; truncate each cut item there (a reply
        still in progress once it is done: the conversation refuses to truncate it before)."""
        for cut in self.playback.clear():
            logger.info("[%s] playback cut: %s heard %d ms", self.id, cut.item_id, cut.played_ms)
            self._truncate_when_done[cut.item_id] = cut.played_ms
            if not self._owned_by_unfinished(cut.item_id):
                self._truncate_played(cut.item_id)

    def _owned_by_unfinished(self, item_id: str) -> bool:
        return any(r is not None and r.owns(item_id) for r in (self.response, *self._queued))

    def _truncate_played(self, item_id: str) -> None:
        played_ms = self._truncate_when_done.pop(item_id)
        if self.conversation.get(item_id) is None:
            return  # deleted meanwhile, or the reply never placed an item
        try:
            self.conversation.truncate(item_id, played_ms)
        except errors.QuillmanError:
            return  # not an assistant message (a function call): nothing was spoken
        self.emit(protocol.ConversationItemTruncated(item_id=item_id, content_index=0, audio_end_ms=played_ms))

    def emit_audio(self, event: protocol.OutputAudioDelta) -> bool:
        """Reply audio goes to the track when there is one (True): no delta event then."""
        if self.playback is None:
            return False
        self.playback.play(event)
        return True

    def _user_item_done(self, item: protocol.MessageItem) -> None:
        # A user item the client deleted meanwhile stays deleted (no event would bring it back).
        if self.conversation.update(item):
            self.emit(protocol.ConversationItemDone(item=item, previous_item_id=self.conversation.previous_id(item.id)))

    # --- responses ----------------------------------------------------------------------------

    def create_text_response(self, options: protocol.ResponseOptions | None) -> None:
        if self.settings.transcription_only:
            raise errors.InvalidEvent("a transcription session makes no responses", param="type")
        if self.response is not None:
            raise errors.ResponseAlreadyActive(
                f"response {self.response.id} is still in progress; cancel it or wait for response.done")
        response = self._new_response(None, speculative=False, options=options, origin=time.perf_counter())
        self.metrics.turn_committed()
        self._show(response, turn_detected=None)
        self._track(response.start().task)

    def _start_voice_response(self, turn: UserTurn, speculative: bool) -> Response:
        user = UserInput(
            item_id=turn.item_id,
            transcript=(lambda task=turn.transcript: asyncio.shield(task)) if turn.transcript
            else turn.join_transcripts(),
            speech_end=turn.speech_end,
            asr_last_segment_ms=turn.last_segment_ms,
        )
        response = self._new_response(user, speculative, None, origin=turn.speech_end or time.perf_counter())
        self._track(response.start().task)
        return response

    def _new_response(self, user: UserInput | None, speculative: bool,
                      options: protocol.ResponseOptions | None, origin: float) -> Response:
        settings = response_settings(self.settings, options, self.config, self.llm, self.capabilities,
                                     self.mcp_access)
        self.mcp.check_count(settings.mcp, "response.tools")
        user_item_id = user.item_id if user else None
        last = self._queued[-1] if self._queued else self.response
        previous = last.task if last is not None else None
        return Response(
            settings=settings, backends=self.backends, emit=self.emit,
            prompt=self._prompt(settings, user_item_id),
            on_finished=self._response_finished, timings=Timings(origin=origin),
            user=user, speculative=speculative, after=previous, session_id=self.id,
            on_item=self._on_response_item,
            context_end=None if user else lambda: self.conversation.last_item_id or ROOT,
            mcp=self.mcp, approvals=self.approvals, mcp_config=self.mcp_config,
        )

    def _prompt(self, settings: ResponseSettings, user_item_id: str | None) -> Callable[[str | None], list[Message]]:
        """The LLM prompt of a reply with these settings, given the user's words."""
        # The examples belong to the server's instructions: a client's own replace both.
        few_shot = tuple(map(tuple, self.config.few_shot)) if settings.instructions == self.config.instructions else ()
        return lambda text: self.conversation.messages(settings.instructions, user_item_id, text, few_shot,
                                                       self.config.question_note)

    def _show(self, response: Response, turn_detected: float | None) -> None:
        if self.response is not None:
            # It follows the one in progress: a voice reply's task waits for that one's; a
            # speculation started before it stays held until it is current (_response_finished).
            self._queued.append(response)
            if not response.visible:
                response.commit(turn_detected or time.perf_counter())
            else:
                response.timings.turn_detected = turn_detected
            return
        self.response = response
        if not response.visible:
            response.open_gate(turn_detected or time.perf_counter())
        else:
            response.timings.turn_detected = turn_detected

    def _response_finished(self, response: Response, status: str, text: str) -> None:
        if self.response is response:
            self.response = self._queued.popleft() if self._queued else None
        elif response in self._queued:
            self._queued.remove(response)
        self.responses_done += 1
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
        if self.response is not None and not self.response.visible:
            # A speculation committed behind the one that just ended: its turn now.
            self.response.open_gate(self.response.timings.turn_detected or time.perf_counter())
