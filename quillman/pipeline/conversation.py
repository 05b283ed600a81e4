"""The conversation: its items in order, what the LLM is shown of them, and their limits.

The items are the server's conversation as the client is told it: each is placed when its
``conversation.item.added`` goes out (a user turn at its commit, a reply's items as they open, a
client's item where its ``previous_item_id`` says) and keeps the wire item (what
``conversation.item.retrieve`` returns) next to the message the LLM is shown. Every item event's
``previous_item_id`` is the id of the item before it here, when the event goes out.

The history is bounded two ways: by item count (cut to half at once when it grows past
``max_messages``, so the prompt's prefix — and the LLM's prefix cache — change rarely; the items
cut are forgotten: unknown ids afterwards) and by size (the oldest messages give way so that the
prompt stays within the LLM's context, ``max_prompt_chars``). A single text item that could
never fit is refused when it is created (``input_too_long``), not later by the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from quillman import errors, protocol
from quillman.engines.llm.base import Message
from quillman.pipeline.tools import call_message, message_chars, output_message, tool_history

ROOT = "root"  # conversation.item.create's previous_item_id for "at the start"
MCP_RESULT = "mcp_result"  # an MCP call's message: the result that follows it in the prompt


def mcp_result_text(item: protocol.McpCallItem) -> str:
    """What the model reads of an MCP call's result: its output, or its error in words."""
    if item.error is not None:
        return f"Error: {item.error.message}"
    return item.output or ""


def expand_mcp(messages: list[Message]) -> list[Message]:
    """Each MCP call's message as the call, then its result (a tool message)."""
    expanded: list[Message] = []
    for message in messages:
        if MCP_RESULT in message:
            result = message[MCP_RESULT]
            message = {key: value for key, value in message.items() if key != MCP_RESULT}
            expanded.extend([message, output_message(message["tool_calls"][0]["id"], result)])
        else:
            expanded.append(message)
    return expanded


@dataclass
class Entry:
    item: protocol.Item  # as the client knows it (its latest conversation.item.* event)
    message: Message  # what the LLM is shown of it
    audio_s: float = 0.0  # an assistant reply: seconds of its audio sent (for truncation)

    @property
    def id(self) -> str:
        return self.item.id


def message_of(item: protocol.Item) -> Message:
    """The chat message an item is in the prompt (an empty one is left out of it)."""
    if isinstance(item, protocol.FunctionCallOutputItem):
        return output_message(item.call_id, item.output)
    if isinstance(item, protocol.FunctionCallItem):
        if item.status != "completed":  # cut short: never in the prompt
            return {"role": "assistant", "content": ""}
        return call_message(item.call_id, item.name, item.arguments)
    if isinstance(item, protocol.McpCallItem):
        if item.output is None and item.error is None:  # not run (yet): never in the prompt
            return {"role": "assistant", "content": ""}
        # The call and its result in one item: two messages in the prompt (see expand_mcp).
        return {**call_message(item.id, item.name, item.arguments), MCP_RESULT: mcp_result_text(item)}
    if not isinstance(item, protocol.MessageItem):  # MCP listings, approvals: not for the model
        return {"role": "assistant", "content": ""}
    text = " ".join(part.text if isinstance(part, (protocol.InputTextContent, protocol.OutputTextContent))
                    else part.transcript or "" for part in item.content).strip()
    return {"role": item.role, "content": text}


class Conversation:
    def __init__(self, max_messages: int, max_prompt_chars: int):
        self.max_messages = max_messages
        self.max_prompt_chars = max_prompt_chars
        self.entries: list[Entry] = []

    @property
    def items(self) -> list[tuple[str, Message]]:
        """(item id, message) in conversation order."""
        return [(entry.id, entry.message) for entry in self.entries]

    @property
    def last_item_id(self) -> str | None:
        return self.entries[-1].id if self.entries else None

    def get(self, item_id: str) -> Entry | None:
        return next((entry for entry in self.entries if entry.id == item_id), None)

    def _index(self, item_id: str | None) -> int | None:
        return next((i for i, entry in enumerate(self.entries) if entry.id == item_id), None)

    def previous_id(self, item_id: str) -> str | None:
        """The id of the item before ``item_id`` (None: it is the first, or not here)."""
        index = self._index(item_id)
        return self.entries[index - 1].id if index else None

    def check_text(self, text: str, what: str, param: str) -> None:
        """Refuse text that alone would not fit the prompt (``input_too_long``)."""
        if len(text) > self.max_prompt_chars // 2:
            raise errors.InputTooLong(
                f"{what} has {len(text)} characters; at most {self.max_prompt_chars // 2} fit the "
                "model's context", param=param)

    # --- placing and changing items ------------------------------------------------------------

    def insert(self, item: protocol.Item, after: str | None = None) -> str | None:
        """Place ``item`` after the item ``after`` (``ROOT``: at the start; None, or an id no
        longer here: at the end); returns its ``previous_item_id``."""
        index = self._index(after)
        position = 0 if after == ROOT else len(self.entries) if index is None else index + 1
        self.entries.insert(position, Entry(item, message_of(item)))
        previous = self.entries[position - 1].id if position else None
        if len(self.entries) > self.max_messages:
            # Cut to half, oldest first; never the item just placed (at the start, say).
            excess = len(self.entries) - self.max_messages // 2
            self.entries = [e for i, e in enumerate(self.entries) if i >= excess or e.item is item]
        return previous

    def place_at_end(self, event: protocol.ServerEvent) -> str | None:
        """An MCP listing's item goes out: placed at the end of the conversation (``added``),
        then updated (``done``); its previous_item_id."""
        if isinstance(event, protocol.ConversationItemAdded):
            return self.insert(event.item)
        if isinstance(event, protocol.ConversationItemDone):
            self.update(event.item)
            return self.previous_id(event.item.id)
        return None

    def update(self, item: protocol.Item) -> bool:
        """The item changed (its transcript arrived, a reply closed): False if it is not here
        (deleted by the client, or cut from the history)."""
        entry = self.get(item.id)
        if entry is None:
            return False
        entry.item, entry.message = item, message_of(item)
        return True

    def delete(self, item_id: str) -> Entry:
        index = self._index(item_id)
        if index is None:
            raise errors.ItemDeleteInvalidItemId(
                f"Error deleting item: the item with id {item_id[:64]!r} does not exist.", param="item_id")
        return self.entries.pop(index)

    def add_client_item(self, item: protocol.ConversationItem | protocol.FunctionCallOutputInput
                        | protocol.McpApprovalResponseInput,
                        previous_item_id: str | None = None) -> tuple[protocol.Item, str | None]:
        """``conversation.item.create``: the stored item and its ``previous_item_id``."""
        if previous_item_id not in (None, "", ROOT) and self._index(previous_item_id) is None:
            raise errors.ItemCreateInvalidPreviousItemId(
                f"Error adding item: the previous item with id {previous_item_id[:64]!r} does not exist.",
                param="previous_item_id")
        if item.id is not None and (item.id == ROOT or self._index(item.id) is not None):
            raise errors.InvalidEvent(f"an item with id {item.id[:64]!r} is already in the conversation",
                                      param="item.id")
        item_id = item.id or protocol.new_id("item")
        if isinstance(item, protocol.McpApprovalResponseInput):
            stored: protocol.Item = protocol.McpApprovalResponseItem(
                id=item_id, approval_request_id=item.approval_request_id, approve=item.approve, reason=item.reason)
        elif isinstance(item, protocol.FunctionCallOutputInput):
            self.check_text(item.output, "the function call's output", "item.output")
            stored = protocol.FunctionCallOutputItem(id=item_id, call_id=item.call_id,
                                                                    output=item.output)
        else:
            text = item.text()
            self.check_text(text, "the item's text", "item.content")
            stored = protocol.text_item(item_id, item.role, text)
        return stored, self.insert(stored, previous_item_id or None)

    def set_audio(self, item_id: str, audio_s: float) -> None:
        entry = self.get(item_id)
        if entry is not None:
            entry.audio_s = audio_s

    def truncate(self, item_id: str, audio_end_ms: int) -> None:
        """Keep the part of an assistant reply the user heard, so the LLM doesn't assume more."""
        entry = self.get(item_id)
        if entry is None:
            raise errors.ItemTruncateInvalidItemId(
                f"Error truncating item: the item with id {item_id[:64]!r} does not exist.", param="item_id")
        if not isinstance(entry.item, protocol.MessageItem) or entry.item.role != "assistant":
            raise errors.InvalidEvent(f"item {item_id[:64]!r} is not an assistant message", param="item_id")
        if entry.audio_s > 0 and audio_end_ms / 1000 < entry.audio_s:
            words = entry.message["content"].split()
            entry.message = {**entry.message,
                             "content": " ".join(words[:round(len(words) * audio_end_ms / 1000 / entry.audio_s)])}

    # --- the prompt ------------------------------------------------------------------------------

    def messages(self, instructions: str, turn_item_id: str | None = None,
                 user_text: str | None = None, few_shot: tuple[tuple[str, str], ...] = (),
                 question_note: str = "") -> list[Message]:
        """The LLM's prompt: system instructions, example exchanges, the history in conversation
        order (oldest dropped to fit), the turn. A spoken turn's reply sees the conversation up
        to its user item (``turn_item_id``; all of it if that is not placed yet, a speculation),
        and the transcript ``user_text`` in that item's place.

        ``question_note``: a short system message put before each user message that follows an
        answer (not before the first), so that a small model answers the new question instead
        of repeating its previous answer (measured: docs/answers.md). It is rendered the same
        way every turn, so the prompt of turn k+1 extends that of turn k (the prefix cache)."""
        end = self._index(turn_item_id)
        entries = self.entries if end is None else self.entries[:end]
        history = tool_history(expand_mcp(
            [e.message for e in entries if e.message["content"] or e.message.get("tool_calls")]))
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
        history = tool_history(kept[::-1]) + turn
        if question_note:
            history = with_question_notes(history, question_note)
        return [{"role": "system", "content": instructions}, *examples, *history]


def with_question_notes(history: list[Message], note: str) -> list[Message]:
    """``note`` (a system message) before every user message that follows an assistant's."""
    noted: list[Message] = []
    for index, message in enumerate(history):
        if message["role"] == "user" and index and history[index - 1]["role"] == "assistant":
            noted.append({"role": "system", "content": note})
        noted.append(message)
    return noted
