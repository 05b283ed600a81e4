"""Example tools for the demos (``quillman say/talk --demo-tools``): a clock and a calculator.

They run on the client side, as Realtime tools always do: the client declares them in
``session.tools``, runs the calls the model makes and sends each result back as a
``function_call_output``. Nothing declares them by default.
"""

from __future__ import annotations

import ast
import json
import operator
from datetime import datetime

TOOLS = [
    {"type": "function", "name": "get_time", "description": "Get the current local time and date.",
     "parameters": {"type": "object", "properties": {}}},
    {"type": "function", "name": "calculate",
     "description": "Calculate an arithmetic expression such as 12 * (3 + 4).",
     "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                    "required": ["expression"]}},
]

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
              ast.Div: operator.truediv, ast.Pow: operator.pow, ast.USub: operator.neg,
              ast.UAdd: operator.pos, ast.Mod: operator.mod}


def calculate(expression: str) -> float:
    """Arithmetic only (numbers, + - * / % **, parentheses): never ``eval``."""
    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            if isinstance(node.op, ast.Pow) and abs(value(node.right)) > 100:
                raise ValueError("exponent too large")
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.operand))
        raise ValueError("only numbers and + - * / % ** ( ) are allowed")

    return value(ast.parse(expression.replace("x", "*").replace("^", "**"), mode="eval").body)


def run_tool(name: str, arguments: str) -> str:
    """A call's result as the JSON text sent back to the model."""
    try:
        args = json.loads(arguments or "{}")
        if name == "get_time":
            return json.dumps({"time": datetime.now().strftime("%H:%M"), "date": datetime.now().strftime("%A %d %B %Y")})
        if name == "calculate":
            return json.dumps({"expression": args["expression"], "result": calculate(str(args["expression"]))})
        return json.dumps({"error": f"unknown tool {name}"})
    except (ValueError, KeyError, SyntaxError, ZeroDivisionError, TypeError) as exc:
        return json.dumps({"error": str(exc)})
