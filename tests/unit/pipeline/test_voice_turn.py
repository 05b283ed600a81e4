"""One voice turn alone: the tasks it starts, keeps, cancels and joins."""

from __future__ import annotations

import asyncio

import numpy as np

from quillman.engines.asr.base import Transcript
from quillman.pipeline.turns import UserTurn
from quillman.pipeline.voice_turn import VoiceTurn


class Asr:
    """A fake ASR: each call waits for its release, then returns the text it was given."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls: list[float] = []  # the deadline of each call

    def __call__(self, pcm: np.ndarray, due: float):
        self.calls.append(due)
        return self._run(len(pcm))

    async def _run(self, samples: int) -> Transcript:
        await self.release.wait()
        return Transcript(text=f"words{samples}", language="en", audio_s=samples / 16000, inference_ms=12.34)


def spawn(coro, name: str) -> asyncio.Task:
    return asyncio.ensure_future(coro)


def new_turn() -> VoiceTurn:
    return VoiceTurn(UserTurn("item_1", 0, 0), spawn)


def pcm(samples: int) -> np.ndarray:
    return np.zeros(samples, dtype=np.float32)


async def test_segments_join_in_order_and_a_kept_draft_is_one_of_them():
    asr, turn = Asr(), new_turn()
    turn.transcribe(asr, [pcm(1), pcm(2)])
    turn.start_draft(asr, pcm(3), due=123.0)
    assert turn.keep_draft() and turn.draft is None and asr.calls[-1] == 123.0
    asr.release.set()
    transcript = turn.commit()
    assert await transcript == "words1 words2 words3"
    assert turn.last_segment_ms() == 12.3


async def test_a_dropped_draft_is_cancelled_and_not_joined():
    asr, turn = Asr(), new_turn()
    turn.start_draft(asr, pcm(5), due=0.0)
    draft = turn.draft
    turn.drop_draft()
    assert not turn.keep_draft()
    await asyncio.gather(draft, return_exceptions=True)
    assert draft.cancelled()
    asr.release.set()
    assert await turn.commit() == ""


async def test_abandon_cancels_every_task_of_the_turn():
    asr, turn = Asr(), new_turn()
    turn.transcribe(asr, [pcm(1)])
    turn.start_draft(asr, pcm(2), due=0.0)
    turn.judgment = spawn(asyncio.Event().wait(), "judgment")
    tasks = [*turn.segments, turn.draft, turn.judgment]
    turn.abandon()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert all(task.cancelled() for task in tasks)
    assert turn.draft is None and turn.judgment is None


async def test_the_replys_transcript_survives_a_cancelled_speculation():
    asr, turn = Asr(), new_turn()
    turn.transcribe(asr, [pcm(4)])
    speculation = asyncio.ensure_future(turn.user_input().transcript())  # the segments so far
    await asyncio.sleep(0)  # one loop step: the join is now waiting on the shielded segment
    speculation.cancel()  # speech resumed: the reply started at the pause is moot
    await asyncio.gather(speculation, return_exceptions=True)
    asr.release.set()
    committed = turn.commit()
    reply = turn.user_input()  # after the commit: the whole turn's transcript
    assert await reply.transcript() == "words4" == await committed
    assert not turn.segments[0].cancelled()
