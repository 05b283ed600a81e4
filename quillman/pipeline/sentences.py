"""Cut a stream of LLM text deltas into chunks worth synthesizing.

The first chunk is cut early because its generation and synthesis are on the critical path of
voice-to-voice latency: at the first sentence end, or the first clause mark or phrase boundary
(before a conjunction or relative word: where a speaker may breathe) after
``first_min_words``, and by ``first_max_words`` at the latest, there before the last word that
opens a phrase (a preposition, a copula: "Penguins are found | in the Southern Hemisphere",
not "Penguins are found in the Southern | Hemisphere"). Later chunks end at sentence
boundaries (better prosody), with a word cap so a run-on sentence does not stall the audio.
"""

from __future__ import annotations

import re
from contextlib import aclosing
from typing import AsyncIterator, Iterator

_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*(?=\s)")
_CLAUSE_END = re.compile(r"[,;:—–]+(?=\s)|\s[-–—]\s")
_ABBREVIATIONS = {
    "mr.", "mrs.", "ms.", "dr.", "prof.", "sr.", "jr.", "st.", "vs.", "etc.", "e.g.", "i.e.",
    "approx.", "no.", "fig.", "u.s.", "a.m.", "p.m.",
}
_MARKUP = re.compile(r"[*_#`]+")
# Words a clause may start with: the first chunk may end before one (past first_min_words).
# Not prepositions: "the capital | of France" breaks a noun phrase.
PHRASE_STARTERS = frozenset("""
and but or so because although though while whereas when where which who whose that if unless
until since after before
""".split())
# At the first chunk's cap: words a new phrase starts with (the cut may go before one) ...
PHRASE_HEADS = PHRASE_STARTERS | frozenset("""
of to for with from at by into about on in than through over under between during without like
is are was were can will would should could may might must
""".split())
# ... and words no phrase ends on (the chunk must not end with one).
NO_END = frozenset("""
the a an my your his her our its their this that these those some any no every each very
of to for with from at by into about on in than through over under between during without like
and but or so is are was were
""".split())


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
        # The earliest allowed cut wins, so the result does not depend on how the text was
        # split into deltas (one big delta must give the same chunks as a trickle).
        text = self._buffer
        cuts = []
        for match in _SENTENCE_END.finditer(text):
            if not self._is_abbreviation(text, match.start()):
                cuts.append(match.end())
                break
        words = text.split()
        limit = self.first_max_words if self._emitted == 0 else self.max_words
        if self._emitted == 0:
            for match in _CLAUSE_END.finditer(text):
                if len(text[: match.start()].split()) >= self.first_min_words:
                    cuts.append(match.end())
                    break
            phrase = self._phrase_boundary(text)
            if phrase is not None:
                cuts.append(phrase)
        if len(words) > limit:
            hard = _word_boundary(text, limit)
            if self._emitted > 0:  # prefer the last clause boundary within the cap
                clauses = [m.end() for m in _CLAUSE_END.finditer(text) if m.end() <= hard]
                hard = clauses[-1] if clauses else hard
            elif not any(cut <= hard for cut in cuts):  # the cap decides: not inside a phrase
                hard = self._before_last_phrase(text) or hard
            cuts.append(hard)
        return min(cuts) if cuts else None

    def _phrase_boundary(self, text: str) -> int | None:
        """Just before the first whole phrase-starting word that has at least
        ``first_min_words`` words before it (within the first chunk's cap)."""
        words = list(re.finditer(r"\S+", text))
        for k in range(self.first_min_words, min(len(words), self.first_max_words + 1)):
            whole = k < len(words) - 1 or text[words[k].end():words[k].end() + 1].isspace()
            if whole and words[k].group().lower() in PHRASE_STARTERS:
                return words[k - 1].end()
        return None

    def _before_last_phrase(self, text: str) -> int | None:
        """At the first chunk's cap: just before the last phrase-opening word among the first
        ``first_max_words``, if at least ``first_min_words`` words come before it and the word
        before it can end a phrase. Only whole words are read (the cap's word is followed by
        another), so a trickle and one delta cut alike."""
        words = list(re.finditer(r"\S+", text))[: self.first_max_words]
        bare = [w.group().lower().strip("\"'()[],;:") for w in words]
        for k in range(len(words) - 1, self.first_min_words - 1, -1):
            if bare[k] in PHRASE_HEADS and bare[k - 1] not in NO_END:
                return words[k - 1].end()
        return None

    @staticmethod
    def _is_abbreviation(text: str, dot: int) -> bool:
        words = text[: dot + 1].split()
        return bool(words) and words[-1].lower().lstrip("([{\"'") in _ABBREVIATIONS


def _word_boundary(text: str, n_words: int) -> int:
    """Index just after the n-th word."""
    for i, match in enumerate(re.finditer(r"\S+", text), start=1):
        if i == n_words:
            return match.end()
    return len(text)


FLUSH = "\x00flush"  # a delta that sends the text held so far (a filler before a tool runs)


async def split_stream(
    deltas: AsyncIterator[str], splitter: SentenceSplitter
) -> AsyncIterator[str]:
    async with aclosing(deltas) as source:  # type: ignore[type-var]  # closed with this one
        async for delta in source:
            for chunk in (splitter.flush() if delta is FLUSH else splitter.feed(delta)):
                yield chunk
    for chunk in splitter.flush():
        yield chunk
