"""The user's spoken turns: what the session does on each :data:`~quillman.pipeline.turns.TurnEvent`.

:class:`~quillman.pipeline.turns.TurnTracker` owns the audio (timeline, VAD cursor) and says
what an append or a commit means; a :class:`VoiceTurn` per user turn owns that turn's work —
the ASR of its segments, the draft, the judgment, the speculative reply, the transcript — and
:class:`VoiceTurns` routes the events to it.

Flow of a spoken turn (server VAD):
  speech starts -> ``speech_started`` (and barge-in: the replies are cancelled); each pause
  closes a segment that goes to ASR at once, while the user may still be talking, and starts a
  *speculative* reply held behind a gate; speech resumes -> the speculation is cancelled unseen;
  ``silence_duration_ms`` of silence -> ``speech_stopped`` + ``committed``, the speculation's
  gate opens and its events flow.
  Under ``semantic_vad`` each pause is also judged (:mod:`~quillman.pipeline.semantic`): a
  complete utterance ends the turn at that pause, an unsure one after a short wait, an
  incomplete one waits up to the cap.
While the user speaks, partial transcripts prefill the reply's prompt (:mod:`~quillman.pipeline.prefill`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

import numpy as np

from quillman import errors, protocol
from quillman.engines.asr.base import Transcript, joined
from quillman.metrics import SessionMetrics
from quillman.pipeline import semantic
from quillman.pipeline.conversation import Conversation
from quillman.pipeline.prefill import SpeechPrefill
from quillman.pipeline.response import Response, UserInput
from quillman.pipeline.response_queue import ResponseQueue
from quillman.pipeline.settings import SessionSettings
from quillman.pipeline.transcription import PartialTranscripts
from quillman.pipeline.turns import (DraftDropped, SegmentCut, SegmentDraft, SpeechEnded, TurnCommitted, TurnEvent,
                                     TurnResumed, TurnStarted, TurnTracker, UserTurn)

logger = logging.getLogger(__name__)

Transcribe = Callable[[np.ndarray, float], Awaitable[Transcript]]  # (16 kHz audio, due) -> its ASR


class VoiceTurn:
    """One user turn's work: it starts, cancels and awaits every task of the turn."""

    def __init__(self, user: UserTurn, spawn: Callable[[Awaitable[Any], str], asyncio.Task]):
        self.user = user  # its audio, on the tracker's timeline
        self._spawn = spawn
        self.segments: list[asyncio.Task[Transcript]] = []  # ASR of each segment cut, in order
        # The open segment's ASR started at the first silence (SegmentDraft): it becomes the
        # segment's transcript if that silence turns into the pause.
        self.draft: asyncio.Task[Transcript] | None = None
        self.speculation: Response | None = None  # the reply started at the last pause
        self.judgment: asyncio.Task | None = None  # semantic_vad: is it complete at the last pause?
        self.decision: semantic.Decision | None = None  # the last pause's judgment
        self.decided_at: float | None = None  # when the judgment ended the turn at its pause
        self.transcript: asyncio.Task[str] | None = None  # from the commit: the whole turn's

    @property
    def item_id(self) -> str:
        return self.user.item_id

    def transcribe(self, transcribe: Transcribe, pieces: list[np.ndarray]) -> None:
        for pcm in pieces:
            # Due now: if the turn ends here, the reply waits for this segment.
            self.segments.append(self._spawn(transcribe(pcm, time.time()), "asr"))

    def start_draft(self, transcribe: Transcribe, pcm: np.ndarray, due: float) -> None:
        self.drop_draft()
        self.draft = self._spawn(transcribe(pcm, due), "asr-draft")

    def keep_draft(self) -> bool:
        """The draft is the segment's transcript (its silence became the pause)."""
        if self.draft is None:
            return False
        self.segments.append(self.draft)
        self.draft = None
        return True

    def drop_draft(self) -> None:
        if self.draft is not None:
            self.draft.cancel()
            self.draft = None

    def cancel_speculation(self) -> None:
        if self.speculation is not None:
            self.speculation.cancel("turn_detected")
            self.speculation = None

    def cancel_judgment(self) -> None:
        if self.judgment is not None:
            self.judgment.cancel()
            self.judgment = None

    def abandon(self) -> None:
        """The turn is gone (cleared, detection changed, the client left): nothing of it runs."""
        self.cancel_speculation()
        self.cancel_judgment()
        self.drop_draft()
        for task in self.segments:
            task.cancel()

    def commit(self) -> asyncio.Task[str]:
        """The segments are all cut: the turn's transcript is theirs, joined."""
        self.transcript = self._spawn(self.join_transcripts()(), "transcript")
        return self.transcript

    def join_transcripts(self) -> Callable[[], Awaitable[str]]:
        """The text of :meth:`joined_segments`."""
        segments = self.joined_segments()

        async def text() -> str:
            return (await segments()).text

        return text

    def joined_segments(self) -> Callable[[], Awaitable[Transcript]]:
        """The ASR of the segments cut so far, joined in order, for whoever awaits it later. The
        segments are fixed now; the coroutine is made only when called, so a response cancelled
        before it ran leaves none un-awaited. Shielded: a cancelled speculation must not cancel
        segments the turn still needs."""
        segments = list(self.segments)

        async def join() -> Transcript:
            return joined(await asyncio.gather(*(asyncio.shield(task) for task in segments)))

        return join

    def last_segment_ms(self) -> float | None:
        if not self.segments or not self.segments[-1].done() or self.segments[-1].cancelled():
            return None
        exc = self.segments[-1].exception()
        return None if exc else round(self.segments[-1].result().inference_ms, 1)

    def user_input(self) -> UserInput:
        """The reply's view of the turn: the transcript so far, or the whole turn's once committed."""
        transcript = self.transcript
        return UserInput(
            item_id=self.item_id,
            transcript=(lambda: asyncio.shield(transcript)) if transcript is not None else self.join_transcripts(),
            speech_end=self.user.speech_end,
            asr_last_segment_ms=self.last_segment_ms,
        )


class VoiceTurns:
    """The session's spoken turns: audio in, turn events out to the turn in progress."""

    def __init__(self, *, session_id: str, tracker: TurnTracker,
                 transcribe: Callable[[np.ndarray, str | None, float], Awaitable[Transcript]],
                 settings: Callable[[], SessionSettings], end_of_turn: semantic.EndOfTurnModel | None,
                 responses: ResponseQueue, conversation: Conversation, partials: PartialTranscripts,
                 speech_prefill: SpeechPrefill | None, metrics: SessionMetrics,
                 emit: Callable[[protocol.ServerEvent], None], spawn: Callable[[Awaitable[Any], str], asyncio.Task]):
        self.id = session_id
        self.tracker = tracker
        self._transcribe_at = transcribe
        self._settings = settings
        self.end_of_turn = end_of_turn
        self.responses = responses
        self.conversation = conversation
        self.partials = partials
        self.speech_prefill = speech_prefill
        self.metrics = metrics
        self._emit = emit
        self._spawn = spawn
        self.current: VoiceTurn | None = None  # the turn in progress
        self.committed = 0

    def _transcribe(self, pcm: np.ndarray, due: float) -> Awaitable[Transcript]:
        return self._transcribe_at(pcm, self._settings().language, due)

    # --- what the session asks ----------------------------------------------------------------

    async def append(self, pcm16: np.ndarray, arrived: float) -> None:
        self.handle(await self.tracker.append(pcm16, arrived))
        if self._settings().wants_partials or self._prefills():
            self.partials.on_audio(self.tracker.turn, self.tracker.timeline)

    def commit(self) -> None:
        """``input_audio_buffer.commit``."""
        self.handle([self.tracker.commit()])

    def clear(self) -> None:
        """``input_audio_buffer.clear``."""
        self._drop(self.tracker.clear())

    def configure(self, settings: SessionSettings) -> None:
        """After ``session.update``: the tracker's rate and detection (a turn may be dropped)."""
        self.tracker.set_input_rate(settings.input_rate_hz)
        self.tracker.cut_at_pauses = not settings.sequential
        self._drop(self.tracker.set_detection(settings.turn_detection))

    def abandon(self) -> None:
        """Drop the turn in progress, if any (the client left)."""
        self._drop(self.tracker.abandon())

    def _drop(self, user: UserTurn | None) -> None:
        """The tracker dropped ``user`` (None: nothing): none of its work goes on."""
        if user is None:
            return
        voice, self.current = self.current, None
        self.partials.drop(user.item_id)
        self._stop_prefill()
        if voice is not None and voice.user is user:
            voice.abandon()

    def _prefills(self) -> bool:
        """Whether the reply's prompt is prefilled from partial transcripts (prefill.py)."""
        settings = self._settings()
        return self.speech_prefill is not None and settings.responds and settings.turn_detection is not None

    def _stop_prefill(self) -> None:
        if self.speech_prefill is not None:
            self.speech_prefill.stop()

    # --- turn events --------------------------------------------------------------------------

    def _voice_of(self, user: UserTurn) -> VoiceTurn:
        if self.current is None or self.current.user is not user:
            self.current = VoiceTurn(user, self._spawn)  # a commit may make a turn of no speech
        return self.current

    def handle(self, events: list[TurnEvent]) -> None:
        settings = self._settings()
        for turn_event in events:
            voice = self._voice_of(turn_event.turn)
            match turn_event:
                case TurnStarted(audio_start_ms=start_ms):
                    self.responses.interrupt()
                    self._emit(protocol.SpeechStartedEvent(audio_start_ms=start_ms, item_id=voice.item_id))
                case SegmentDraft(pcm=pieces):
                    self._draft(voice, pieces)
                case DraftDropped():
                    voice.drop_draft()
                case SegmentCut(pcm=pieces, pause=pause, drafted=drafted):
                    if not (drafted and voice.keep_draft()):  # else transcribed since the first silence
                        voice.drop_draft()
                        voice.transcribe(self._transcribe, pieces)
                    if pause and settings.responds:
                        self._stop_prefill()  # the reply's own request evaluates from here on
                        voice.speculation = self.responses.start_voice(voice.user_input(), speculative=True)
                    if pause and self._semantic():
                        voice.judgment = self._spawn(self._judge(voice, pieces), "turn-judgment")
                case TurnResumed():
                    voice.cancel_speculation()
                    voice.cancel_judgment()
                case SpeechEnded(audio_end_ms=end_ms):
                    self._emit(protocol.SpeechStoppedEvent(audio_end_ms=end_ms, item_id=voice.item_id))
                case TurnCommitted():
                    self.current = None
                    self._commit(voice, turn_event)

    def _draft(self, voice: VoiceTurn, pieces: list[np.ndarray]) -> None:
        """The open segment's ASR from its first silence, due when that silence would be the
        pause: at a real pause the last segment's transcript is ready that much sooner."""
        voice.drop_draft()
        vad = self._settings().turn_detection
        if len(pieces) != 1 or vad is None:
            return
        voice.start_draft(self._transcribe, pieces[0], time.time() + max(vad.pause_ms - vad.early_asr_ms, 0) / 1000)

    def _semantic(self) -> bool:
        vad = self._settings().turn_detection
        return self.end_of_turn is not None and vad is not None and vad.type == "semantic_vad"

    async def _judge(self, voice: VoiceTurn, segment: list[np.ndarray]) -> None:
        """Is the turn complete at this pause? Yes: it ends now. Unsure: it ends after the short
        wait unless speech resumes. No: the cap will end it. The audio model hears the speech
        since the previous pause (``segment``), beside the ASR of that segment: measured on the
        labeled set, a pause inside its window makes it call finished utterances unfinished."""
        pcm = np.concatenate(segment) if segment else np.zeros(0, dtype=np.float32)
        try:
            assert self.end_of_turn is not None  # judged only where _semantic()
            decision = await semantic.judge(self.end_of_turn, pcm, voice.joined_segments(),
                                            self._settings().turn_detection)
        except Exception:  # noqa: BLE001 - a failed judgment leaves the turn to the cap
            logger.warning("[%s] end-of-turn judgment failed; waiting for the cap", self.id, exc_info=True)
            return
        voice.decision = decision
        if decision.wait_ms is not None:  # once the pause has lasted wait_ms (now, if it has)
            self.handle(self.tracker.end_turn_after(voice.user, decision.wait_ms))
        elif decision.complete:
            voice.decided_at = time.perf_counter()
            self.handle(self.tracker.end_turn(voice.user))

    def _commit(self, voice: VoiceTurn, committed: TurnCommitted) -> None:
        now = time.perf_counter()
        settings = self._settings()
        if voice.judgment is not None and voice.decided_at is None:
            voice.cancel_judgment()  # the cap or a commit came first
        if committed.reason != "vad":
            voice.cancel_speculation()  # a commit is not the pause the speculation bet on
        voice.drop_draft()  # a commit before the pause: its tail is transcribed whole
        if committed.reason == "max_turn":
            logger.info("[%s] turn reached max_turn_s; ending it", self.id)
        if voice.speculation is None:
            voice.transcribe(self._transcribe, committed.tail)
        self.committed += 1
        self.metrics.turn_committed()
        transcript = voice.commit()
        self.partials.stop(voice.item_id)
        self._stop_prefill()
        # The user's place in the conversation is fixed now; the text comes with the transcript.
        item = protocol.user_audio_item(voice.item_id, None, "in_progress")
        previous = self.conversation.insert(item)
        self._emit(protocol.InputAudioBufferCommitted(item_id=voice.item_id, previous_item_id=previous))
        self._emit(protocol.ConversationItemAdded(item=item, previous_item_id=previous))
        self._spawn(self._finish_user_item(voice.item_id, transcript, committed.duration_s), "user-item")
        if not settings.responds:
            return
        # Started at the last pause (speculative) or, e.g. in the sequential baseline, only now.
        response = voice.speculation or self.responses.start_voice(voice.user_input(), speculative=False)
        voice.speculation = None
        signal = semantic.end_signal(settings.turn_detection, committed.reason, voice.decision,
                                     waited=voice.user.waited)
        response.timings.turn_decision = voice.decided_at or now
        response.add_metadata(turn_decision=signal)
        self.responses.show(response, turn_detected=now)

    async def _finish_user_item(self, item_id: str, transcript: Awaitable[str], duration_s: float) -> None:
        try:
            text = await transcript
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported once, on the item
            self.partials.drop(item_id)
            logger.warning("[%s] transcription of %s failed: %r", self.id, item_id, exc)
            self.metrics.error(errors.TranscriptionFailed.code)
            failure = errors.TranscriptionFailed("transcription of the user's audio failed")
            self._emit(protocol.InputAudioTranscriptionFailed(item_id=item_id,
                                                              error=protocol.error_body(failure)))
            self._user_item_done(protocol.user_audio_item(item_id, None, "incomplete"))
            return
        self.partials.finish(item_id, text)
        self._emit(protocol.InputAudioTranscriptionCompleted(
            item_id=item_id, transcript=text,
            usage=protocol.TranscriptionUsage(seconds=round(max(duration_s, 0.0), 3))))
        self._user_item_done(protocol.user_audio_item(item_id, text))
        logger.info("[%s] user: %s", self.id, text)

    def _user_item_done(self, item: protocol.MessageItem) -> None:
        # A user item the client deleted meanwhile stays deleted (no event would bring it back).
        if self.conversation.update(item):
            self._emit(protocol.ConversationItemDone(item=item, previous_item_id=self.conversation.previous_id(item.id)))
