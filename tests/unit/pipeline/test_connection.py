"""The connection alone: the outbox's bound, inputs routed by kind, refusals, fatal close."""

from __future__ import annotations

import asyncio
import json

import numpy as np

from quillman import errors, protocol
from quillman.metrics import SessionMetrics
from quillman.pipeline.connection import CLOSE_INTERNAL_ERROR, CLOSE_NORMAL, Connection, Outbox, PcmFrame
from quillman.pipeline.limits import SessionLimits

from tests.unit.conftest import fast_session_config


def make_connection(sent: list[dict], max_outbox_bytes: int = 1 << 20) -> Connection:
    cfg = fast_session_config()

    async def send(frame: str) -> None:
        sent.append(json.loads(frame))

    return Connection("sess_test", send, SessionLimits(cfg), SessionMetrics(), max_outbox_bytes, cfg.idle_timeout_s)


async def test_the_outbox_reports_its_bound_and_drains_in_order():
    outbox = Outbox(max_bytes=10)
    assert outbox.put("12345") and outbox.put("67890")
    assert not outbox.put("x")  # past the bound: kept, the caller decides
    assert [await outbox.get() for _ in range(3)] == ["12345", "67890", "x"]
    outbox.finish()
    assert await outbox.get() is None and outbox.queued_bytes == 0


async def test_inputs_go_to_their_handler_and_close_runs_before_the_end():
    sent: list[dict] = []
    connection = make_connection(sent)
    inbox: asyncio.Queue = asyncio.Queue()
    events: list[protocol.ClientEvent] = []
    audio: list[int] = []
    closed: list[bool] = []

    async def on_event(event: protocol.ClientEvent) -> None:
        events.append(event)

    async def on_pcm(pcm: np.ndarray) -> None:
        audio.append(len(pcm))

    async def close() -> None:
        closed.append(True)

    for item in (json.dumps({"type": "response.create", "event_id": "e1"}), "not json",
                 PcmFrame(np.zeros(480, dtype=np.int16)), protocol.InputAudioBufferClear(type="input_audio_buffer.clear"), None):
        inbox.put_nowait(item)
    code = await connection.serve(inbox.get, on_event, on_pcm, close)
    assert code == CLOSE_NORMAL and closed  # close ran (and again in the finally)
    assert [e.type for e in events] == ["response.create", "input_audio_buffer.clear"]
    assert events[0].event_id == "e1" and audio == [480]
    assert [e["type"] for e in sent] == ["error"]  # the bad frame, and the session went on


async def test_a_refusal_keeps_the_client_event_id_and_a_bug_is_a_server_error():
    sent: list[dict] = []
    connection = make_connection(sent)

    async def refused() -> None:
        raise errors.InvalidEvent("no", param="type")

    async def broken() -> None:
        raise RuntimeError("bug")

    await connection.handled(refused(), "evt_1", "this event")
    await connection.handled(broken(), "evt_2", "this event")
    connection.outbox.finish()
    frames = [json.loads(f) for f in [await connection.outbox.get(), await connection.outbox.get()]]
    assert [(f["error"]["code"], f["error"]["event_id"]) for f in frames] == [
        ("invalid_event", "evt_1"), (errors.InternalError.code, "evt_2")]


async def test_past_the_outbox_bound_one_error_then_close_1011():
    connection = make_connection([], max_outbox_bytes=1024)
    for _ in range(100):  # nobody reads: the queue only grows
        connection.emit(protocol.InputAudioBufferCleared())
    assert connection.close_code == CLOSE_INTERNAL_ERROR
    connection.outbox.finish()
    frames = []
    while (frame := await connection.outbox.get()) is not None:
        frames.append(json.loads(frame))
    fatal = [f for f in frames if f["type"] == "error"]
    assert [f["error"]["code"] for f in fatal] == [errors.ClientTooSlow.code]


async def test_cancel_tasks_ends_every_tracked_task():
    connection = make_connection([])
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    task = connection.spawn(forever(), "forever")
    await started.wait()
    await connection.cancel_tasks()
    assert task.cancelled() and not connection.tasks
