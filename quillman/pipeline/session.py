"""One Realtime conversation over one socket: construction, wiring and event dispatch.

Free of Ray and FastAPI (the models are a :class:`Backends`, the socket two callables), it
dispatches between three parts: the socket (:mod:`~quillman.pipeline.connection`), the user's
spoken turns (:mod:`~quillman.pipeline.voice_turn` over :mod:`~quillman.pipeline.turns`) and the
replies (:mod:`~quillman.pipeline.response_queue`). Items and the prompt are
:mod:`~quillman.pipeline.conversation`'s, ``session.update`` :mod:`~quillman.pipeline.settings`'.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from typing import Any, Awaitable, Callable

from quillman import errors, protocol
from quillman.audio import decode_audio_base64
from quillman.config import LlmConfig, McpConfig, SessionConfig, VadConfig
from quillman.engines.loader import language_model_capabilities
from quillman.metrics import SessionMetrics
from quillman.pipeline.backends import Backends
from quillman.pipeline.connection import ClientInput, Connection, PcmFrame  # noqa: F401 - transports import PcmFrame here
from quillman.pipeline.conversation import Conversation
from quillman.pipeline.denoise import NoiseReduction
from quillman.pipeline import semantic
from quillman.pipeline.limits import SessionLimits
from quillman.pipeline.mcp_servers import Approvals, McpServers
from quillman.pipeline.mcp_access import Access
from quillman.pipeline.playback import Playback
from quillman.pipeline.response import Response
from quillman.pipeline.response_queue import ResponseQueue
from quillman.pipeline.prefill import SpeechPrefill
from quillman.pipeline.settings import SessionSettings, check_capabilities
from quillman.pipeline.tools import FunctionCalls
from quillman.pipeline.transcription import PartialTranscripts
from quillman.pipeline.turns import StreamingVad, TurnTracker
from quillman.pipeline.voice_turn import VoiceTurns

logger = logging.getLogger(__name__)

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
        self.metrics = metrics or SessionMetrics()
        self.end_of_turn = end_of_turn
        self.config = config
        self.capabilities = language_model_capabilities(llm)  # what its engine honours
        if end_of_turn is None and vad_config.type == "semantic_vad":
            logger.warning("no end-of-turn model: sessions start with server_vad instead of semantic_vad")
            vad_config = vad_config.model_copy(update={"type": "server_vad"})
        self.settings = SessionSettings.initial(config, vad_config, voices or [config.voice])
        self.connection = Connection(self.id, send, SessionLimits(config), self.metrics, config.max_outbox_bytes,
                                     config.idle_timeout_s)
        self.turns = TurnTracker(make_vad, self.settings.turn_detection, self.settings.input_rate_hz,
                                 config.max_turn_s)
        self.conversation = Conversation(config.max_history_messages, llm.prompt_char_budget())
        self.function_calls = FunctionCalls()
        mcp = mcp or McpConfig()
        self.mcp_access = Access(mcp.allowed_servers)
        self.mcp = McpServers(self.mcp_access, mcp, self.emit, self.conversation.place_at_end, self.id,
                              mcp_connector)
        self.approvals = Approvals()
        self.responses = ResponseQueue(
            session_id=self.id, backends=backends, config=config, llm=llm, capabilities=self.capabilities,
            settings=lambda: self.settings, conversation=self.conversation, function_calls=self.function_calls,
            mcp=self.mcp, approvals=self.approvals, metrics=self.metrics, emit=self.emit,
            track=self.connection.track, playback=playback)
        self.speech_prefill = SpeechPrefill(backends.prefill, self.connection.spawn, self.responses.request_for) \
            if config.prefill_during_speech and self.capabilities.prefill else None
        self.partials = PartialTranscripts(
            lambda pcm: backends.transcribe(pcm, self.settings.language), self.emit, self.connection.spawn,
            config.partial_transcript_interval_ms / 1000,
            on_hypothesis=self.speech_prefill.heard if self.speech_prefill else None,
            deltas=lambda: self.settings.wants_partials)
        self.noise_reduction = NoiseReduction()
        self.voice = VoiceTurns(
            session_id=self.id, tracker=self.turns, transcribe=backends.transcribe, settings=lambda: self.settings,
            end_of_turn=end_of_turn, responses=self.responses, conversation=self.conversation,
            partials=self.partials, speech_prefill=self.speech_prefill, metrics=self.metrics, emit=self.emit,
            spawn=self.connection.spawn)

    @property
    def response(self) -> Response | None:  # the reply in progress (the one response.cancel reaches)
        return self.responses.current

    @property
    def responses_done(self) -> int:
        return self.responses.done

    @property
    def turns_committed(self) -> int:
        return self.voice.committed

    # --- the socket (connection.py) -----------------------------------------------------------

    async def run(self, receive: Callable[[], Awaitable[ClientInput | None]]) -> int:
        """Serve until the client leaves (``receive`` returns None) or a fatal error; the close code."""
        self.metrics.session_opened()
        self.emit(protocol.SessionCreated(session=self.settings.session_object(self.id)))
        try:
            return await self.connection.serve(receive, self.handle_typed, self.handle_pcm, self.close)
        finally:
            self.metrics.session_closed()

    def emit(self, event: protocol.ServerEvent) -> None:
        """Queue one server event for the client (reply audio goes to a media track instead)."""
        if isinstance(event, protocol.OutputAudioDelta) and self.responses.play(event):
            return
        self.connection.emit(event)

    def error(self, exc: errors.QuillmanError) -> None:
        self.connection.error(exc)

    @property
    def limits(self) -> SessionLimits:
        return self.connection.limits

    async def close(self) -> None:
        """Cancel every piece of work of this session (disconnect): nothing keeps running."""
        self.voice.abandon()
        self.responses.cancel_all("client_cancelled")
        await self.connection.cancel_tasks()
        await self.mcp.close()  # after the responses: their calls are cancelled first

    # --- client input -------------------------------------------------------------------------

    async def handle_frame(self, frame: str | bytes) -> None:
        """One client frame, handled to the end: refused -> one ``error``; never raises."""
        await self.connection.handle_frame(frame, self.handle_typed)

    async def handle_typed(self, event: protocol.ClientEvent) -> None:
        """A parsed client event (a frame, or a transport's typed input): refused -> one ``error``."""
        await self.connection.handled(self.handle_event(event), event.event_id, "this event")

    async def handle_pcm(self, pcm16: np.ndarray) -> None:
        """Decoded audio from a media track; refused -> one ``error`` (audio limits)."""
        await self.connection.handled(self.append_pcm(pcm16), None, "the audio")

    async def handle_event(self, event: protocol.ClientEvent) -> None:
        match event:
            case protocol.InputAudioBufferAppend():
                await self.append_pcm(decode_audio_base64(event.audio, self.settings.input_format))
            case protocol.SessionUpdateEvent():
                self.update_session(event.session)
                self.emit(protocol.SessionUpdated(session=self.settings.session_object(self.id)))
            case protocol.InputAudioBufferCommit():
                self.voice.commit()
            case protocol.InputAudioBufferClear():
                self.voice.clear()
                self.emit(protocol.InputAudioBufferCleared())
            case protocol.ConversationItemCreate():
                self.create_item(event)
            case protocol.ConversationItemTruncate():
                self.responses.refuse_if_in_progress(event.item_id)
                self.conversation.truncate(event.item_id, event.audio_end_ms)
                self.emit(protocol.ConversationItemTruncated(
                    item_id=event.item_id, content_index=event.content_index, audio_end_ms=event.audio_end_ms))
            case protocol.ConversationItemDelete():
                self.delete_item(event.item_id)
            case protocol.ConversationItemRetrieve():
                self.emit(protocol.ConversationItemRetrieved(item=self.current_item(event.item_id)))
            case protocol.ResponseCreate():
                self.responses.create_text(event.response)
            case protocol.ResponseCancel():
                self.responses.cancel(event.response_id)
            case protocol.OutputAudioBufferClear():
                self.responses.cut_playback()

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

    def delete_item(self, item_id: str) -> None:
        self.responses.refuse_if_in_progress(item_id)
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
        return self.responses.in_progress_item(item_id) or entry.item

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
        self.noise_reduction.configure(settings.noise_reduction, settings.input_rate_hz)
        self.settings = settings
        self.voice.configure(settings)
        if update.tools is not None:  # listed now, while the user speaks, not at the first turn
            self.mcp.retain(settings.mcp)
            self.mcp.connect(settings.mcp)

    # --- audio in, turns --------------------------------------------------------------------

    async def append_pcm(self, pcm16: np.ndarray) -> None:
        """Linear pcm16 at the session's input rate (decoded from the wire or from a track)."""
        now = time.perf_counter()
        seconds = len(pcm16) / self.settings.input_rate_hz
        self.limits.admit_audio(seconds, now)
        self.metrics.audio_in(seconds)
        await self.voice.append(self.noise_reduction.process(pcm16), now)
