"""The three model deployments built as Serve builds them, with fake engine factories, no Ray.

Serve constructs a replica whose class has an async constructor with ``__new__`` and then
``await __init__(...)``; so does :func:`construct`. The factory is what the deployment loads its
engine with (``quillman.engines.loader`` in production).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import numpy as np
import pytest

from quillman.config import AsrConfig, LlmConfig, TtsConfig
from quillman.deployments.health import plain_reason
from quillman.deployments.language_model import LanguageModel
from quillman.deployments.speaker import Speaker
from quillman.deployments.transcriber import Transcriber
from quillman.engines import loader
from quillman.engines.asr.base import Transcript
from quillman.scheduling import QueueWait
from quillman.engines.llm.base import GenerationParams, GenerationRequest
from quillman.engines.tts.base import AudioChunk
from quillman.errors import StartupTimeoutError
from tests.unit.conftest import until

pytestmark = pytest.mark.usefixtures("hang_guard")

TRANSCRIBER = Transcriber.func_or_class
LANGUAGE_MODEL = LanguageModel.func_or_class
SPEAKER = Speaker.func_or_class


async def construct(cls, config, factory):
    replica = cls.__new__(cls)
    await replica.__init__(config, engine_factory=factory)
    return replica


class FakeRecognizer:
    def __init__(self, transcribe_s: float = 0.0):
        self.transcribe_s = transcribe_s
        self.calls: list[tuple[int, str | None]] = []
        self.threads: set[str] = set()

    def transcribe(self, pcm, language=None):
        self.threads.add(threading.current_thread().name)
        self.calls.append((len(pcm), language))
        time.sleep(self.transcribe_s)  # the inference's length (the warm-up's, for the startup timeout)
        return Transcript(text="hello", language=language, audio_s=len(pcm) / 16000, inference_ms=1.0)


class FakeLanguageModel:
    def __init__(self):
        self.calls: list[GenerationParams] = []

    async def stream(self, request):
        self.calls.append(request.params)
        for piece in ["Hi", " there."]:
            yield piece


class FakeSynthesizer:
    voices = ["joe", "amy"]

    def __init__(self):
        self.texts: list[str] = []

    def synthesize(self, text, voice=None):
        self.texts.append(text)
        yield AudioChunk(np.zeros(160, np.int16), 16000)


def factory_of(engine, load_s: float = 0.0, calls: list | None = None):
    def factory(config):
        if calls is not None:
            calls.append((config, threading.current_thread().name))
        time.sleep(load_s)  # the load's length: what the startup timeout and load_s measure
        return engine
    return factory


async def collect(stream) -> list:
    return [item async for item in stream]


# --- the factory ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "default"), [
    (TRANSCRIBER, loader.load_recognizer),
    (LANGUAGE_MODEL, loader.load_language_model),
    (SPEAKER, loader.load_synthesizer),
])
def test_the_default_engine_factory_is_the_loader(cls, default):
    import inspect

    assert inspect.iscoroutinefunction(cls.__init__)
    assert inspect.signature(cls.__init__).parameters["engine_factory"].default is default


@pytest.mark.parametrize(("cls", "config", "engine"), [
    (TRANSCRIBER, AsrConfig(model="tiny-test"), FakeRecognizer()),
    (LANGUAGE_MODEL, LlmConfig(model="llm-test"), FakeLanguageModel()),
    (SPEAKER, TtsConfig(model="voice-test"), FakeSynthesizer()),
], ids=["Transcriber", "LanguageModel", "Speaker"])
async def test_the_factory_builds_the_engine_off_the_event_loop(cls, config, engine):
    calls: list = []
    replica = await construct(cls, config, factory_of(engine, calls=calls))
    assert replica.engine is engine
    [(given, thread)] = calls
    assert given == config  # the validated config of the stage
    assert thread != threading.current_thread().name
    replica.check_health()  # an engine is loaded
    assert await replica.ping() == "ok"


async def test_a_config_dict_is_validated_before_the_factory_sees_it():
    calls: list = []
    await construct(TRANSCRIBER, {"model": "tiny-test", "language": "de"}, factory_of(FakeRecognizer(), calls=calls))
    assert isinstance(calls[0][0], AsrConfig) and calls[0][0].language == "de"


async def test_a_blocking_load_does_not_block_the_event_loop():
    loop = asyncio.get_running_loop()
    ran: list[str] = []

    async def on_the_loop() -> None:
        ran.append("loop")

    def load(config):
        # The load blocks its thread until the loop has run a coroutine: it could not, were
        # the loop the one waiting for the load.
        asyncio.run_coroutine_threadsafe(on_the_loop(), loop).result(timeout=5)
        return FakeSynthesizer()

    await construct(SPEAKER, TtsConfig(), load)
    assert ran == ["loop"]  # the loop ran on while the factory blocked


async def test_an_error_of_the_factory_is_raised_as_is():
    def broken(config):
        raise ValueError("Failed to load model from file: /tmp/broken.gguf")

    with pytest.raises(ValueError, match="broken.gguf"):
        await construct(LANGUAGE_MODEL, LlmConfig(), broken)


async def test_a_timeout_of_the_engines_own_is_not_a_startup_timeout():
    def slow_network(config):
        raise TimeoutError("the model server did not answer")

    with pytest.raises(TimeoutError, match="the model server did not answer") as info:
        await construct(LANGUAGE_MODEL, LlmConfig(), slow_network)
    assert not isinstance(info.value, StartupTimeoutError)


# --- the startup timeout -------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "config", "setting"), [
    (TRANSCRIBER, AsrConfig(startup_timeout_s=0.2), "asr.startup_timeout_s"),
    (LANGUAGE_MODEL, LlmConfig(startup_timeout_s=0.2), "llm.startup_timeout_s"),
    (SPEAKER, TtsConfig(startup_timeout_s=0.2), "tts.startup_timeout_s"),
], ids=["Transcriber", "LanguageModel", "Speaker"])
async def test_a_load_that_takes_too_long_fails_the_constructor_with_a_plain_message(cls, config, setting):
    release = threading.Event()

    def hangs(config):
        release.wait(10)  # a load that blocks its thread

    start = time.perf_counter()
    try:
        with pytest.raises(StartupTimeoutError) as info:
            await construct(cls, config, hangs)
        assert time.perf_counter() - start < 2  # given up at the timeout, not when the load returns
    finally:
        release.set()  # let the thread end before the event loop closes (it waits for it)
    message = str(info.value)
    name = cls.__name__
    assert message.startswith(f"{name} did not start within 0.2 s ({setting}): still loading the engine")
    assert f"raise {setting}" in message
    assert info.value.__cause__ is None and info.value.__context__ is None  # no asyncio noise


async def test_a_warm_up_that_takes_too_long_is_a_startup_timeout_too():
    engine = FakeRecognizer(transcribe_s=1.0)
    with pytest.raises(StartupTimeoutError, match=r"Transcriber did not start within 0\.3 s .*still warming up"):
        await construct(TRANSCRIBER, AsrConfig(startup_timeout_s=0.3), factory_of(engine))
    assert engine.calls  # the load was done; the warm-up was running


async def test_the_timeout_covers_load_and_warm_up_together():
    engine = FakeRecognizer(transcribe_s=0.15)
    with pytest.raises(StartupTimeoutError, match="still warming up"):
        await construct(TRANSCRIBER, AsrConfig(startup_timeout_s=0.25), factory_of(engine, load_s=0.15))


def test_serves_record_of_a_startup_timeout_keeps_our_message():
    """What /healthz shows: Serve's summary and our error line, without Ray's internals."""
    ours = ("Speaker did not start within 600 s (tts.startup_timeout_s): still loading the engine (joe); "
            "raise tts.startup_timeout_s if it needs longer, or run `quillman doctor` on the server to see why")
    serve_message = (
        "The deployment failed to start 3 times in a row. This may be due to a problem with its "
        "constructor or initial health check failing. See controller logs for details. Error:\n"
        "ray::ServeReplica:quillman:Speaker.initialize_and_get_metadata() (pid=1, ip=192.0.2.2, "
        "actor_id=300b9f4b3937709, repr=<ray.serve._private.replica.ServeReplica object at 0x7f>)\n"
        "Traceback (most recent call last):\n  File \"/x/common.py\", line 1, in _start\n"
        f"quillman.errors.StartupTimeoutError: {ours}\n")
    reason = plain_reason(serve_message)
    assert reason.endswith(f"Last error: quillman.errors.StartupTimeoutError: {ours}")
    assert "pid=" not in reason and "192.0.2.2" not in reason


# --- warm-up and the "ready" line ----------------------------------------------------------------


@pytest.mark.parametrize(("cls", "config", "engine"), [
    (TRANSCRIBER, AsrConfig(model="tiny-test"), FakeRecognizer()),
    (LANGUAGE_MODEL, LlmConfig(model="llm-test"), FakeLanguageModel()),
    (SPEAKER, TtsConfig(model="voice-test"), FakeSynthesizer()),
], ids=["Transcriber", "LanguageModel", "Speaker"])
async def test_startup_loads_warms_up_and_logs_one_ready_line(cls, config, engine, caplog):
    with caplog.at_level(logging.INFO, logger="quillman.deployments.common"):
        replica = await construct(cls, config, factory_of(engine, load_s=0.05))
    assert replica.load_s >= 0.05 and isinstance(replica.load_s, float)
    assert replica.warm_ms >= 0
    ready = [r.getMessage() for r in caplog.records if "ready:" in r.getMessage()]
    assert ready == [f"{cls.__name__} ready: load {replica.load_s:.2f} s, warm-up {replica.warm_ms:.0f} ms"]


async def test_each_engine_got_its_warm_up_inference():
    recognizer, llm, tts = FakeRecognizer(), FakeLanguageModel(), FakeSynthesizer()
    await construct(TRANSCRIBER, AsrConfig(language="de"), factory_of(recognizer))
    await construct(LANGUAGE_MODEL, LlmConfig(), factory_of(llm))
    await construct(SPEAKER, TtsConfig(), factory_of(tts))
    assert recognizer.calls == [(8000, "de")]  # half a second of silence, in the stage's language
    assert threading.current_thread().name not in recognizer.threads
    assert [p.max_tokens for p in llm.calls] == [4]
    assert tts.texts == ["Hello there."]


async def test_a_batching_transcriber_says_so_in_its_ready_line(caplog):
    class BatchRecognizer(FakeRecognizer):
        def transcribe_batch(self, pcms, language=None):
            return [self.transcribe(p, language) for p in pcms]

    with caplog.at_level(logging.INFO, logger="quillman.deployments.common"):
        replica = await construct(TRANSCRIBER, AsrConfig(backend="transformers", max_batch_size=3),
                                  factory_of(BatchRecognizer()))
    assert replica.batched
    assert any(r.getMessage().endswith("ms, batches of up to 3") for r in caplog.records)


async def test_warmup_reports_the_load_and_a_fresh_warm_up():
    engine = FakeSynthesizer()
    replica = await construct(SPEAKER, TtsConfig(model="voice-test"), factory_of(engine))
    result = await replica.warmup()
    assert result == {"load_s": replica.load_s, "warm_ms": replica.warm_ms, "model": "voice-test"}
    assert engine.texts == ["Hello there.", "Hello there."]  # startup's and this one


async def test_health_fails_without_an_engine():
    replica = SPEAKER.__new__(SPEAKER)
    with pytest.raises(RuntimeError, match="Speaker: engine not loaded"):
        replica.check_health()


async def test_the_deployments_still_serve_with_the_injected_engine():
    llm = await construct(LANGUAGE_MODEL, LlmConfig(), factory_of(FakeLanguageModel()))
    assert [d async for d in llm.generate(GenerationRequest([{"role": "user", "content": "hi"}], GenerationParams(max_tokens=8, temperature=0.0, top_p=1.0)))] == ["Hi", " there."]
    tts = await construct(SPEAKER, TtsConfig(), factory_of(FakeSynthesizer()))
    wait, *chunks = [c async for c in tts.synthesize("Hello.", "joe", 24000)]
    assert isinstance(wait, QueueWait) and wait.ms >= 0
    assert len(chunks) == 1 and len(chunks[0]) == 240  # resampled 16 -> 24 kHz
    assert await tts.voices() == ["joe", "amy"]


async def test_a_later_sentence_gives_way_to_critical_work_and_a_first_one_is_critical(tmp_path):
    """The machine's priority rule in the Speaker: a sentence due later waits while another
    stage does critical work; the first chunk (due now) holds a critical section while it runs."""
    from quillman.priority import NodePriority

    held_during: list[int] = []
    speaker_priority = NodePriority(tmp_path, name="speaker")

    class Recording(FakeSynthesizer):
        def synthesize(self, text, voice=None):
            held_during.append(speaker_priority.held)
            yield from super().synthesize(text, voice)

    replica = await construct(SPEAKER, TtsConfig(), factory_of(Recording()))
    replica._priority = speaker_priority
    other_stage = NodePriority(tmp_path, name="asr")
    try:
        [c async for c in replica.synthesize("Now.", "joe", 24000, time.time())]
        assert held_during[-1] == 1 and replica._priority.held == 0

        release = asyncio.Event()

        async def critical_until_released() -> None:
            with other_stage.critical():
                await release.wait()

        looked: list[float] = []  # when the Speaker looked for critical work on the machine
        machine_busy = speaker_priority.busy

        def busy(include_self: bool = True) -> bool:
            looked.append(time.monotonic())
            return machine_busy(include_self)

        speaker_priority.busy = busy  # type: ignore[method-assign]
        holder = asyncio.create_task(critical_until_released())
        await asyncio.sleep(0)  # a step: the other stage holds its critical section
        later = asyncio.ensure_future(collect(replica.synthesize("Later.", "joe", 24000, time.time() + 5)))
        await until(lambda: len(looked) >= 3)  # the sentence waits, looking again and again
        assert not later.done()
        released_at = time.monotonic()
        release.set()
        await holder
        wait, *_ = await asyncio.wait_for(later, 5)
        # It waited for the other stage's critical work to end: at least from its first look on.
        assert wait.ms >= round((released_at - looked[0]) * 1000, 1) - 0.1
        assert held_during[-1] == 0  # and was not critical itself
    finally:
        replica._priority.close()
        other_stage.close()
