import { test } from "node:test";
import assert from "node:assert/strict";
import { DEMO_TOOLS, calculate, runTool } from "../demo-tools.js";

test("the calculator does arithmetic only", () => {
  assert.equal(calculate("12 * (3 + 4)"), 84);
  assert.equal(calculate("7 x 6"), 42);
  assert.equal(JSON.parse(runTool("calculate", '{"expression": "10 / 4"}')).result, 2.5);
  for (const bad of ["alert(1)", "1 / 0", "2 +"]) assert.ok(JSON.parse(runTool("calculate", JSON.stringify({ expression: bad }))).error);
});

test("the clock and the tool list", () => {
  assert.match(JSON.parse(runTool("get_time", "{}", new Date(2026, 0, 2, 9, 5))).time, /^09:05$/);
  assert.deepEqual(DEMO_TOOLS.map((t) => t.name), ["get_time", "calculate"]);
});
