"""The spoken side of one reply: its text cut in sentences, each sentence synthesized while the
ones before it play (up to ``tts_concurrency`` at once), the audio in sentence order in chunks
of ``output_chunk_ms``; each sentence is due at TTS when the audio before it will have played.
"""

from __future__ import annotations

import time
from contextlib import aclosing
from typing import AsyncGenerator, AsyncIterator, Callable, TypeVar

import numpy as np

from quillman.pipeline.backends import Backends
from quillman.pipeline.fanout import ordered_fanout
from quillman.pipeline.model_timeout import each_within
from quillman.pipeline.sentences import SentenceSplitter, split_stream
from quillman.pipeline.settings import ResponseSettings
from quillman.pipeline.timings import Timings
from quillman.scheduling import QueueWait, speech_seconds_estimate

T = TypeVar("T")


class ReplySpeech:
    """Text deltas (``FLUSH`` ends a sentence early) in, the reply's audio chunks out."""

    def __init__(self, backends: Backends, settings: ResponseSettings, timings: Timings,
                 playback_start: Callable[[], float | None]):
        self.backends = backends
        self.settings = settings
        self.timings = timings
        self._playback_start = playback_start  # Unix time the client started playing the reply
        # The audio seconds (estimated until synthesized) of each sentence sent to TTS so far.
        self._sentence_s: list[float] = []

    async def chunks(self, text: AsyncIterator[str]) -> AsyncGenerator[np.ndarray, None]:
        settings = self.settings
        knobs = settings.pipeline
        splitter = SentenceSplitter(knobs.first_chunk_min_words, knobs.first_chunk_max_words, knobs.max_chunk_words)
        chunk_samples = max(1, settings.output_rate_hz * knobs.output_chunk_ms // 1000)
        sentences = split_stream(text, splitter)
        if settings.sequential:
            sentences = _whole_text(sentences)
        fanout = ordered_fanout(
            _numbered(sentences), self._synthesize, knobs.tts_concurrency,
            on_item_start=self._sentence_started, head_start=True,
        )
        try:
            async for _, _, pcm in fanout:
                for start in range(0, len(pcm), chunk_samples):
                    yield pcm[start:start + chunk_samples]
        finally:
            await fanout.aclose()

    def _sentence_started(self, index: int, numbered: tuple[int, str]) -> None:
        sentence = numbered[1]
        if index == 0:
            self.timings.first_sentence = self.timings.first_sentence_tts_started = time.perf_counter()
        self._sentence_s.append(speech_seconds_estimate(sentence))

    def _deadline(self, index: int) -> float:
        """When sentence ``index`` must start playing: the first is due now; a later one when
        the audio before it has played (the client plays from the reply's first delta)."""
        now, playback_start = time.time(), self._playback_start()
        if index == 0 or playback_start is None:
            return now
        return max(now, playback_start + sum(self._sentence_s[:index]))

    async def _synthesize(self, indexed: tuple[int, str]) -> AsyncGenerator[np.ndarray, None]:
        index, sentence = indexed
        rate = self.settings.output_rate_hz
        pcm_s = 0.0
        stream = each_within(self.backends.synthesize(sentence, self.settings.voice, rate, self._deadline(index)),
                             self.settings.pipeline.model_timeout_s)
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


async def _numbered(items: AsyncIterator[T]) -> AsyncGenerator[tuple[int, T], None]:
    # Closed with this generator (aclosing): a consumer that stops early (a failed synthesis)
    # closes the whole chain down to the LLM stream at once, not when it is garbage collected.
    async with aclosing(items) as source:  # type: ignore[type-var]
        index = 0
        async for item in source:
            yield index, item
            index += 1


async def _whole_text(chunks: AsyncIterator[str]) -> AsyncGenerator[str, None]:
    """All chunks joined: the sequential baseline synthesizes the reply in one call."""
    text = " ".join([chunk async for chunk in chunks])
    if text:
        yield text
