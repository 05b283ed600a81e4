import { test } from "node:test";
import assert from "node:assert/strict";
import { FX, MAX_RECONNECT_ATTEMPTS, S, TABLE, backoffDelay, initialState, isConnected, serverFailedText, transition } from "../state.js";

/** Run events in order; returns the final machine and every effect emitted, in order. */
function run(events, start = initialState()) {
  let m = start;
  const effects = [];
  for (const ev of events) {
    const next = transition(m, typeof ev === "string" ? { type: ev } : ev);
    effects.push(...next.effects);
    m = { state: next.state, ctx: next.ctx };
  }
  return { ...m, effects };
}

const at = (state, ctx = {}) => ({ state, ctx: { ...initialState().ctx, ...ctx } });
const listening = () => run(["PREWARM_OK", "START", "SESSION_READY"]);

test("every target in the table is a real state", () => {
  const states = new Set(Object.values(S));
  for (const [from, events] of Object.entries(TABLE)) {
    assert.ok(states.has(from), from);
    for (const [ev, spec] of Object.entries(events)) {
      for (const t of [spec].flat()) {
        if (t.target) assert.ok(states.has(t.target), `${from} --${ev}--> ${t.target}`);
        for (const fx of Array.isArray(t.effects) ? t.effects : []) assert.ok(Object.values(FX).includes(fx), fx);
      }
    }
  }
  // And every state has a way out (no dead ends).
  for (const s of Object.values(S)) assert.ok(Object.keys(TABLE[s]).length > 0, s);
});

test("warm-up, then a spoken turn end to end", () => {
  let m = run(["PREWARM_OK"]);
  assert.equal(m.state, S.IDLE);
  assert.equal(m.ctx.warm, "ready");

  m = run([{ type: "START", mode: "voice" }], m);
  assert.equal(m.state, S.CONNECTING);
  assert.deepEqual(m.effects, [FX.CONNECT]);

  m = run(["SESSION_READY"], m);
  assert.equal(m.state, S.LISTENING);
  assert.deepEqual(m.effects, [FX.CONFIGURE]);

  const steps = [
    ["SPEECH_STARTED", S.USER_SPEAKING],
    ["SPEECH_STOPPED", S.THINKING],
    [{ type: "RESPONSE_CREATED", responseId: "r1" }, S.THINKING],
    [{ type: "AUDIO_STARTED", responseId: "r1" }, S.ASSISTANT_SPEAKING],
    [{ type: "RESPONSE_DONE", responseId: "r1", status: "completed" }, S.ASSISTANT_SPEAKING], // audio still playing
    ["PLAYBACK_DRAINED", S.LISTENING],
  ];
  for (const [ev, expected] of steps) {
    m = run([ev], m);
    assert.equal(m.state, expected, JSON.stringify(ev));
  }
  assert.equal(m.ctx.responseId, null);
  assert.equal(m.ctx.warm, "ready");
});

test("playback that drains before response.done waits for it (underrun mid-reply)", () => {
  let m = run(["SPEECH_STARTED", "SPEECH_STOPPED", { type: "RESPONSE_CREATED", responseId: "r1" }, { type: "AUDIO_STARTED", responseId: "r1" }], listening());
  m = run(["PLAYBACK_DRAINED"], m);
  assert.equal(m.state, S.ASSISTANT_SPEAKING);
  assert.equal(m.ctx.playing, false);
  m = run([{ type: "AUDIO_STARTED", responseId: "r1" }], m); // more audio arrived
  assert.equal(m.ctx.playing, true);
  m = run(["PLAYBACK_DRAINED", { type: "RESPONSE_DONE", responseId: "r1" }], m);
  assert.equal(m.state, S.LISTENING);
});

test("barge-in: speech while the reply plays stops playback and drops that reply", () => {
  let m = run(["SPEECH_STARTED", "SPEECH_STOPPED", { type: "RESPONSE_CREATED", responseId: "r1" }, { type: "AUDIO_STARTED", responseId: "r1" }], listening());
  m = run(["SPEECH_STARTED"], m);
  assert.equal(m.state, S.USER_SPEAKING);
  assert.deepEqual(m.effects, [FX.STOP_PLAYBACK]); // the server cancels; we only go quiet
  assert.equal(m.ctx.responseId, null);
  assert.deepEqual(m.ctx.droppedIds, ["r1"]);

  // The cancelled reply's late events change nothing...
  const late = run([{ type: "RESPONSE_DONE", responseId: "r1", status: "cancelled" }, { type: "AUDIO_STARTED", responseId: "r1" }], m);
  assert.equal(late.state, S.USER_SPEAKING);
  // ...even once we are waiting for the next reply.
  m = run(["SPEECH_STOPPED", { type: "RESPONSE_DONE", responseId: "r1", status: "cancelled" }], m);
  assert.equal(m.state, S.THINKING);
  m = run([{ type: "RESPONSE_CREATED", responseId: "r1" }], m); // a dropped id can't come back
  assert.equal(m.ctx.responseId, null);
  m = run([{ type: "RESPONSE_CREATED", responseId: "r2" }, { type: "AUDIO_STARTED", responseId: "r2" }], m);
  assert.equal(m.state, S.ASSISTANT_SPEAKING);
  assert.equal(m.ctx.responseId, "r2");
});

test("barge-in while thinking also drops the pending reply", () => {
  const m = run(["SPEECH_STARTED"], run(["SPEECH_STARTED", "SPEECH_STOPPED", { type: "RESPONSE_CREATED", responseId: "r1" }], listening()));
  assert.equal(m.state, S.USER_SPEAKING);
  assert.deepEqual(m.ctx.droppedIds, ["r1"]);
});

test("typed message: thinking, and an open reply is cancelled first", () => {
  let m = run(["TEXT_SENT"], listening());
  assert.equal(m.state, S.THINKING);
  assert.deepEqual(m.effects, [FX.STOP_PLAYBACK]); // nothing to cancel

  m = run([{ type: "RESPONSE_CREATED", responseId: "r1" }, { type: "AUDIO_STARTED", responseId: "r1" }], m);
  m = run(["TEXT_SENT"], m);
  assert.equal(m.state, S.THINKING);
  assert.deepEqual(m.effects, [FX.STOP_PLAYBACK, FX.CANCEL_RESPONSE]);
  // The cancelled reply's response.done must not end the wait for the new one.
  m = run([{ type: "RESPONSE_DONE", responseId: "r1", status: "cancelled" }], m);
  assert.equal(m.state, S.THINKING);
});

test("a reply that finishes without audio returns to listening", () => {
  const m = run(["TEXT_SENT", { type: "RESPONSE_CREATED", responseId: "r1" }, { type: "RESPONSE_DONE", responseId: "r1", status: "failed" }], listening());
  assert.equal(m.state, S.LISTENING);
  assert.equal(m.ctx.responseOpen, false);
});

test("thinking times out only if no reply was ever created", () => {
  const waiting = run(["SPEECH_STARTED", "SPEECH_STOPPED"], listening());
  const timedOut = run(["TIMEOUT"], waiting);
  assert.equal(timedOut.state, S.LISTENING);
  assert.equal(timedOut.ctx.notice.level, "warn");
  const slow = run([{ type: "RESPONSE_CREATED", responseId: "r1" }, "TIMEOUT"], waiting);
  assert.equal(slow.state, S.THINKING);
});

test("socket drop: reconnect with backoff, then success clears the attempt count", () => {
  let m = run(["SPEECH_STARTED", "SPEECH_STOPPED", { type: "RESPONSE_CREATED", responseId: "r1" }, { type: "AUDIO_STARTED", responseId: "r1" }], listening());
  m = run([{ type: "SOCKET_CLOSED", code: 1006 }], m);
  assert.equal(m.state, S.RECONNECTING);
  assert.deepEqual(m.effects, [FX.STOP_PLAYBACK, FX.DISCONNECT, FX.SCHEDULE_RECONNECT]); // mic kept
  assert.equal(m.ctx.attempt, 1);
  assert.equal(m.ctx.notice.level, "warn");
  assert.equal(m.ctx.responseId, null);

  m = run(["RETRY"], m);
  assert.equal(m.state, S.CONNECTING);
  assert.deepEqual(m.effects, [FX.CONNECT]);
  m = run([{ type: "SOCKET_CLOSED", code: 1006 }, "RETRY"], m); // server still down
  assert.equal(m.ctx.attempt, 2);
  m = run(["SESSION_READY"], m);
  assert.equal(m.state, S.LISTENING);
  assert.equal(m.ctx.attempt, 0);
  assert.deepEqual(m.ctx.notice, { level: "info", text: "Reconnected." });
});

test("socket drop: gives up after MAX_RECONNECT_ATTEMPTS with an error", () => {
  let m = listening();
  for (let i = 0; i < MAX_RECONNECT_ATTEMPTS; i++) {
    m = run(["SOCKET_CLOSED", "RETRY"], m);
    assert.equal(m.state, S.CONNECTING);
  }
  m = run(["SOCKET_CLOSED"], m);
  assert.equal(m.state, S.ERROR);
  assert.equal(m.ctx.notice.level, "error");
  assert.ok(m.effects.includes(FX.RELEASE_MIC));
  // "Try again" starts over with a fresh count.
  m = run(["START"], m);
  assert.equal(m.state, S.CONNECTING);
  assert.equal(m.ctx.attempt, 0);
  assert.equal(m.ctx.notice, null);
});

test("a socket refused while the server is up is an error to act on, not a retry loop", () => {
  const m = run(["SOCKET_REFUSED"], run(["PREWARM_OK", "START"]));
  assert.equal(m.state, S.ERROR);
  assert.deepEqual(m.effects, [FX.DISCONNECT, FX.RELEASE_MIC]);
  assert.match(m.ctx.notice.text, /#key=/);
  assert.equal(m.ctx.micProblem, false);
  // Only a connecting socket can be refused.
  assert.equal(transition(listening(), { type: "SOCKET_REFUSED" }).changed, false);
});

test("mic denied: error state offering text; typing instead connects in text mode", () => {
  let m = run(["PREWARM_OK", "START", "MIC_DENIED"]);
  assert.equal(m.state, S.ERROR);
  assert.equal(m.ctx.micProblem, true);
  assert.match(m.ctx.notice.text, /Microphone access was blocked/);
  m = run([{ type: "START", mode: "text" }], m);
  assert.equal(m.state, S.CONNECTING);
  assert.equal(m.ctx.mode, "text");
  assert.equal(m.ctx.micProblem, false);
  assert.equal(m.ctx.warm, "ready");
});

test("STOP ends the call from every connected state and while reconnecting", () => {
  for (const state of [S.CONNECTING, S.LISTENING, S.USER_SPEAKING, S.THINKING, S.ASSISTANT_SPEAKING]) {
    const m = run(["STOP"], at(state, { warm: "ready", responseId: "r9" }));
    assert.equal(m.state, S.IDLE, state);
    assert.deepEqual(m.effects, [FX.STOP_PLAYBACK, FX.DISCONNECT, FX.RELEASE_MIC], state);
    assert.equal(m.ctx.responseId, null);
    assert.equal(m.ctx.warm, "ready", "warm-up status outlives a call");
  }
  const m = run(["STOP"], at(S.RECONNECTING, { attempt: 3 }));
  assert.equal(m.state, S.IDLE);
  assert.deepEqual(m.effects, [FX.CANCEL_RECONNECT, FX.DISCONNECT, FX.RELEASE_MIC]);
});

test("a mic that dies mid-call leaves the call up in text mode", () => {
  const m = run(["SPEECH_STARTED", "MIC_LOST"], listening());
  assert.equal(m.state, S.USER_SPEAKING);
  assert.equal(m.ctx.mode, "text");
  assert.deepEqual(m.effects, [FX.RELEASE_MIC]);
  assert.match(m.ctx.notice.text, /microphone stopped/);
});

test("server error events show a notice and keep the state", () => {
  for (const state of [S.LISTENING, S.THINKING, S.CONNECTING]) {
    const m = run([{ type: "SERVER_ERROR", code: "invalid_audio", message: "Bad base64" }], at(state));
    assert.equal(m.state, state);
    assert.deepEqual(m.ctx.notice, { level: "error", text: "Bad base64 (invalid_audio)" });
    assert.equal(run(["DISMISS_NOTICE"], m).ctx.notice, null);
  }
});

test("prewarm failure is a warning, and starting before warm-up ends is allowed", () => {
  const failed = run([{ type: "PREWARM_FAILED", message: "HTTP 500" }]);
  assert.equal(failed.state, S.IDLE);
  assert.equal(failed.ctx.warm, "failed");
  assert.match(failed.ctx.notice.text, /HTTP 500/);

  let early = run(["START"]);
  assert.equal(early.state, S.CONNECTING);
  early = run(["SESSION_READY", "PREWARM_OK"], early);
  assert.equal(early.state, S.LISTENING);
  assert.equal(early.ctx.warm, "ready");
});

test("unknown or out-of-place events are ignored without effects", () => {
  const m = listening();
  for (const ev of ["NOPE", "SPEECH_STOPPED", "PLAYBACK_DRAINED", "RETRY", "SESSION_READY"]) {
    const next = transition(m, { type: ev });
    assert.equal(next.changed, false, ev);
    assert.equal(next.state, S.LISTENING);
    assert.equal(next.ctx, m.ctx, "context untouched");
    assert.deepEqual(next.effects, []);
  }
});

test("transition is pure: the input machine is never mutated", () => {
  const m = run(["SPEECH_STARTED", "SPEECH_STOPPED", { type: "RESPONSE_CREATED", responseId: "r1" }], listening());
  const snapshot = structuredClone(m.ctx);
  transition(m, { type: "SPEECH_STARTED" });
  transition(m, { type: "SOCKET_CLOSED" });
  assert.deepEqual(m.ctx, snapshot);
});

test("backoffDelay grows exponentially with jitter and a cap", () => {
  const mid = () => 0.5; // no jitter
  assert.deepEqual([1, 2, 3, 4, 5, 6, 7].map((a) => backoffDelay(a, mid)), [500, 1000, 2000, 4000, 8000, 8000, 8000]);
  assert.equal(backoffDelay(1, () => 0), 400);
  assert.equal(backoffDelay(1, () => 1), 600);
});

test("isConnected", () => {
  assert.deepEqual(
    Object.values(S).filter(isConnected),
    [S.LISTENING, S.USER_SPEAKING, S.THINKING, S.ASSISTANT_SPEAKING],
  );
});

test("a model that failed to start ends warming with an error naming it, not 'warming up' forever", () => {
  const failures = [{ role: "the language model", reason: "The actor died unexpectedly" }];
  const m = run([{ type: "SERVER_FAILED", failures }]);
  assert.equal(m.state, S.ERROR);
  assert.equal(m.ctx.warm, "broken");
  assert.equal(m.ctx.notice.level, "error");
  assert.match(m.ctx.notice.text, /^The language model failed to start\. Run `quillman doctor`/);
  assert.match(m.ctx.notice.text, /actor died/);
  // During a call it is shown too, and the call goes on (the other models may still answer).
  const inCall = run([{ type: "SERVER_FAILED", failures }], listening());
  assert.equal(inCall.state, S.LISTENING);
  assert.match(inCall.ctx.notice.text, /language model failed/);
  // Try again still works from the error state.
  assert.equal(run(["START"], { state: m.state, ctx: m.ctx }).state, S.CONNECTING);
});

test("several failed models are named together", () => {
  const text = serverFailedText([{ role: "the language model" }, { role: "speech synthesis (TTS)", reason: "x" }]);
  assert.equal(text, "The language model and speech synthesis (TTS) failed to start. Run `quillman doctor` on the server to see why. (x)");
});

test("a warm-up the page may not run (a keyed server, a page with a client secret) is skipped, not failed", () => {
  const m = run(["PREWARM_SKIPPED"]);
  assert.equal(m.state, S.IDLE);
  assert.equal(m.ctx.warm, "skipped");
  assert.equal(m.ctx.notice, null);
  const during = run(["PREWARM_SKIPPED"], run([{ type: "START", mode: "voice" }]));
  assert.equal(during.state, S.CONNECTING);
  assert.equal(during.ctx.warm, "skipped");
});

test("over WebRTC the server's stopped event ends a reply's playback like the page's own drain", () => {
  let m = run([{ type: "SPEECH_STARTED" }, { type: "SPEECH_STOPPED" }, { type: "RESPONSE_CREATED", responseId: "r1" },
               { type: "AUDIO_STARTED", responseId: "r1" }, { type: "RESPONSE_DONE", responseId: "r1" }], listening());
  assert.equal(m.state, S.ASSISTANT_SPEAKING); // output_audio_buffer.stopped comes after response.done
  m = run(["PLAYBACK_DRAINED"], m);
  assert.equal(m.state, S.LISTENING);
});
