"""HandleBackends over fake DeploymentHandles: a request that waits on a stage without running
replicas (its node lost) fails at once with model_unavailable instead of hanging the turn."""

from __future__ import annotations

import asyncio
import types

import numpy as np
import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError

from quillman import errors
from quillman.deployments.ingress import HandleBackends
from quillman.engines.llm.base import GenerationParams, GenerationRequest

pytestmark = pytest.mark.usefixtures("hang_guard")


class Cut:
    """A stream whose replica went away after the first item."""

    def __init__(self, error: Exception):
        self.items = [np.ones(10, np.int16)]
        self.error = error
        self.cancelled = False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.items:
            return self.items.pop(0)
        raise self.error

    def cancel(self):
        self.cancelled = True


class Pending:
    """A DeploymentResponse (awaitable, cancellable) or streaming generator that yields
    ``items`` and then waits forever, like Serve's handle holding a request for a replica."""

    def __init__(self, items=()):
        self.items = list(items)
        self.cancelled = False

    def __await__(self):
        return asyncio.get_running_loop().create_future().__await__()

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.items:
            return self.items.pop(0)
        await asyncio.get_running_loop().create_future()

    def cancel(self):
        self.cancelled = True


class Handle:
    def __init__(self, response: Pending):
        self.response = response
        remote = types.SimpleNamespace(remote=lambda *args: response)
        self.transcribe = self.generate = self.synthesize = remote

    def options(self, **_):
        return self


class Watch:
    """``unavailable(name)`` as DeploymentWatch answers it (the stages in ``down`` have no
    replica), counting the questions so a test can wait for the polls themselves."""

    def __init__(self, down: set[str]):
        self.down = down
        self.asked: list[str] = []
        self._asked = asyncio.Condition()

    async def unavailable(self, name: str) -> bool:
        async with self._asked:
            self.asked.append(name)
            self._asked.notify_all()
        return name in self.down

    async def polls(self, name: str, count: int) -> None:
        """Until ``name``'s stage was asked about ``count`` times."""
        async with self._asked:
            await asyncio.wait_for(self._asked.wait_for(lambda: self.asked.count(name) >= count), 5)


def backends(down: set[str] | Watch, asr=None, llm=None, tts=None) -> HandleBackends:
    watch = down if isinstance(down, Watch) else Watch(down)
    return HandleBackends(Handle(asr or Pending()), Handle(llm or Pending()), Handle(tts or Pending()),
                          watch.unavailable, poll_s=0.01)


async def test_a_transcription_waiting_on_a_stage_without_replicas_fails_as_unavailable():
    response = Pending()
    with pytest.raises(errors.ModelUnavailable, match="speech recognition"):
        await backends({"Transcriber"}, asr=response).transcribe(np.zeros(160, np.float32), "en")
    assert response.cancelled


async def test_a_stream_cut_off_mid_reply_fails_after_what_it_yielded():
    stream = Pending(items=[np.ones(10, np.int16)])
    received = []
    with pytest.raises(errors.ModelUnavailable) as failure:
        async for pcm in backends({"Speaker"}, tts=stream).synthesize("Hello there.", "joe", 24000):
            received.append(pcm)
    assert len(received) == 1 and stream.cancelled
    assert failure.value.code == "model_unavailable" and "speech synthesis" in failure.value.message


@pytest.mark.parametrize("error", [
    ActorUnavailableError("The actor is temporarily unavailable: RpcError: connection reset", None),  # node gone
    ActorDiedError(),  # the replica process died
], ids=["unreachable", "died"])
async def test_a_stream_whose_replica_is_lost_fails_as_unavailable(error):
    stream = Cut(error)
    with pytest.raises(errors.ModelUnavailable) as failure:
        async for _ in backends(set(), tts=stream).synthesize("Hello there.", "joe", 24000):
            pass
    assert stream.cancelled and "RpcError" not in failure.value.message


async def test_a_slow_answer_of_a_stage_with_replicas_is_waited_for():
    stream = Pending(items=["Hi", "!"])
    request = GenerationRequest(messages=[{"role": "user", "content": "hi"}], params=GenerationParams(max_tokens=8, temperature=0.0, top_p=1.0))
    deltas = []
    watch = Watch({"Speaker"})

    async def read():
        async for delta in backends(watch, llm=stream).generate(request):
            deltas.append(delta)

    reader = asyncio.ensure_future(read())
    await watch.polls("LanguageModel", 10)  # ten polls: the LanguageModel is not the stage that is down
    assert deltas == ["Hi", "!"] and not reader.done()
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    assert stream.cancelled


async def test_a_streams_items_cost_no_task_each():
    """Every token and chunk passes through the stream: one watchdog per stream, none per item."""
    stream = Pending(items=[f"t{i}" for i in range(200)])
    request = GenerationRequest(messages=[{"role": "user", "content": "hi"}], params=GenerationParams(max_tokens=8, temperature=0.0, top_p=1.0))
    counts = []
    reader = backends(set(), llm=stream).generate(request)
    async for _ in reader:
        counts.append(len(asyncio.all_tasks()))
        if len(counts) == 200:
            break
    await reader.aclose()
    assert max(counts) == min(counts) == 2  # this test's task and the stream's watchdog
    assert stream.cancelled


async def test_a_reader_cancelled_while_waiting_is_cancelled_not_unavailable():
    """Barge-in cancels the reader; the stream must not report the stage as lost."""
    stream = Pending()
    watch = Watch(set())

    async def read():
        async for _ in backends(watch, tts=stream).synthesize("Hello there.", "joe", 24000):
            pass

    reader = asyncio.ensure_future(read())
    await watch.polls("Speaker", 1)  # the reader waits, and the watchdog looks at the stage
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert stream.cancelled
