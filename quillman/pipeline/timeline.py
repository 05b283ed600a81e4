"""The session's input audio at 16 kHz on one timeline of absolute sample indexes."""

from __future__ import annotations

import bisect
import time

import numpy as np

from quillman.engines.asr.base import ASR_SAMPLE_RATE_HZ


class AudioTimeline:
    """The session's input audio at 16 kHz, addressed by absolute sample index.

    Appends are O(1): chunks are kept as they came and joined only for the range a slice asks
    for. Also remembers when each chunk arrived, to turn a sample index (the end of speech) into
    the wall-clock instant it reached the server: the origin of every latency we report.
    """

    def __init__(self, keep_s: float = 60.0):
        self._chunks: list[np.ndarray] = []
        self._starts: list[int] = []  # absolute index of each chunk's first sample
        self._arrivals: list[float] = []  # perf_counter instant each chunk arrived
        self._head = 0  # chunks before this index are forgotten (compacted lazily)
        self.start = 0  # absolute index of the first kept sample
        self.end = 0  # absolute index after the last sample
        self._keep = int(keep_s * ASR_SAMPLE_RATE_HZ)

    def append(self, pcm: np.ndarray, arrived: float) -> None:
        if len(pcm) == 0:
            return
        self._chunks.append(pcm)
        self._starts.append(self.end)
        self._arrivals.append(arrived)
        self.end += len(pcm)

    def _chunk_at(self, sample: int) -> int:
        return max(self._head, bisect.bisect_right(self._starts, sample, lo=self._head) - 1)

    def slice(self, start: int, end: int) -> np.ndarray:
        start, end = max(start, self.start), min(end, self.end)
        if end <= start:
            return np.zeros(0, dtype=np.float32)
        first, last = self._chunk_at(start), self._chunk_at(end - 1)
        data = self._chunks[first] if first == last else np.concatenate(self._chunks[first:last + 1])
        offset = self._starts[first]
        return data[start - offset:end - offset]

    def arrival_of(self, sample: int) -> float:
        """When the chunk holding ``sample`` arrived (the last chunk's arrival past the end)."""
        if len(self._chunks) == self._head:
            return time.perf_counter()
        return self._arrivals[self._chunk_at(min(max(sample - 1, self.start), self.end - 1))]

    def trim_before(self, sample: int) -> None:
        """Forget audio before ``sample`` (bounded memory), keeping at most ``keep_s`` anyway."""
        sample = min(max(sample, self.end - self._keep), self.end)
        if sample <= self.start:
            return
        self.start = sample
        # Whole chunks before ``sample`` go; the one holding it stays (its start is before).
        while self._head < len(self._chunks) - 1 and self._starts[self._head + 1] <= sample:
            self._chunks[self._head] = None  # type: ignore[call-overload]
            self._head += 1
        if self._head > 64 and self._head * 2 > len(self._chunks):
            del self._chunks[:self._head], self._starts[:self._head], self._arrivals[:self._head]
            self._head = 0
