"""The conversation: its items in order, what the LLM is shown of them, and their limits.

Items are kept as (item_id, message). The history is bounded two ways: by message count (cut to
half at once when it grows past ``max_messages``, so the prompt's prefix — and the LLM's prefix
cache — change rarely) and by size (the oldest messages give way so that the prompt stays within
the LLM's context, ``max_prompt_chars``). A single text item that could never fit is refused
when it is created (``input_too_long``), not later by the model.
"""

from __future__ import annotations

from quillman import errors, protocol
from quillman.engines.llm.base import Message
from quillman.pipeline.tools import message_chars, output_message, tool_history


class Conversation:
    def __init__(self, max_messages: int, max_prompt_chars: int):
        self.max_messages = max_messages
        self.max_prompt_chars = max_prompt_chars
        self.items: list[tuple[str, Message]] = []
        self._reply_audio_s: dict[str, float] = {}  # assistant item -> seconds of audio sent

    @property
    def last_item_id(self) -> str | None:
        return self.items[-1][0] if self.items else None

    def check_text(self, text: str, what: str, param: str) -> None:
        """Refuse text that alone would not fit the prompt (``input_too_long``)."""
        if len(text) > self.max_prompt_chars // 2:
            raise errors.InputTooLong(
                f"{what} has {len(text)} characters; at most {self.max_prompt_chars // 2} fit the "
                "model's context", param=param)

    def add(self, item_id: str, message: Message) -> str | None:
        """Append an item; returns the id of the item before it (``previous_item_id``)."""
        previous = self.last_item_id
        self.items.append((item_id, message))
        if len(self.items) > self.max_messages:
            dropped = len(self.items) - self.max_messages // 2
            for old_id, _ in self.items[:dropped]:
                self._reply_audio_s.pop(old_id, None)
            del self.items[:dropped]
        return previous

    def add_client_item(self, item: protocol.ConversationItem | protocol.FunctionCallOutputInput
                        ) -> tuple[protocol.Item, str | None]:
        """``conversation.item.create``: the stored item and its ``previous_item_id``."""
        if isinstance(item, protocol.FunctionCallOutputInput):
            self.check_text(item.output, "the function call's output", "item.output")
            item_id = item.id or protocol.new_id("item")
            previous = self.add(item_id, output_message(item.call_id, item.output))
            return protocol.FunctionCallOutputItem(id=item_id, call_id=item.call_id, output=item.output), previous
        text = item.text()
        self.check_text(text, "the item's text", "item.content")
        item_id = item.id or protocol.new_id("item")
        previous = self.add(item_id, {"role": item.role, "content": text})
        return protocol.text_item(item_id, item.role, text), previous

    def set_text(self, item_id: str, text: str) -> None:
        """The transcript of a user audio item arrived (its place was fixed at commit)."""
        for existing_id, message in self.items:
            if existing_id == item_id:
                message["content"] = text

    def record_reply(self, item_id: str, text: str, audio_s: float) -> None:
        self.add(item_id, {"role": "assistant", "content": text})
        self._reply_audio_s[item_id] = audio_s

    def truncate(self, item_id: str, audio_end_ms: int) -> None:
        """Keep the part of an assistant reply the user heard, so the LLM doesn't assume more."""
        entry = next((m for i, m in self.items if i == item_id and m["role"] == "assistant"), None)
        if entry is None:
            raise errors.InvalidEvent(f"no assistant item {item_id!r} in the conversation", param="item_id")
        audio_s = self._reply_audio_s.get(item_id, 0.0)
        if audio_s > 0 and audio_end_ms / 1000 < audio_s:
            words = entry["content"].split()
            entry["content"] = " ".join(words[:round(len(words) * audio_end_ms / 1000 / audio_s)])

    def messages(self, instructions: str, exclude_item_id: str | None = None,
                 user_text: str | None = None, few_shot: tuple[tuple[str, str], ...] = ()) -> list[Message]:
        """The LLM's prompt: system instructions, example exchanges, the history (oldest dropped
        to fit), the turn."""
        history = tool_history([m for item_id, m in self.items if item_id != exclude_item_id
                                and (m["content"] or m.get("tool_calls"))])
        turn: list[Message] = [{"role": "user", "content": user_text}] if user_text else []
        examples: list[Message] = [{"role": role, "content": text} for pair in few_shot
                                   for role, text in zip(("user", "assistant"), pair)]
        budget = self.max_prompt_chars - len(instructions) - sum(len(m["content"]) for m in turn + examples)
        kept: list[Message] = []
        for message in reversed(history):
            budget -= message_chars(message)
            if budget < 0:
                break
            kept.append(message)
        # The cut may separate a call from its output: check the pairs again.
        return [{"role": "system", "content": instructions}, *examples, *tool_history(kept[::-1]), *turn]
