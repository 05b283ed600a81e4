"""The conversation: order, previous ids, bounded history, the prompt's size, truncation."""

from __future__ import annotations

import pytest

from quillman import errors, protocol
from quillman.pipeline.conversation import Conversation


def user_item(text: str) -> protocol.ConversationItem:
    return protocol.ConversationItem(type="message", role="user", content=[{"type": "input_text", "text": text}])


def test_items_chain_by_previous_id():
    conversation = Conversation(max_messages=8, max_prompt_chars=10_000)
    first, previous = conversation.add_client_item(user_item("hi"))
    assert previous is None
    _, previous = conversation.add_client_item(user_item("again"))
    assert previous == first.id


def test_history_is_cut_to_half_when_it_overflows():
    conversation = Conversation(max_messages=4, max_prompt_chars=10_000)
    for i in range(5):
        conversation.add(f"item_{i}", {"role": "user", "content": f"m{i}"})
    assert [i for i, _ in conversation.items] == ["item_3", "item_4"]


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
        conversation.add(f"u{i}", {"role": "user", "content": f"{i}" * 150})
    messages = conversation.messages("SYSTEM", user_text="now")
    assert messages[0] == {"role": "system", "content": "SYSTEM"}
    assert messages[-1] == {"role": "user", "content": "now"}
    assert sum(len(m["content"]) for m in messages) <= 1000
    kept = [m["content"][0] for m in messages[1:-1]]
    assert kept == [str(i) for i in range(10 - len(kept), 10)] and kept  # newest kept, in order


def test_the_turns_own_item_is_not_shown_twice():
    conversation = Conversation(max_messages=8, max_prompt_chars=10_000)
    conversation.add("u1", {"role": "user", "content": "spoken words"})
    messages = conversation.messages("S", exclude_item_id="u1", user_text="spoken words")
    assert [m["content"] for m in messages] == ["S", "spoken words"]


def test_truncate_keeps_the_heard_share_of_a_reply():
    conversation = Conversation(max_messages=8, max_prompt_chars=10_000)
    conversation.record_reply("a1", "one two three four five six seven eight nine ten", audio_s=5.0)
    conversation.truncate("a1", audio_end_ms=2500)
    assert conversation.items[-1][1]["content"] == "one two three four five"
    with pytest.raises(errors.InvalidEvent):
        conversation.truncate("nope", 100)
