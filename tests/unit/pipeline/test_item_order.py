"""GA conversation items in a session: every item event's previous_item_id is the item before it
in the server's order; conversation.item.create honours previous_item_id, .delete and .retrieve
answer, and the LLM's prompt follows the order."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("hang_guard")

ITEM_EVENTS = ("input_audio_buffer.committed", "conversation.item.added", "conversation.item.done")


def user_text(text: str, item_id: str | None = None) -> dict:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    return {**item, "id": item_id} if item_id else item


async def create(driver, text: str, item_id: str | None = None, **event) -> dict:
    await driver.send({"type": "conversation.item.create", "item": user_text(text, item_id), **event})
    await driver.drain()
    return driver.events[-1]


def prompt_texts(backends, call: int = -1) -> list[str]:
    """The prompt's conversation (the system prompt and the new-question notes left out)."""
    return [m["content"] for m in backends.llm_calls[call].args["messages"][1:] if m["role"] != "system"]


def previous_ids(driver, item_id: str) -> dict[str, str | None]:
    return {e["type"]: e.get("previous_item_id") for e in driver.events
            if e["type"] in ITEM_EVENTS and (e.get("item_id") or e.get("item", {}).get("id")) == item_id}


async def test_every_item_event_names_the_item_before_it(driver, backends, short_speech_24k):
    backends.replies = {0: "Paris is the capital.", 1: "Two million."}
    await driver.append(short_speech_24k.pcm)
    first = (await driver.wait_for("response.done"))["response"]
    user = driver.of_type("input_audio_buffer.committed")[0]["item_id"]
    reply = first["output"][0]["id"]
    assert previous_ids(driver, user) == dict.fromkeys(ITEM_EVENTS, None)  # the first item
    assert previous_ids(driver, reply) == {"conversation.item.added": user, "conversation.item.done": user}
    second = await driver.text_turn("How many people?")
    typed = driver.of_type("conversation.item.added")[-2]["item"]["id"]  # the text item
    assert previous_ids(driver, typed)["conversation.item.done"] == reply
    assert previous_ids(driver, second["response"]["output"][0]["id"])["conversation.item.done"] == typed
    await driver.settle()
    driver.assert_client_order()


async def test_create_at_the_start_after_an_item_or_at_the_end_and_the_prompt_follows(driver, backends):
    await create(driver, "B", "item_b")
    await create(driver, "D", "item_d")
    root = await create(driver, "A", "item_a", previous_item_id="root")
    middle = await create(driver, "C", "item_c", previous_item_id="item_b")
    assert root["type"] == "conversation.item.done" and root.get("previous_item_id") is None
    assert middle.get("previous_item_id") == "item_b"
    await driver.send({"type": "response.create"})
    await driver.wait_for("response.done")
    assert prompt_texts(backends) == ["A", "B", "C", "D"]
    assert driver.client_conversation()[:4] == ["item_a", "item_b", "item_c", "item_d"]
    driver.assert_client_order()


async def test_an_unknown_previous_item_id_adds_nothing(driver, backends):
    await create(driver, "A", "item_a")
    before = len(driver.events)
    await driver.send({"type": "conversation.item.create", "event_id": "ev_1", "previous_item_id": "item_zz",
                       "item": user_text("B")})
    await driver.drain()
    assert driver.types(before) == ["error"]
    error = driver.errors()[-1]
    assert (error["code"], error["param"], error["event_id"]) == (
        "item_create_invalid_previous_item_id", "previous_item_id", "ev_1")
    assert driver.client_conversation() == ["item_a"]


async def test_delete_answers_and_the_prompt_forgets_the_item(driver, backends):
    await create(driver, "A", "item_a")
    await create(driver, "B", "item_b")
    await create(driver, "C", "item_c")
    await driver.send({"type": "conversation.item.delete", "event_id": "ev_d", "item_id": "item_b"})
    await driver.drain()
    assert driver.events[-1]["type"] == "conversation.item.deleted" and driver.events[-1]["item_id"] == "item_b"
    after = await create(driver, "D", "item_d", previous_item_id="item_a")
    assert after.get("previous_item_id") == "item_a"
    await driver.send({"type": "response.create"})
    await driver.wait_for("response.done")
    assert prompt_texts(backends) == ["A", "D", "C"]
    await driver.send({"type": "conversation.item.delete", "event_id": "ev_d2", "item_id": "item_b"})
    await driver.drain()
    error = driver.errors()[-1]
    assert (error["code"], error["param"], error["event_id"]) == ("item_delete_invalid_item_id", "item_id", "ev_d2")
    driver.assert_client_order()


async def test_retrieve_gives_the_item_as_it_is_now(driver, backends, short_speech_24k):
    backends.default_transcript = "what is the capital of france"
    await driver.append(short_speech_24k.pcm)
    await driver.wait_for("response.done")
    user = driver.of_type("input_audio_buffer.committed")[0]["item_id"]
    await driver.send({"type": "conversation.item.retrieve", "event_id": "ev_r", "item_id": user})
    await driver.drain()
    retrieved = driver.events[-1]
    assert retrieved["type"] == "conversation.item.retrieved"
    assert retrieved["item"]["id"] == user and retrieved["item"]["status"] == "completed"
    assert retrieved["item"]["content"] == [{"type": "input_audio", "transcript": "what is the capital of france"}]
    await driver.send({"type": "conversation.item.retrieve", "event_id": "ev_r2", "item_id": "item_zz"})
    await driver.drain()
    error = driver.errors()[-1]
    assert (error["code"], error["param"], error["event_id"]) == ("item_retrieve_invalid_item_id", "item_id", "ev_r2")


async def test_a_streaming_reply_is_retrieved_so_far_and_cannot_be_deleted(driver, backends):
    backends.reply = "One two three four five six."
    backends.llm_hang_calls = {0: 3}
    await create(driver, "Count.")
    await driver.send({"type": "response.create"})
    await driver.wait_for("response.output_audio_transcript.delta", count=3)
    reply = driver.of_type("response.output_item.added")[0]["item"]["id"]
    await driver.send({"type": "conversation.item.retrieve", "item_id": reply})
    await driver.send({"type": "conversation.item.delete", "event_id": "ev_x", "item_id": reply})
    await driver.drain()
    retrieved = driver.of_type("conversation.item.retrieved")[-1]["item"]
    assert retrieved["status"] == "in_progress" and retrieved["content"][0]["transcript"] == "One two three"
    assert (driver.errors()[-1]["code"], driver.errors()[-1]["param"]) == ("invalid_event", "item_id")
    backends.llm_release.set()
    await driver.wait_for("response.done")
    await driver.send({"type": "conversation.item.delete", "item_id": reply})  # done: now it may go
    await driver.drain()
    assert driver.events[-1]["type"] == "conversation.item.deleted"


async def test_a_user_item_deleted_before_its_transcript_stays_deleted(driver, backends, short_speech_24k):
    backends.asr_hang = True
    await driver.append(short_speech_24k.pcm)
    user = (await driver.wait_for("input_audio_buffer.committed"))["item_id"]
    await driver.send({"type": "conversation.item.delete", "item_id": user})
    backends.asr_release.set()
    await driver.wait_for("response.done")
    await driver.settle()
    assert not [e for e in driver.of_type("conversation.item.done") if e["item"]["id"] == user]
    assert user not in driver.client_conversation()
    driver.assert_client_order()


async def test_a_reply_follows_its_user_item_when_the_next_turn_came_first(make_driver, backends, two_turns_24k):
    # interrupt_response off: the second turn is committed while the first reply still waits on
    # its model; that reply's item still goes right after the turn it answers.
    driver = await make_driver()
    await driver.send({"type": "session.update", "session": {"audio": {"input": {
        "turn_detection": {"type": "server_vad", "interrupt_response": False}}}}})
    backends.llm_hang_calls = {0: 0}
    backends.replies = {0: "First answer.", 1: "Second answer."}
    await driver.append(two_turns_24k.pcm)
    await driver.wait_for("input_audio_buffer.committed", count=2)
    backends.llm_release.set()
    await driver.wait_for("response.done", count=2)
    await driver.settle()
    first_user, second_user = [e["item_id"] for e in driver.of_type("input_audio_buffer.committed")]
    replies = [d["response"]["output"][0]["id"] for d in driver.of_type("response.done")]
    assert driver.client_conversation() == [first_user, replies[0], second_user, replies[1]]
    driver.assert_client_order()
    # The second reply saw the first one, before its own turn.
    assert prompt_texts(backends, 1)[-2] == "First answer."


async def test_a_question_created_while_a_reply_runs_comes_after_that_reply(driver, backends):
    """The replayed answer: "What is the capital of France?" -> "Paris.", the client sends its
    next question while that reply is still running, then response.create. The reply goes right
    after what it answered, so the next prompt ends on the new question (it used to end on the
    old answer, which the model then repeated)."""
    backends.replies = {0: "The capital of France is Paris.", 1: "The moon orbits the Earth."}
    backends.llm_hang_calls = {0: 0}  # the first reply has no token yet when the question comes
    await create(driver, "What is the capital of France?", "item_q1")
    await driver.send({"type": "response.create"})
    await driver.wait_for("response.created")
    await create(driver, "Tell me about the moon.", "item_q2")  # while reply 1 runs
    backends.llm_release.set()
    first = (await driver.wait_for("response.done"))["response"]
    await driver.send({"type": "response.create"})
    await driver.wait_for("response.done", count=2)
    assert [m["role"] for m in backends.llm_calls[1].args["messages"][-4:]] == ["user", "assistant", "system", "user"]
    assert prompt_texts(backends, 1)[-3:] == ["What is the capital of France?", "The capital of France is Paris.",
                                              "Tell me about the moon."]
    reply = first["output"][0]["id"]
    assert driver.client_conversation()[:3] == ["item_q1", reply, "item_q2"]
    assert previous_ids(driver, reply)["conversation.item.added"] == "item_q1"
    driver.assert_client_order()
