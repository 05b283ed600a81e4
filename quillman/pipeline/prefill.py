"""The reply's prompt evaluated while the user is still speaking.

At the end of a turn the LLM's first token waits for the prompt's new part (the user's words) to
be evaluated: ~7 ms a token on one core here, ~150-250 ms for a question. While the user speaks,
the turn so far is transcribed every ``partial_transcript_interval_ms``
(:class:`~quillman.pipeline.transcription.PartialTranscripts`); each hypothesis, less its newest
word (it may be cut off), is sent as a *prefill* of the prompt the reply will have. The engine
keeps it in the session's cache (``Capabilities.prefill``), so the reply evaluates only the words
after the longest common prefix. A prefill is bulk work: the engine runs it only when no token
is due, a real request takes its slot at once, and a stale one is dropped, never queued.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from quillman.engines.llm.base import GenerationRequest, Usage

logger = logging.getLogger(__name__)

MIN_WORDS = 2  # fewer heard words are not worth a request


class SpeechPrefill:
    """One prefill in flight per session; a newer hypothesis supersedes the one before."""

    def __init__(self, prefill: Callable[[GenerationRequest], Awaitable[Usage | None]],
                 spawn: Callable[[Awaitable, str], asyncio.Task],
                 request_for: Callable[[str, str], GenerationRequest | None]):
        self._prefill = prefill
        self._spawn = spawn
        self._request_for = request_for  # (user item id, words heard) -> the reply's request, or None
        self._task: asyncio.Task | None = None

    def heard(self, item_id: str, hypothesis: str) -> None:
        words = hypothesis.split()[:-1]
        if len(words) < MIN_WORDS:
            return
        request = self._request_for(item_id, " ".join(words))
        if request is None:
            return
        self.stop()
        self._task = self._spawn(self._run(request), "llm-prefill")

    async def _run(self, request: GenerationRequest) -> None:
        try:
            usage = await self._prefill(request)
        except Exception as exc:  # noqa: BLE001 - best effort: the reply evaluates its prompt anyway
            logger.info("[%s] prefill failed: %r", request.session_id, exc)
            return
        if usage is not None:
            logger.debug("[%s] prefilled %d tokens (%d cached)", request.session_id,
                         usage.input_tokens, usage.cached_tokens)

    def stop(self) -> None:
        """The turn is decided (or gone): its reply's own request takes over."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
