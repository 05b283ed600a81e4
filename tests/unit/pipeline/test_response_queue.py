"""The response queue alone: one reply in progress, the next shown behind it, cancellation."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest

from quillman import errors, protocol
from quillman.config import LlmConfig, McpConfig, VadConfig
from quillman.engines.llm.base import Tool
from quillman.engines.loader import language_model_capabilities
from quillman.metrics import SessionMetrics
from quillman.pipeline.conversation import Conversation
from quillman.pipeline.mcp_servers import Approvals, McpServers
from quillman.pipeline.mcp_access import Access
from quillman.pipeline.response import UserInput
from quillman.pipeline.response_queue import ResponseQueue
from quillman.pipeline.settings import SessionSettings
from quillman.pipeline.tools import FunctionCalls

from tests.unit.conftest import FakeBackends, fast_session_config


class Queue:
    """A queue over the fake backends; its events, as a client would see them."""

    def __init__(self, backends: FakeBackends):
        config, llm = fast_session_config(), LlmConfig()
        self.events: list[dict] = []
        self.tasks: list[asyncio.Task] = []
        self.settings = SessionSettings.initial(config, VadConfig(), [config.voice])
        self.conversation = Conversation(config.max_history_messages, llm.prompt_char_budget())
        mcp_config = McpConfig()
        mcp = McpServers(Access(mcp_config.allowed_servers), mcp_config, self.emit, lambda event: None, "sess_t")
        self.queue = ResponseQueue(
            session_id="sess_t", backends=backends, config=config, llm=llm,
            capabilities=language_model_capabilities(llm), settings=lambda: self.settings,
            conversation=self.conversation, function_calls=FunctionCalls(), mcp=mcp, approvals=Approvals(),
            metrics=SessionMetrics(), emit=self.emit, track=self.track, playback=None)

    def emit(self, event: protocol.ServerEvent) -> None:
        self.events.append(json.loads(protocol.serialize(event)))

    def track(self, task: asyncio.Task) -> asyncio.Task:
        self.tasks.append(task)
        return task

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    async def settle(self) -> None:
        await asyncio.gather(*self.tasks, return_exceptions=True)


def spoken(text: str) -> UserInput:
    async def transcript() -> str:
        return text

    return UserInput(item_id=protocol.new_id("item"), transcript=transcript, speech_end=None)


async def test_a_reply_shown_behind_another_starts_when_that_one_is_done(backends):
    q = Queue(backends)
    first = q.queue.start_voice(spoken("first question"), speculative=False)
    second = q.queue.start_voice(spoken("second question"), speculative=True)
    q.queue.show(first, turn_detected=None)
    q.queue.show(second, turn_detected=None)
    assert q.queue.current is first and q.queue.unfinished() == [first, second]
    await q.settle()
    assert q.queue.current is None and q.queue.done == 2
    done = [e["response"]["id"] for e in q.events if e["type"] == "response.done"]
    created = [e["response"]["id"] for e in q.events if e["type"] == "response.created"]
    assert done == created == [first.id, second.id]  # in order, never interleaved
    assert q.types().index("response.done") < q.types().index("response.created", 1)


async def test_only_one_text_reply_at_a_time_and_cancel_reaches_it(backends):
    q = Queue(backends)
    backends.llm_hang_calls = {0: 1}
    q.queue.create_text(None)
    with pytest.raises(errors.ResponseAlreadyActive):
        q.queue.create_text(None)
    with pytest.raises(errors.ResponseCancelNotActive):
        q.queue.cancel("resp_not_this_one")
    q.queue.cancel(None)
    await q.settle()
    done = [e for e in q.events if e["type"] == "response.done"]
    assert [d["response"]["status"] for d in done] == ["cancelled"] and q.queue.current is None
    with pytest.raises(errors.ResponseCancelNotActive):
        q.queue.cancel(None)


async def test_barge_in_cancels_every_unfinished_reply(backends):
    q = Queue(backends)
    backends.llm_hang_calls = {0: 1}
    replies = [q.queue.start_voice(spoken(text), speculative=False) for text in ("one", "two")]
    for reply in replies:
        q.queue.show(reply, turn_detected=None)
    q.queue.interrupt()
    await q.settle()
    statuses = [e["response"]["status"] for e in q.events if e["type"] == "response.done"]
    assert statuses == ["cancelled", "cancelled"] and q.queue.unfinished() == []


async def test_without_a_track_audio_goes_out_as_events_and_clear_is_refused(backends):
    q = Queue(backends)
    delta = protocol.OutputAudioDelta(response_id="resp_1", item_id="item_1", output_index=0, content_index=0,
                                      delta="")
    assert not q.queue.play(delta)
    with pytest.raises(errors.UnsupportedEvent):
        q.queue.cut_playback()


async def test_the_prefill_request_is_the_replys_prompt_and_none_with_tools(backends):
    q = Queue(backends)
    request = q.queue.request_for("item_1", "where do penguins")
    assert request is not None and request.messages[-1]["content"].endswith("where do penguins")
    weather = Tool(name="get_weather", description="", parameters={"type": "object", "properties": {}})
    q.settings = replace(q.settings, tools=(weather,), tool_choice="auto")
    assert q.queue.request_for("item_1", "where do penguins") is None  # the choice reads the whole question
