"""The tool calls one response makes, each one output item: the ``function_call`` items the
client runs and answers, the ``mcp_call`` items the server runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quillman import protocol
from quillman.pipeline.mcp_connection import ListedTool


@dataclass
class FunctionCall:
    """A call the model made in this response: one ``function_call`` output item."""

    output_index: int
    call_id: str
    name: str
    item_id: str = field(default_factory=lambda: protocol.new_id("item"))
    arguments: list[str] = field(default_factory=list)
    done: bool = False  # closed: its output_item.done went out
    complete: bool = False  # closed with its arguments done: a call the client may answer

    def item(self, status: protocol.ItemStatus) -> protocol.FunctionCallItem:
        return protocol.FunctionCallItem(id=self.item_id, status=status, call_id=self.call_id,
                                         name=self.name, arguments="".join(self.arguments))


@dataclass
class McpCall:
    """A call of an MCP tool in this response: one ``mcp_call`` output item, run by the server."""

    output_index: int
    tool: ListedTool
    item_id: str = field(default_factory=lambda: protocol.new_id("item"))
    arguments: list[str] = field(default_factory=list)
    approval_request_id: str | None = None
    output: str | None = None
    error: protocol.McpCallError | None = None
    arguments_done: bool = False
    running: bool = False  # response.mcp_call.in_progress went out
    done: bool = False  # its output_item.done went out

    def item(self) -> protocol.McpCallItem:
        return protocol.McpCallItem(id=self.item_id, server_label=self.tool.server_label, name=self.tool.name,
                                    arguments="".join(self.arguments), approval_request_id=self.approval_request_id,
                                    output=self.output, error=self.error)
