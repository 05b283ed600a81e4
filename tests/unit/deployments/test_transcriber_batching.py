"""The Transcriber deployment's two paths, driven without a Ray cluster.

Engines with ``transcribe_batch`` go through ``@serve.batch`` (concurrent segments decoded
together, batch limits from AsrConfig); others keep the one-call-per-segment path.
"""

from __future__ import annotations

import asyncio
import threading
import types

import numpy as np
from ray import serve

from quillman.config import AsrConfig
from quillman.deployments import transcriber as transcriber_module
from quillman.engines.asr.base import ASR_SAMPLE_RATE_HZ, Transcript

TranscriberClass = transcriber_module.Transcriber.func_or_class


def _transcript(pcm: np.ndarray, language: str | None, batch: int) -> Transcript:
    return Transcript(text=f"{len(pcm)}/{batch}", language=language,
                      audio_s=len(pcm) / ASR_SAMPLE_RATE_HZ, inference_ms=1.0)


class SingleEngine:
    """Like faster-whisper: no transcribe_batch."""

    def __init__(self):
        self.calls: list[tuple[int, str | None]] = []

    def transcribe(self, pcm, language=None):
        self.calls.append((len(pcm), language))
        return _transcript(pcm, language, 1)


class BatchEngine(SingleEngine):
    def __init__(self):
        super().__init__()
        self.batches: list[tuple[list[int], str | None]] = []
        self.threads: set[str] = set()

    def transcribe_batch(self, pcms, language=None):
        self.threads.add(threading.current_thread().name)
        self.batches.append(([len(p) for p in pcms], language))
        return [_transcript(p, language, len(pcms)) for p in pcms]


async def _make(engine, **config) -> object:
    # As Serve builds a replica with an async constructor: __new__, then await __init__.
    replica = TranscriberClass.__new__(TranscriberClass)
    await replica.__init__(AsrConfig(**config), engine_factory=lambda cfg: engine)
    return replica


async def test_engines_without_batching_keep_the_single_path():
    engine = SingleEngine()
    replica = await _make(engine, language="en")
    assert replica.batched is False
    result = await replica.transcribe(np.zeros(1600, np.float32))
    assert result.text == "1600/1" and result.language == "en"
    assert engine.calls[-1] == (1600, "en")


async def test_concurrent_segments_are_batched_in_order_and_grouped_by_language(monkeypatch):
    # @serve.batch reads max_ongoing_requests from the replica context; give it one.
    context = types.SimpleNamespace(_deployment_config=types.SimpleNamespace(max_ongoing_requests=16))
    monkeypatch.setattr(serve, "get_replica_context", lambda: context)
    engine = BatchEngine()
    replica = await _make(engine, backend="transformers", language="en",
                    max_batch_size=4, batch_wait_timeout_s=0.2)
    assert replica.batched is True
    assert replica._transcribe_batched._get_max_batch_size() == 4
    assert replica._transcribe_batched._get_batch_wait_timeout_s() == 0.2

    sizes = [100, 200, 300, 400, 500, 600]
    languages = ["en", "de", None, "en", "en", "de"]
    results = await asyncio.gather(
        *(replica.transcribe(np.zeros(n, np.float32), lang) for n, lang in zip(sizes, languages))
    )
    # Each caller gets its own segment's transcript back, with its language (None -> config).
    assert [r.text.split("/")[0] for r in results] == [str(n) for n in sizes]
    assert [r.language for r in results] == ["en", "de", "en", "en", "en", "de"]
    # Batches never exceed max_batch_size, hold one language each, and did batch.
    assert all(len(b) <= 4 for b, _ in engine.batches)
    assert sum(len(b) for b, _ in engine.batches) == len(sizes)
    assert max(len(b) for b, _ in engine.batches) > 1
    for lengths, language in engine.batches:
        assert {languages[sizes.index(n)] or "en" for n in lengths} == {language}
    # Inference ran off the event loop.
    assert threading.main_thread().name not in engine.threads
