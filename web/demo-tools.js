// The demo's example tools (open the page as /#tools=demo): a clock and a calculator, run here in
// the browser as Realtime tools always run on the client. Same definitions as quillman/demo_tools.py.

export const DEMO_TOOLS = [
  { type: "function", name: "get_time", description: "Get the current local time and date.",
    parameters: { type: "object", properties: {} } },
  { type: "function", name: "calculate", description: "Calculate an arithmetic expression such as 12 * (3 + 4).",
    parameters: { type: "object", properties: { expression: { type: "string" } }, required: ["expression"] } },
];

// Arithmetic only (numbers, + - * / %, parentheses), by a small parser: never eval.
export function calculate(expression) {
  const tokens = String(expression).replace(/x/g, "*").match(/\d+(?:\.\d+)?|[-+*/%()]|\S/g) ?? [];
  let i = 0;
  const peek = () => tokens[i];
  const take = () => tokens[i++];
  function primary() {
    const t = take();
    if (t === "(") { const v = sum(); if (take() !== ")") throw new Error("missing )"); return v; }
    if (t === "-") return -primary();
    if (t === "+") return primary();
    if (t !== undefined && /^\d/.test(t)) return Number(t);
    throw new Error("only numbers and + - * / % ( ) are allowed");
  }
  function product() {
    let v = primary();
    while (["*", "/", "%"].includes(peek())) {
      const op = take(), r = primary();
      if (op !== "*" && r === 0) throw new Error("division by zero");
      v = op === "*" ? v * r : op === "/" ? v / r : v % r;
    }
    return v;
  }
  function sum() {
    let v = product();
    while (["+", "-"].includes(peek())) v = take() === "+" ? v + product() : v - product();
    return v;
  }
  const value = sum();
  if (i !== tokens.length) throw new Error("unexpected " + tokens[i]);
  return value;
}

export function runTool(name, argumentsJson, now = new Date()) {
  try {
    const args = JSON.parse(argumentsJson || "{}");
    if (name === "get_time") return JSON.stringify({ time: now.toTimeString().slice(0, 5), date: now.toDateString() });
    if (name === "calculate") return JSON.stringify({ expression: args.expression, result: calculate(args.expression) });
    return JSON.stringify({ error: `unknown tool ${name}` });
  } catch (err) {
    return JSON.stringify({ error: String(err.message ?? err) });
  }
}
