// The conversation state machine: one hand-written transition table and a pure reducer.
// No DOM, no sockets, no timers: transition() returns the next state plus a list of named
// effects, and app.js performs them. That keeps every rule here unit-testable in Node.

export const S = Object.freeze({
  WARMING: "warming", // GET /prewarm in flight: models are loading
  IDLE: "idle", // ready, nothing open
  CONNECTING: "connecting", // asking for the mic, opening the socket, waiting for session.created
  LISTENING: "listening", // connected; waiting for the user
  USER_SPEAKING: "userSpeaking", // server VAD heard speech start
  THINKING: "thinking", // turn ended (or text sent); waiting for the reply's first audio
  ASSISTANT_SPEAKING: "assistantSpeaking", // reply audio is playing
  RECONNECTING: "reconnecting", // socket dropped; a retry is scheduled (backoff)
  ERROR: "error", // needs the user: mic denied, server unreachable, ...
});

// Effects app.js knows how to run. Named, so tests can assert on them.
export const FX = Object.freeze({
  CONNECT: "connect", // mic (in voice mode) then socket
  CONFIGURE: "configureSession", // send session.update
  DISCONNECT: "disconnect", // close the socket
  RELEASE_MIC: "releaseMic", // stop capture and the mic track (kept across reconnects)
  STOP_PLAYBACK: "stopPlayback", // drop everything queued, silence now
  CANCEL_RESPONSE: "cancelResponse", // send response.cancel
  SCHEDULE_RECONNECT: "scheduleReconnect", // arm the backoff timer (ctx.attempt says which try)
  CANCEL_RECONNECT: "cancelReconnect",
});

export const MAX_RECONNECT_ATTEMPTS = 6;
export const THINKING_TIMEOUT_MS = 30000;

/** Exponential backoff with ±20 % jitter (so many clients don't retry in step). attempt is 1-based. */
export function backoffDelay(attempt, rand = Math.random) {
  const base = Math.min(500 * 2 ** Math.max(0, attempt - 1), 8000);
  return Math.round(base * (0.8 + 0.4 * rand()));
}

export const initialContext = Object.freeze({
  mode: "voice", // "voice" | "text" (text only: the mic was refused and the user chose to type)
  attempt: 0, // reconnect attempts since the last good session
  responseId: null, // the reply we are showing/playing; others are stale
  droppedIds: [], // replies we interrupted: their late events are ignored
  responseOpen: false, // current reply still streaming (no response.done yet)
  playing: false, // audio queued or sounding
  notice: null, // {level: "info"|"warn"|"error", text} shown to the user
  warm: "pending", // GET /prewarm: "pending" | "ready" | "failed" | "broken" (a model did not start)
  micProblem: false, // the last error was the microphone's: offer typing instead
});

export function initialState() {
  return { state: S.WARMING, ctx: initialContext };
}

// ---- guards and context updates (pure) -------------------------------------------------------

const isDropped = (ctx, ev) => ev.responseId != null && ctx.droppedIds.includes(ev.responseId);
// A reply we didn't see created (responseId null) still counts as ours unless we dropped it.
const isCurrent = (ctx, ev) =>
  !isDropped(ctx, ev) && (ctx.responseId == null || ev.responseId == null || ev.responseId === ctx.responseId);
const canRetry = (ctx) => ctx.attempt < MAX_RECONNECT_ATTEMPTS;

const notice = (level, text) => ({ notice: { level, text } });

/** A clean context for a new call; warm-up status belongs to the server, not the call. */
const fresh = (ctx, mode = "voice") => ({ ...initialContext, warm: ctx.warm, mode });

/** Forget the current reply and remember its id so its in-flight events are ignored. */
const dropResponse = (ctx) => ({
  responseId: null,
  responseOpen: false,
  playing: false,
  droppedIds: ctx.responseId ? [...ctx.droppedIds, ctx.responseId].slice(-8) : ctx.droppedIds,
});

const closedNotice = (ctx) =>
  notice("warn", `Connection lost. Reconnecting (attempt ${ctx.attempt + 1} of ${MAX_RECONNECT_ATTEMPTS})…`);

// ---- the table ---------------------------------------------------------------------------------
// table[state][EVENT] = a transition, or a list tried in order (the first whose guard passes wins).
// transition: {target?, guard?(ctx, ev), assign?(ctx, ev) -> partial ctx, effects?: [] | (ctx, ev) => []}
// No target = stay in the same state (context/effects only). Events a state doesn't list are ignored.

const END_CALL = {
  target: S.IDLE,
  assign: (ctx) => fresh(ctx),
  effects: [FX.STOP_PLAYBACK, FX.DISCONNECT, FX.RELEASE_MIC],
};

const SOCKET_DROPPED = [
  {
    guard: canRetry,
    target: S.RECONNECTING,
    assign: (ctx) => ({ ...dropResponse(ctx), attempt: ctx.attempt + 1, ...closedNotice(ctx) }),
    effects: [FX.STOP_PLAYBACK, FX.DISCONNECT, FX.SCHEDULE_RECONNECT],
  },
  {
    target: S.ERROR,
    assign: (ctx) => ({
      ...dropResponse(ctx),
      ...notice("error", "Can't reach the server. Check that it is running, then try again."),
    }),
    effects: [FX.STOP_PLAYBACK, FX.DISCONNECT, FX.RELEASE_MIC],
  },
];

// Speech start while a reply is pending or playing = barge-in: silence now, drop what is queued.
// The server cancels the reply itself (interrupt_response); we only stop listening to it.
const BARGE_IN = { target: S.USER_SPEAKING, assign: dropResponse, effects: [FX.STOP_PLAYBACK] };

// Typed message while a reply is pending or playing: we cancel it explicitly (no VAD involved).
const TEXT_INTERRUPT = {
  target: S.THINKING,
  assign: dropResponse,
  effects: (ctx) => (ctx.responseOpen ? [FX.STOP_PLAYBACK, FX.CANCEL_RESPONSE] : [FX.STOP_PLAYBACK]),
};

const RESPONSE_CREATED = {
  target: S.THINKING,
  guard: (ctx, ev) => !isDropped(ctx, ev),
  assign: (ctx, ev) => ({ responseId: ev.responseId ?? null, responseOpen: true }),
};

// Shared by every state where the session is up.
const CONNECTED = {
  STOP: END_CALL,
  SOCKET_CLOSED: SOCKET_DROPPED,
};

export const TABLE = Object.freeze({
  [S.WARMING]: {
    PREWARM_OK: { target: S.IDLE, assign: () => ({ warm: "ready" }) },
    // A keyed server's /prewarm needs the key a page using client secrets does not have: the
    // first reply may just be slower. Not a failure, and no claim that the models are warm.
    PREWARM_SKIPPED: { target: S.IDLE, assign: () => ({ warm: "skipped" }) },
    PREWARM_FAILED: { target: S.IDLE, assign: prewarmFailed },
    SERVER_FAILED: { target: S.ERROR, assign: serverFailed },
    // Starting before warm-up ends is allowed: the server just answers later.
    START: { target: S.CONNECTING, assign: (ctx, ev) => ({ mode: ev.mode ?? "voice" }), effects: [FX.CONNECT] },
  },
  [S.IDLE]: {
    START: {
      target: S.CONNECTING,
      assign: (ctx, ev) => fresh(ctx, ev.mode),
      effects: [FX.CONNECT],
    },
  },
  [S.CONNECTING]: {
    SESSION_READY: {
      target: S.LISTENING,
      // A successful reconnect clears its own notice; other notices stay until dismissed.
      assign: (ctx) => ({ attempt: 0, notice: ctx.attempt > 0 ? notice("info", "Reconnected.").notice : ctx.notice }),
      effects: [FX.CONFIGURE],
    },
    // The server is up but turned the socket away before accepting it (API key, origin, capacity):
    // retrying the same way won't help, so say what to do.
    SOCKET_REFUSED: {
      target: S.ERROR,
      assign: () =>
        notice(
          "error",
          "The server refused the connection. It may need an API key: open this page with #key=YOUR_KEY at the end of its address. Or it is busy: try again in a moment.",
        ),
      effects: [FX.DISCONNECT, FX.RELEASE_MIC],
    },
    MIC_DENIED: {
      target: S.ERROR,
      assign: () => ({
        micProblem: true,
        ...notice(
          "error",
          "Microphone access was blocked. Allow the microphone for this site and try again, or type your message instead.",
        ),
      }),
      effects: [FX.DISCONNECT, FX.RELEASE_MIC],
    },
    MIC_FAILED: {
      target: S.ERROR,
      assign: (ctx, ev) => ({
        micProblem: true,
        ...notice("error", `Couldn't open the microphone (${ev.message}). You can type instead.`),
      }),
      effects: [FX.DISCONNECT, FX.RELEASE_MIC],
    },
    ...CONNECTED,
  },
  [S.LISTENING]: {
    SPEECH_STARTED: { target: S.USER_SPEAKING },
    TEXT_SENT: TEXT_INTERRUPT,
    RESPONSE_CREATED,
    ...CONNECTED,
  },
  [S.USER_SPEAKING]: {
    SPEECH_STOPPED: { target: S.THINKING },
    RESPONSE_CREATED,
    TEXT_SENT: TEXT_INTERRUPT,
    ...CONNECTED,
  },
  [S.THINKING]: {
    SPEECH_STARTED: BARGE_IN,
    TEXT_SENT: TEXT_INTERRUPT,
    RESPONSE_CREATED,
    AUDIO_STARTED: { guard: isCurrent, target: S.ASSISTANT_SPEAKING, assign: () => ({ playing: true }) },
    // A reply that ends without audio (failed, text only, empty): back to listening.
    RESPONSE_DONE: {
      guard: isCurrent,
      target: S.LISTENING,
      assign: () => ({ responseId: null, responseOpen: false }),
    },
    // Nothing came back at all (e.g. the server dropped a too-short turn without a reply).
    TIMEOUT: {
      guard: (ctx) => ctx.responseId == null,
      target: S.LISTENING,
      assign: () => notice("warn", "No reply from the server for that turn."),
    },
    ...CONNECTED,
  },
  [S.ASSISTANT_SPEAKING]: {
    SPEECH_STARTED: BARGE_IN,
    TEXT_SENT: TEXT_INTERRUPT,
    RESPONSE_CREATED,
    AUDIO_STARTED: { guard: isCurrent, assign: () => ({ playing: true }) },
    // The server usually finishes sending long before playback ends: wait for the queue to drain.
    RESPONSE_DONE: [
      { guard: (ctx, ev) => isCurrent(ctx, ev) && !ctx.playing, target: S.LISTENING, assign: () => ({ responseId: null, responseOpen: false }) },
      { guard: isCurrent, assign: () => ({ responseOpen: false }) },
    ],
    // The queue can also run dry mid-reply (network or TTS slower than real time): keep waiting.
    PLAYBACK_DRAINED: [
      { guard: (ctx) => !ctx.responseOpen, target: S.LISTENING, assign: () => ({ responseId: null, playing: false }) },
      { assign: () => ({ playing: false }) },
    ],
    ...CONNECTED,
  },
  [S.RECONNECTING]: {
    RETRY: { target: S.CONNECTING, effects: [FX.CONNECT] },
    STOP: { ...END_CALL, effects: [FX.CANCEL_RECONNECT, FX.DISCONNECT, FX.RELEASE_MIC] },
  },
  [S.ERROR]: {
    START: {
      target: S.CONNECTING,
      assign: (ctx, ev) => fresh(ctx, ev.mode),
      effects: [FX.CONNECT],
    },
    STOP: { target: S.IDLE, assign: (ctx) => fresh(ctx) },
  },
});

// Events every state accepts (looked up after the state's own entries).
const ANY = {
  SERVER_ERROR: { assign: (ctx, ev) => notice("error", serverErrorText(ev)) },
  DISMISS_NOTICE: { assign: () => ({ notice: null }) },
  // The mic track ended mid-call (unplugged, permission revoked): keep the call, in text mode.
  MIC_LOST: {
    assign: () => ({
      mode: "text",
      ...notice("warn", "The microphone stopped (unplugged or blocked). You can keep typing, or end the call and start again to talk."),
    }),
    effects: [FX.RELEASE_MIC],
  },
  // Warm-up may finish after the user already started a call.
  PREWARM_OK: { assign: () => ({ warm: "ready" }) },
  PREWARM_SKIPPED: { assign: () => ({ warm: "skipped" }) },
  PREWARM_FAILED: { assign: prewarmFailed },
  // A model deployment failed to start (GET /prewarm or /healthz said which): waiting is pointless.
  SERVER_FAILED: { assign: serverFailed },
};

/** ev.failures: [{role, reason}] from the server, e.g. {role: "the language model", reason: "..."} */
export function serverFailedText(failures) {
  const roles = failures.map((f) => f.role || "a model");
  const what = roles.length > 1 ? `${roles.slice(0, -1).join(", ")} and ${roles.at(-1)}` : roles[0];
  const reasons = failures.map((f) => f.reason).filter(Boolean).join(" / ");
  const text = `${what.charAt(0).toUpperCase()}${what.slice(1)} failed to start. Run \`quillman doctor\` on the server to see why.`;
  return reasons ? `${text} (${reasons})` : text;
}

function serverFailed(ctx, ev) {
  return { warm: "broken", ...notice("error", serverFailedText(ev.failures)) };
}

function prewarmFailed(ctx, ev) {
  return { warm: "failed", ...notice("warn", `Couldn't warm up the models (${ev.message}). The first reply may be slow.`) };
}

function serverErrorText(ev) {
  const msg = ev.message || "The server reported an error.";
  return ev.code ? `${msg} (${ev.code})` : msg;
}

/**
 * The reducer. current = {state, ctx}; event = {type, ...payload}.
 * Returns {state, ctx, effects, changed}; an event the current state doesn't handle returns the
 * same state and context with no effects (changed = false).
 */
export function transition(current, event) {
  const options = TABLE[current.state]?.[event.type] ?? ANY[event.type];
  const list = options == null ? [] : Array.isArray(options) ? options : [options];
  const t = list.find((o) => !o.guard || o.guard(current.ctx, event));
  if (!t) return { state: current.state, ctx: current.ctx, effects: [], changed: false };
  const ctx = t.assign ? { ...current.ctx, ...t.assign(current.ctx, event) } : current.ctx;
  const effects = typeof t.effects === "function" ? t.effects(current.ctx, event) : t.effects ?? [];
  return { state: t.target ?? current.state, ctx, effects, changed: true };
}

/** True while a socket session should exist (used by app.js to gate sending audio). */
export function isConnected(state) {
  return state === S.LISTENING || state === S.USER_SPEAKING || state === S.THINKING || state === S.ASSISTANT_SPEAKING;
}
