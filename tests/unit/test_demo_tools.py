"""The demo's client-side tools: a clock and a calculator that never evaluates code."""

from __future__ import annotations

import json

import pytest

from quillman.demo_tools import TOOLS, calculate, run_tool
from quillman.pipeline.tools import parse_tools


def test_the_demo_tools_are_valid_realtime_tools():
    assert [tool.name for tool in parse_tools(TOOLS, "session")] == ["get_time", "calculate"]


def test_the_calculator_does_arithmetic_only():
    assert calculate("12 * (3 + 4)") == 84
    assert json.loads(run_tool("calculate", '{"expression": "7 x 6"}'))["result"] == 42
    for bad in ("__import__('os')", "2 ** 10000", "1 / 0"):
        assert "error" in json.loads(run_tool("calculate", json.dumps({"expression": bad})))


def test_the_clock_tells_the_time():
    assert ":" in json.loads(run_tool("get_time", "{}"))["time"]


@pytest.mark.parametrize("name", ["nope"])
def test_an_unknown_tool_is_an_error_result(name):
    assert "error" in json.loads(run_tool(name, "{}"))
