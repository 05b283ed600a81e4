"""Cut a stream of LLM text deltas into chunks worth synthesizing.

The first chunk is cut early, at the first clause boundary after a few words, because its
synthesis time is on the critical path of voice-to-voice latency; later chunks end at sentence
boundaries (better prosody), with a word cap so a run-on sentence does not stall the audio.
"""

from __future__ import annotations

import re
from typing import AsyncIterator, Iterator

_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*(?=\s)")
_CLAUSE_END = re.compile(r"[,;:—–]+(?=\s)|\s[-–—]\s")
_ABBREVIATIONS = {
    "mr.", "mrs.", "ms.", "dr.", "prof.", "sr.", "jr.", "st.", "vs.", "etc.", "e.g.", "i.e.",
    "approx.", "no.", "fig.", "u.s.", "a.m.", "p.m.",
}
_MARKUP = re.compile(r"[*_#`]+")


def clean_for_speech(text: str) -> str:
    """Drop markdown markers the model sometimes emits; they would be read aloud or break TTS."""
    return re.sub(r"\s+", " ", _MARKUP.sub("", text)).strip()


class SentenceSplitter:
    def __init__(self, first_min_words: int = 4, first_max_words: int = 12, max_words: int = 40):
        self.first_min_words = first_min_words
        self.first_max_words = first_max_words
        self.max_words = max_words
        self._buffer = ""
        self._emitted = 0

    def feed(self, delta: str) -> Iterator[str]:
        self._buffer += delta
        while True:
            cut = self._find_cut()
            if cut is None:
                return
            chunk, self._buffer = self._buffer[:cut], self._buffer[cut:].lstrip()
            chunk = clean_for_speech(chunk)
            if chunk:
                self._emitted += 1
                yield chunk

    def flush(self) -> Iterator[str]:
        chunk, self._buffer = clean_for_speech(self._buffer), ""
        if chunk:
            self._emitted += 1
            yield chunk

    def _find_cut(self) -> int | None:
        text = self._buffer
        for match in _SENTENCE_END.finditer(text):
            if not self._is_abbreviation(text, match.start()):
                return match.end()
        words = text.split()
        if self._emitted == 0:
            if len(words) >= self.first_min_words:
                for match in _CLAUSE_END.finditer(text):
                    if len(text[: match.start()].split()) >= self.first_min_words:
                        return match.end()
            if len(words) > self.first_max_words:
                return _word_boundary(text, self.first_max_words)
        elif len(words) > self.max_words:
            clause = [m.end() for m in _CLAUSE_END.finditer(text)]
            return clause[-1] if clause else _word_boundary(text, self.max_words)
        return None

    @staticmethod
    def _is_abbreviation(text: str, dot: int) -> bool:
        words = text[: dot + 1].split()
        return bool(words) and words[-1].lower() in _ABBREVIATIONS


def _word_boundary(text: str, n_words: int) -> int:
    """Index just after the n-th word."""
    for i, match in enumerate(re.finditer(r"\S+", text), start=1):
        if i == n_words:
            return match.end()
    return len(text)


async def split_stream(
    deltas: AsyncIterator[str], splitter: SentenceSplitter
) -> AsyncIterator[str]:
    async for delta in deltas:
        for chunk in splitter.feed(delta):
            yield chunk
    for chunk in splitter.flush():
        yield chunk
