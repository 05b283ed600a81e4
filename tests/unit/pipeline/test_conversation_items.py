"""The conversation: order, previous ids, inserting and deleting, bounded history, the prompt's
size and order, truncation."""

from __future__ import annotations

import pytest

from quillman import errors, protocol
from quillman.pipeline.conversation import ROOT, Conversation


def user_item(text: str, item_id: str | None = None) -> protocol.ConversationItem:
    return protocol.ConversationItem(id=item_id, type="message", role="user",
                                     content=[{"type": "input_text", "text": text}])


def said(item_id: str, text: str) -> protocol.MessageItem:
    return protocol.user_audio_item(item_id, text)


def reply(item_id: str, text: str) -> protocol.MessageItem:
    return protocol.assistant_item(item_id, text, "completed", audio=True)


def call(item_id: str, call_id: str, status: protocol.ItemStatus = "completed") -> protocol.FunctionCallItem:
    return protocol.FunctionCallItem(id=item_id, call_id=call_id, name="get_weather",
                                     arguments='{"city": "Oslo"}', status=status)


def output(item_id: str, call_id: str) -> protocol.FunctionCallOutputItem:
    return protocol.FunctionCallOutputItem(id=item_id, call_id=call_id, output="3 C")


def conversation_of(*items: protocol.Item, max_messages: int = 100) -> Conversation:
    conversation = Conversation(max_messages=max_messages, max_prompt_chars=10_000)
    for item in items:
        conversation.insert(item)
    return conversation


def ids(conversation: Conversation) -> list[str]:
    return [item_id for item_id, _ in conversation.items]


def test_items_chain_by_previous_id():
    conversation = Conversation(max_messages=8, max_prompt_chars=10_000)
    first, previous = conversation.add_client_item(user_item("hi"))
    assert previous is None
    _, previous = conversation.add_client_item(user_item("again"))
    assert previous == first.id
    assert conversation.previous_id(first.id) is None


def test_previous_item_id_places_the_item_root_after_an_id_or_at_the_end():
    conversation = conversation_of(said("a", "A"), said("b", "B"))
    assert conversation.add_client_item(user_item("C", "c"), "a")[1] == "a"
    assert conversation.add_client_item(user_item("R", "r"), ROOT)[1] is None
    assert conversation.add_client_item(user_item("E", "e"), None)[1] == "b"
    assert conversation.add_client_item(user_item("F", "f"), "")[1] == "e"  # "": as if absent
    assert ids(conversation) == ["r", "a", "c", "b", "e", "f"]
    assert [conversation.previous_id(i) for i in ids(conversation)] == [None, "r", "a", "c", "b", "e"]
    assert [m["content"] for m in conversation.messages("S")[1:]] == ["R", "A", "C", "B", "E", "F"]


def test_unknown_previous_ids_and_taken_ids_are_refused_and_add_nothing():
    conversation = conversation_of(said("a", "A"))
    with pytest.raises(errors.ItemCreateInvalidPreviousItemId) as refused:
        conversation.add_client_item(user_item("x"), "nope")
    assert (refused.value.code, refused.value.param) == ("item_create_invalid_previous_item_id", "previous_item_id")
    for taken in ("a", ROOT):
        with pytest.raises(errors.InvalidEvent) as refused:
            conversation.add_client_item(user_item("x", taken))
        assert refused.value.param == "item.id"
    assert ids(conversation) == ["a"]


def test_deleting_keeps_the_order_and_an_unknown_id_is_refused():
    conversation = conversation_of(said("a", "A"), said("b", "B"), said("c", "C"))
    assert conversation.delete("b").item.id == "b"
    assert ids(conversation) == ["a", "c"] and conversation.previous_id("c") == "a"
    with pytest.raises(errors.ItemDeleteInvalidItemId) as refused:
        conversation.delete("b")
    assert (refused.value.code, refused.value.param) == ("item_delete_invalid_item_id", "item_id")


@pytest.mark.parametrize("deleted", ["call", "out"])
def test_a_call_and_its_output_reach_the_prompt_together_or_not_at_all(deleted):
    conversation = conversation_of(said("u", "Weather?"), call("call", "c1"), output("out", "c1"),
                                   reply("a", "It is 3 C."))
    shown = conversation.messages("S")
    assert [m["role"] for m in shown] == ["system", "user", "assistant", "tool", "assistant"]
    conversation.delete(deleted)
    shown = conversation.messages("S")
    assert [m["role"] for m in shown] == ["system", "user", "assistant"]
    assert not any(m.get("tool_calls") for m in shown)


def test_an_output_placed_before_its_call_is_shown_after_it():
    conversation = conversation_of(said("u", "Weather?"), call("call", "c1"))
    conversation.add_client_item(protocol.FunctionCallOutputInput(type="function_call_output", call_id="c1",
                                                                  output="3 C"), ROOT)
    assert [m["role"] for m in conversation.messages("S")] == ["system", "user", "assistant", "tool"]


def test_a_call_cut_short_is_never_in_the_prompt():
    conversation = conversation_of(said("u", "Weather?"), call("call", "c1", status="incomplete"),
                                   output("out", "c1"))
    assert [m["role"] for m in conversation.messages("S")] == ["system", "user"]


def test_updates_change_the_item_and_its_message_in_place():
    conversation = conversation_of(protocol.user_audio_item("u", None, "in_progress"), reply("a", "Hi."))
    assert conversation.messages("S")[1:] == [{"role": "assistant", "content": "Hi."}]  # no text yet
    assert conversation.update(said("u", "Hello"))
    assert ids(conversation) == ["u", "a"] and conversation.get("u").item.content[0].transcript == "Hello"
    assert [m["content"] for m in conversation.messages("S")[1:]] == ["Hello", "Hi."]
    assert not conversation.update(said("gone", "x"))  # not here: nothing added


def test_history_is_cut_to_half_when_it_overflows():
    conversation = conversation_of(*(said(f"item_{i}", f"m{i}") for i in range(5)), max_messages=4)
    assert ids(conversation) == ["item_3", "item_4"]
    conversation.insert(said("first", "x"), after=ROOT)
    conversation.insert(said("x1", "x"))
    conversation.insert(said("x2", "x"))  # 5 items: cut, but not the one just placed
    assert ids(conversation) == ["x1", "x2"]
    conversation.insert(said("x3", "x"))
    conversation.insert(said("x4", "x"))
    conversation.insert(said("x5", "x"), after=ROOT)
    assert ids(conversation) == ["x5", "x3", "x4"]


def test_text_that_could_never_fit_is_refused_at_creation():
    conversation = Conversation(max_messages=8, max_prompt_chars=4000)
    with pytest.raises(errors.InputTooLong) as refused:
        conversation.add_client_item(user_item("x" * 2001))
    assert refused.value.code == "input_too_long" and refused.value.param == "item.content"
    assert conversation.items == []
    conversation.add_client_item(user_item("x" * 2000))


def test_the_prompt_drops_the_oldest_messages_to_fit():
    conversation = Conversation(max_messages=100, max_prompt_chars=1000)
    for i in range(10):
        conversation.insert(said(f"u{i}", f"{i}" * 150))
    messages = conversation.messages("SYSTEM", user_text="now")
    assert messages[0] == {"role": "system", "content": "SYSTEM"}
    assert messages[-1] == {"role": "user", "content": "now"}
    assert sum(len(m["content"]) for m in messages) <= 1000
    kept = [m["content"][0] for m in messages[1:-1]]
    assert kept == [str(i) for i in range(10 - len(kept), 10)] and kept  # newest kept, in order


def test_a_spoken_turn_sees_the_conversation_up_to_its_item():
    conversation = conversation_of(said("u1", "first"), reply("a1", "one"), said("u2", "spoken words"),
                                   said("u3", "a later turn"))
    messages = conversation.messages("S", turn_item_id="u2", user_text="spoken words")
    assert [m["content"] for m in messages] == ["S", "first", "one", "spoken words"]
    # Not placed yet (a speculation, before its commit): all of it, then the words.
    messages = conversation.messages("S", turn_item_id="u9", user_text="new words")
    assert [m["content"] for m in messages][-2:] == ["a later turn", "new words"]


def test_truncate_keeps_the_heard_share_of_a_reply():
    conversation = conversation_of(said("u1", "hi"), reply("a1", "one two three four five six seven eight nine ten"))
    conversation.set_audio("a1", 5.0)
    conversation.truncate("a1", audio_end_ms=2500)
    assert conversation.items[-1][1]["content"] == "one two three four five"
    with pytest.raises(errors.ItemTruncateInvalidItemId) as refused:
        conversation.truncate("nope", 100)
    assert (refused.value.code, refused.value.param) == ("item_truncate_invalid_item_id", "item_id")
    with pytest.raises(errors.InvalidEvent):
        conversation.truncate("u1", 100)  # not an assistant message


def test_a_note_comes_before_each_question_that_follows_an_answer_and_the_prompt_only_grows():
    from quillman.pipeline.conversation import Conversation

    conversation = Conversation(max_messages=16, max_prompt_chars=10_000)
    turns = [("Q1", "A1"), ("Q2", "A2"), ("Q3", None)]
    prompts = []
    for question, answer in turns:
        conversation.add_client_item(protocol.ConversationItem.model_validate(
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": question}]}))
        prompts.append(conversation.messages("sys", question_note="New question."))
        if answer:
            conversation.add_client_item(protocol.ConversationItem.model_validate(
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": answer}]}))
    assert [m["content"] for m in prompts[-1]] == ["sys", "Q1", "A1", "New question.", "Q2", "A2", "New question.", "Q3"]
    assert [m["role"] for m in prompts[-1]][3] == "system"
    # Each turn's prompt starts with the previous turn's (the prefix the LLM has cached).
    for before, after in zip(prompts, prompts[1:]):
        assert after[:len(before)] == before
    assert conversation.messages("sys", question_note="") == [m for m in prompts[-1] if m["content"] != "New question."]
