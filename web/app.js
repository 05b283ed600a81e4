// The page: wires the state machine (state.js) to the microphone, the transport (a WebRTC call,
// rtc.js, by default; the /v1/realtime websocket as the fallback), playback and the DOM. Rules
// live in state.js; this file performs the effects it names and turns DOM, audio and transport
// happenings into machine events. Over WebRTC the server plays the reply on a track and reports
// it (output_audio_buffer.*); over the websocket the page plays the deltas itself (playback.js).

import { FX, S, THINKING_TIMEOUT_MS, backoffDelay, initialState, isConnected, transition } from "./state.js";
import { bytesToBase64, decodeAudio, meterLevel, pcm16ToBytes } from "./pcm.js";
import { Player } from "./playback.js";
import { Transcript } from "./transcript.js";
import { DEMO_TOOLS, runTool } from "./demo-tools.js";
import { CallRefused, TRANSPORT_KEY, chooseTransport, credential, openCall } from "./rtc.js";

const SESSION_RATE = 24000; // the only pcm rate the GA protocol names
const FRAME_MS = 40; // input_audio_buffer.append frame length
const VOICED_RMS = 0.02; // ~ -34 dBFS: a frame this loud counts as speech for the page's latency mark
const MAX_SOCKET_BACKLOG = 1 << 20; // bytes; past this the server is stalled: drop mic frames
const VOICE_KEY = "quillman.voice";
const TURN_KEY = "quillman.turn_detection";
const API_KEY_STORE = "quillman.apiKey";
// Browsers can't set an Authorization header on a websocket: the key rides as a subprotocol,
// as OpenAI's own browser clients do (the server accepts it as `openai-insecure-api-key.<key>`).
const KEY_SUBPROTOCOL = "openai-insecure-api-key.";
// The example tools are declared only when the page is opened as /#tools=demo.
const DEMO_TOOLS_ON = new URLSearchParams(location.hash.slice(1)).get("tools") === "demo";
// /#transport=websocket (or webrtc) picks the transport for this page, over the saved choice.
const HASH_TRANSPORT = new URLSearchParams(location.hash.slice(1)).get("transport");

// Paths are relative so the page also works behind a proxy prefix.
const endpoint = (path) => new URL(path, document.baseURI);

// ---- DOM -----------------------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);
const ui = {
  app: document.querySelector(".app"),
  serverStatus: $("server-status"),
  serverStatusText: $("server-status-text"),
  voiceField: $("voice-field"),
  voiceSelect: $("voice-select"),
  turnSelect: $("turn-select"),
  transportSelect: $("transport-select"),
  notice: $("notice"),
  noticeText: $("notice-text"),
  noticeDismiss: $("notice-dismiss"),
  conversation: document.querySelector(".conversation"),
  transcript: $("transcript"),
  emptyHint: $("empty-hint"),
  statusText: $("status-text"),
  meterFill: $("meter-fill"),
  callButton: $("call-button"),
  callButtonText: $("call-button-text"),
  textOnlyButton: $("text-only-button"),
  muteButton: $("mute-button"),
  muteButtonText: $("mute-button-text"),
  textForm: $("text-form"),
  messageInput: $("message-input"),
};

const transcript = new Transcript(ui.transcript, { onChange: scrollToLatest });

// ---- runtime state (everything the machine doesn't decide) ----------------------------------------

let machine = initialState();
let sock = null; // the live link: a WebSocket, or a WebRTC call (rtc.js, kind "webrtc"); or null
let rtcPlaying = null; // WebRTC: the response id whose audio the server's track is playing
const remoteAudio = { el: null, analyser: null, timer: 0 };
let connectGen = 0; // bumps on every connect/disconnect: late async results of an old try are ignored
let reconnectTimer = 0;
let thinkingTimer = 0;
let muted = false;
let voices = null; // {list: [{id, name}], default} from GET /voices, or null when the server has none
let pendingText = []; // typed before the socket was up
let lastVoicedTime = null; // AudioContext time at the end of the last loud mic frame
let turnMark = null; // {time, kind} start of the current wait: speech end (voice) or send (text)
let lastUserTranscript = null; // user text not yet attached to a reply record
let meterValue = 0;
let noticeTimer = 0;
let shownNotice = null; // the notice render() last showed (to arm the info auto-dismiss once)
const apiKey = readApiKey();

const audio = { ctx: null, player: null, stream: null, source: null, node: null };
const replies = new Map(); // response id -> per-reply record (the same objects as testHook.turns)

// Read-only window for tests and debugging: counts and per-turn numbers, nothing to drive.
const testHook = {
  get state() {
    return machine.state;
  },
  get chunksReceived() {
    return audio.player?.chunksReceived ?? 0;
  },
  get chunksPlayed() {
    return audio.player?.chunksPlayed ?? 0;
  },
  get chunksDropped() {
    return audio.player?.chunksDropped ?? 0;
  },
  framesSent: 0,
  framesDropped: 0,
  events: {}, // server event type -> count
  turns: [], // one record per reply, in order
  errors: [], // server error events
  prewarm: null, // {ok, ms}
  get transport() {
    return sock?.kind === "webrtc" ? "webrtc" : sock ? "websocket" : null;
  },
  rtcAudioMs: 0, // WebRTC: ms of audible reply audio the page played from the server's track
  rtcCallId: null,
};
window.__quillman = testHook;

// ---- the machine runner ----------------------------------------------------------------------------

const queue = [];
let dispatching = false;

function dispatch(event) {
  queue.push(event);
  if (dispatching) return; // effects may dispatch: run those after the current transition
  dispatching = true;
  try {
    while (queue.length) step(queue.shift());
  } finally {
    dispatching = false;
  }
  render();
}

function step(event) {
  const before = machine.state;
  const next = transition(machine, event);
  if (!next.changed) return;
  const prev = machine;
  machine = { state: next.state, ctx: next.ctx };
  for (const fx of next.effects) runEffect(fx, prev.ctx);
  if (machine.state !== before) entered(machine.state, before);
}

/** prevCtx: the context before the transition (e.g. which reply a barge-in cut off). */
function runEffect(fx, prevCtx) {
  switch (fx) {
    case FX.CONNECT:
      connect();
      break;
    case FX.CONFIGURE:
      configureSession();
      break;
    case FX.DISCONNECT:
      closeSocket();
      break;
    case FX.RELEASE_MIC:
      releaseMic();
      break;
    case FX.STOP_PLAYBACK:
      // The server may have finished sending a reply we are still playing: cutting its audio
      // interrupts it for the listener whatever response.done said.
      if (serverPlays()) {
        // The server plays the reply: ask it to drop the rest (after a barge-in it already has;
        // then this is a no-op). It truncates the item itself at what the track played.
        const playing = rtcPlaying != null;
        if (playing) send({ type: "output_audio_buffer.clear" });
        if ((playing || prevCtx.responseOpen) && prevCtx.responseId) markInterrupted(prevCtx.responseId);
      } else {
        const playedS = audio.player?.playedS ?? 0; // before stop() forgets what was scheduled
        if ((audio.player?.stop() || prevCtx.responseOpen) && prevCtx.responseId) {
          markInterrupted(prevCtx.responseId, playedS);
        }
      }
      break;
    case FX.CANCEL_RESPONSE:
      send({ type: "response.cancel" });
      break;
    case FX.SCHEDULE_RECONNECT:
      clearTimeout(reconnectTimer);
      reconnectTimer = setTimeout(() => dispatch({ type: "RETRY" }), backoffDelay(machine.ctx.attempt));
      break;
    case FX.CANCEL_RECONNECT:
      clearTimeout(reconnectTimer);
      break;
    default:
      console.warn("unknown effect", fx);
  }
}

/** Timers that belong to a state start on entry and end on exit. */
function entered(state, before) {
  clearTimeout(thinkingTimer);
  if (state === S.THINKING) thinkingTimer = setTimeout(() => dispatch({ type: "TIMEOUT" }), THINKING_TIMEOUT_MS);
  if (state === S.LISTENING && before === S.CONNECTING && transcript.replies.size > 0) {
    transcript.divider("Reconnected: the assistant starts a fresh conversation");
  }
  if (state === S.IDLE || state === S.ERROR) setMuted(false);
  if (state === S.IDLE) pendingText = []; // hung up: nothing typed earlier may leak into the next call
}

// ---- connecting ------------------------------------------------------------------------------------

/** Must first run inside the click that started the call: browsers only let audio start from a gesture. */
function ensureAudio() {
  if (!audio.ctx) {
    audio.ctx = new AudioContext({ latencyHint: "interactive" });
    audio.player = new Player(audio.ctx, {
      inputRate: SESSION_RATE,
      onStart: onPlaybackStart,
      onDrained: () => dispatch({ type: "PLAYBACK_DRAINED" }),
    });
  }
  // Resume in the same tick as the gesture; awaiting something first would lose it.
  const resumed = audio.ctx.state === "suspended" ? audio.ctx.resume() : Promise.resolve();
  return resumed;
}

async function connect() {
  const gen = ++connectGen;
  const resumed = ensureAudio();
  try {
    await resumed;
    if (machine.ctx.mode === "voice" && !audio.stream) await openMic();
  } catch (err) {
    if (gen !== connectGen) return;
    const denied = err?.name === "NotAllowedError" || err?.name === "SecurityError";
    dispatch(denied ? { type: "MIC_DENIED" } : { type: "MIC_FAILED", message: micErrorText(err) });
    return;
  }
  if (gen !== connectGen) return; // the user hung up while we waited
  openLink(gen);
}

const hasWebRtc = () => typeof RTCPeerConnection === "function";
const transportChoice = () => chooseTransport(ui.transportSelect?.value, hasWebRtc());
const serverPlays = () => sock?.kind === "webrtc";

/** The page's credential (its key, or a one-use secret from the server), then the transport. */
async function openLink(gen) {
  let bearer = null;
  try {
    bearer = await credential({ apiKey, fetchImpl: fetch, url: endpoint("web/client_secret") });
  } catch (err) {
    if (gen !== connectGen) return;
    dispatch(err instanceof CallRefused ? { type: "SOCKET_REFUSED" } : { type: "SOCKET_CLOSED", code: 0, reason: String(err) });
    return;
  }
  if (gen !== connectGen) return;
  if (transportChoice() === "webrtc") openRtc(gen, bearer);
  else openSocket(bearer);
}

async function openRtc(gen, bearer) {
  let link;
  try {
    link = await openCall({
      url: endpoint("v1/realtime/calls"),
      bearer,
      stream: audio.stream,
      Peer: RTCPeerConnection,
      fetchImpl: fetch,
      onEvent: (ev) => gen === connectGen && onServerEvent(ev),
      onTrack: (stream, track) => gen === connectGen && playRemote(stream ?? new MediaStream([track])),
      onClose: () => {
        if (gen !== connectGen) return;
        sock = null;
        dispatch({ type: "SOCKET_CLOSED", code: 0, reason: "call ended" });
      },
    });
  } catch (err) {
    if (gen !== connectGen) return;
    if (err instanceof CallRefused && err.status < 500) dispatch({ type: "SOCKET_REFUSED" });
    else diagnoseRefusal({ code: 0, reason: String(err) });
    return;
  }
  if (gen !== connectGen) {
    link.close(); // hung up while the offer was out
    return;
  }
  sock = link;
  testHook.rtcCallId = link.callId;
}

/** The server's reply track: played by an <audio> element; its level, for the page's counters. */
function playRemote(stream) {
  stopRemote();
  const el = new Audio();
  el.autoplay = true;
  el.srcObject = stream;
  el.play?.().catch(() => {}); // allowed: the call started from a click
  remoteAudio.el = el;
  if (audio.ctx) {
    const analyser = audio.ctx.createAnalyser();
    analyser.fftSize = 1024;
    audio.ctx.createMediaStreamSource(stream).connect(analyser); // not to the speakers: the element plays
    remoteAudio.analyser = analyser;
    const data = new Float32Array(analyser.fftSize);
    remoteAudio.timer = setInterval(() => {
      analyser.getFloatTimeDomainData(data);
      let sum = 0;
      for (const v of data) sum += v * v;
      if (Math.sqrt(sum / data.length) > 0.005) testHook.rtcAudioMs += 50;
    }, 50);
  }
}

function stopRemote() {
  clearInterval(remoteAudio.timer);
  remoteAudio.analyser?.disconnect();
  if (remoteAudio.el) remoteAudio.el.srcObject = null;
  Object.assign(remoteAudio, { el: null, analyser: null, timer: 0 });
  rtcPlaying = null;
}

function micErrorText(err) {
  if (!navigator.mediaDevices) return "this page must be opened over HTTPS or from localhost";
  if (err?.name === "NotFoundError") return "no microphone was found";
  if (err?.name === "NotReadableError") return "another app is using the microphone";
  return err?.message || String(err);
}

async function openMic() {
  if (!navigator.mediaDevices?.getUserMedia) throw new Error(micErrorText());
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
  });
  try {
    await audio.ctx.audioWorklet.addModule(new URL("capture-worklet.js", import.meta.url));
    const source = audio.ctx.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(audio.ctx, "quillman-capture", {
      numberOfInputs: 1,
      numberOfOutputs: 0,
      channelCount: 1,
      channelCountMode: "explicit", // mix the mic to mono before the worklet sees it
      processorOptions: { targetRate: SESSION_RATE, frameMs: FRAME_MS },
    });
    node.port.onmessage = (e) => onMicFrame(e.data);
    source.connect(node);
    // "ended" fires when the device goes away or permission is revoked, not on our own stop().
    stream.getAudioTracks().forEach((t) => t.addEventListener("ended", () => dispatch({ type: "MIC_LOST" })));
    Object.assign(audio, { stream, source, node });
    stream.getAudioTracks().forEach((t) => (t.enabled = !muted));
  } catch (err) {
    stream.getTracks().forEach((t) => t.stop());
    throw err;
  }
}

function releaseMic() {
  audio.node?.port.close();
  audio.node?.disconnect();
  audio.source?.disconnect();
  audio.stream?.getTracks().forEach((t) => t.stop());
  Object.assign(audio, { stream: null, source: null, node: null });
  lastVoicedTime = null;
  meterValue = 0;
  ui.meterFill.style.transform = "scaleX(0)";
}

/** An API key from the address (#key=...) or from earlier in this tab; the address is then cleaned. */
function readApiKey() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("key");
  if (fromHash) {
    sessionStorage.setItem(API_KEY_STORE, fromHash);
    history.replaceState(null, "", location.pathname + location.search); // keep it off the screen
  }
  return sessionStorage.getItem(API_KEY_STORE);
}

function openSocket(bearer) {
  const url = endpoint("v1/realtime");
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const ws = bearer ? new WebSocket(url, ["realtime", KEY_SUBPROTOCOL + bearer]) : new WebSocket(url);
  let opened = false;
  sock = ws;
  ws.onopen = () => (opened = true);
  // Handlers check `sock === ws` so a socket we already gave up on can't move the machine.
  ws.onmessage = (e) => {
    if (sock !== ws) return;
    let ev;
    try {
      ev = JSON.parse(e.data);
    } catch {
      console.warn("non-JSON frame from server", e.data);
      return;
    }
    onServerEvent(ev);
  };
  ws.onclose = (e) => {
    if (sock !== ws) return;
    sock = null;
    if (opened) dispatch({ type: "SOCKET_CLOSED", code: e.code, reason: e.reason });
    else diagnoseRefusal(e);
  };
}

/** A handshake that failed: the server down (retry) or up and refusing us (tell the user)? */
async function diagnoseRefusal(e) {
  const gen = connectGen;
  let up = false;
  try {
    up = (await fetch(endpoint("healthz"), { cache: "no-store" })).ok;
  } catch {
    up = false;
  }
  if (gen !== connectGen) return; // the user hung up meanwhile
  dispatch(up ? { type: "SOCKET_REFUSED" } : { type: "SOCKET_CLOSED", code: e.code, reason: e.reason });
}

function closeSocket() {
  connectGen++;
  const ws = sock;
  sock = null;
  if (ws?.kind === "webrtc") {
    ws.close();
    stopRemote();
  } else if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, "client closed");
}

function send(event) {
  if (sock?.kind === "webrtc") return sock.send(event);
  if (!sock || sock.readyState !== WebSocket.OPEN) return false;
  sock.send(JSON.stringify(event));
  return true;
}

function configureSession() {
  send({ type: "session.update", session: sessionConfig() });
  for (const text of pendingText.splice(0)) sendText(text);
}

function sessionConfig() {
  // Over WebRTC the audio is the tracks' (Opus): no formats to name.
  const format = serverPlays() ? {} : { format: { type: "audio/pcm", rate: SESSION_RATE } };
  const output = { ...format };
  const voice = selectedVoice();
  if (voice) output.voice = voice;
  const input = { ...format };
  const turn = turnDetection();
  if (turn) input.turn_detection = turn; // else the server's default mode
  return { type: "realtime", audio: { input, output },
           ...(DEMO_TOOLS_ON ? { tools: DEMO_TOOLS, tool_choice: "auto" } : {}) };
}

/** The picked turn_detection, or null for the server's default. */
function turnDetection() {
  const type = ui.turnSelect.value;
  return type ? { type } : null;
}

function onTurnChange() {
  localStorage.setItem(TURN_KEY, ui.turnSelect.value);
  if (!isConnected(machine.state)) return;
  const turn = turnDetection();
  if (turn) send({ type: "session.update", session: { type: "realtime", audio: { input: { turn_detection: turn } } } });
}

// ---- microphone frames -----------------------------------------------------------------------------

function onMicFrame({ pcm, rms, time }) {
  if (!muted && rms >= VOICED_RMS) lastVoicedTime = time;
  updateMeter(muted ? 0 : rms);
  if (!isConnected(machine.state) || serverPlays()) return; // WebRTC: the mic track carries the audio
  // A stalled server must not make us buffer audio without bound: drop, and say so in the counts.
  if (sock && sock.bufferedAmount > MAX_SOCKET_BACKLOG) {
    testHook.framesDropped++;
    return;
  }
  // Muted frames are silence (the track is disabled) and are still sent, so server VAD can end a turn.
  if (send({ type: "input_audio_buffer.append", audio: bytesToBase64(pcm16ToBytes(pcm)) })) testHook.framesSent++;
}

function updateMeter(rms) {
  // Fast attack, slow release: easier to read than the raw 25 Hz level.
  const level = meterLevel(rms);
  meterValue = level > meterValue ? level : meterValue * 0.8 + level * 0.2;
  ui.meterFill.style.transform = `scaleX(${meterValue.toFixed(3)})`;
}

// ---- server events ---------------------------------------------------------------------------------

/** Events of the reply we are showing; those of interrupted replies are dropped. */
function isLive(responseId) {
  const current = machine.ctx.responseId;
  return current != null && (responseId == null || responseId === current);
}

function onServerEvent(ev) {
  testHook.events[ev.type] = (testHook.events[ev.type] ?? 0) + 1;
  switch (ev.type) {
    case "session.created":
      dispatch({ type: "SESSION_READY" });
      break;
    case "input_audio_buffer.speech_started":
      transcript.userPending(ev.item_id);
      dispatch({ type: "SPEECH_STARTED", itemId: ev.item_id });
      break;
    case "input_audio_buffer.speech_stopped":
      turnMark = lastVoicedTime != null ? { time: lastVoicedTime, kind: "voice" } : null;
      dispatch({ type: "SPEECH_STOPPED" });
      break;
    case "input_audio_buffer.committed":
      transcript.userCommitted(ev.item_id);
      break;
    case "conversation.item.input_audio_transcription.delta":
      transcript.userDelta(ev.item_id, ev.delta);
      break;
    case "conversation.item.input_audio_transcription.completed":
      transcript.userFinal(ev.item_id, ev.transcript);
      recordUserTranscript(ev.transcript);
      break;
    case "response.created":
      onResponseCreated(ev.response ?? {});
      break;
    case "response.output_audio_transcript.delta":
      if (isLive(ev.response_id)) {
        transcript.replyDelta(machine.ctx.responseId, ev.delta);
        const r = replies.get(machine.ctx.responseId);
        if (r) r.assistant += ev.delta ?? "";
      }
      break;
    case "response.output_audio_transcript.done":
      if (isLive(ev.response_id)) {
        transcript.replyText(machine.ctx.responseId, ev.transcript);
        const r = replies.get(machine.ctx.responseId);
        if (r && ev.transcript) r.assistant = ev.transcript;
      }
      break;
    case "response.output_audio.delta":
      if (isLive(ev.response_id) && ev.delta) {
        const r = replies.get(machine.ctx.responseId);
        if (r) r.chunks++;
        audio.player?.enqueue(decodeAudio(ev.delta));
      }
      break;
    case "response.output_item.added": {
      const r = replies.get(ev.response_id);
      if (r && ev.item?.id) r.itemId = ev.item.id;
      break;
    }
    case "response.done":
      onResponseDone(ev.response ?? {});
      break;
    // WebRTC: the server's track started / finished / stopped playing a reply.
    case "output_audio_buffer.started":
      rtcPlaying = ev.response_id;
      if (isLive(ev.response_id)) {
        const r = replies.get(ev.response_id);
        if (r) r.chunks++;
        onPlaybackStart(audio.ctx?.currentTime ?? 0);
      }
      break;
    case "output_audio_buffer.stopped":
    case "output_audio_buffer.cleared":
      if (rtcPlaying === ev.response_id) rtcPlaying = null;
      // Cleared: the reply was cut (it may have been fully generated and still playing).
      if (ev.type === "output_audio_buffer.cleared" && replies.get(ev.response_id)?.interrupted === false) {
        markInterrupted(ev.response_id);
      }
      dispatch({ type: "PLAYBACK_DRAINED" });
      break;
    case "conversation.item.truncated":
      break; // the server cut an interrupted reply at what was heard
    case "error": {
      const err = ev.error ?? {};
      testHook.errors.push(err);
      dispatch({ type: "SERVER_ERROR", code: err.code, message: err.message });
      break;
    }
    default:
      break; // session.updated, item/part lifecycle events: nothing to show
  }
}

function onResponseCreated(response) {
  const id = response.id ?? `local-${Date.now()}`;
  dispatch({ type: "RESPONSE_CREATED", responseId: id });
  if (machine.ctx.responseId !== id) return; // a reply we interrupted: ignore it
  audio.player?.beginStream();
  transcript.replyStart(id);
  const record = {
    responseId: id,
    user: lastUserTranscript,
    assistant: "",
    chunks: 0,
    status: "in_progress",
    timings: null,
    clientLatencyMs: null,
    interrupted: false, // its audio was cut (barge-in, typed message, hang-up)
    playedAtStart: audio.player?.chunksPlayed ?? 0, // lets tests tell this reply's played chunks apart
    mark: turnMark,
  };
  lastUserTranscript = null;
  turnMark = null;
  replies.set(id, record);
  testHook.turns.push(record);
}

function recordUserTranscript(text) {
  // The transcript can arrive after the reply started: attach it to that reply if so.
  const open = testHook.turns.at(-1);
  if (open && open.user == null && open.status === "in_progress") open.user = text;
  else lastUserTranscript = text;
}

function onPlaybackStart(startTime) {
  const r = replies.get(machine.ctx.responseId);
  // Only the first sound of a reply measures the wait; later restarts are underruns.
  if (r && r.clientLatencyMs == null && r.mark) {
    r.clientLatencyMs = Math.round((startTime - r.mark.time) * 1000);
  }
  dispatch({ type: "AUDIO_STARTED", responseId: machine.ctx.responseId });
}

function markInterrupted(responseId, playedS = 0) {
  const r = replies.get(responseId);
  if (r) {
    r.interrupted = true;
    r.playedMs = Math.round(playedS * 1000);
    if (r.status !== "in_progress" && !serverPlays()) sendTruncate(r);
  }
  transcript.replyInterrupted(responseId);
}

/** The server keeps only what the listener heard of a cut-off reply in the conversation. It
 * refuses to truncate a response still in progress, so this waits for that reply's response.done. */
function sendTruncate(r) {
  if (!r.itemId || r.truncated || !r.chunks) return; // no audio: no reply text to cut either
  r.truncated = true;
  send({ type: "conversation.item.truncate", item_id: r.itemId, content_index: 0, audio_end_ms: r.playedMs ?? 0 });
}

function onResponseDone(response) {
  const r = replies.get(response.id);
  if (r) {
    r.status = response.status ?? "completed";
    r.timings = response.timings ?? null;
    if (r.interrupted && !serverPlays()) sendTruncate(r);
  }
  transcript.replyDone(response.id, {
    status: response.status,
    timings: response.timings,
    clientLatencyMs: r?.clientLatencyMs ?? null,
    kind: r?.mark?.kind ?? null,
  });
  dispatch({ type: "RESPONSE_DONE", responseId: response.id, status: response.status });
  answerCalls(response);
}

// The model called a demo tool: run it here, send the result, ask for the reply that uses it.
function answerCalls(response) {
  const calls = (response.output ?? []).filter((item) => item.type === "function_call");
  if (!DEMO_TOOLS_ON || response.status !== "completed" || calls.length === 0) return;
  for (const call of calls) {
    send({ type: "conversation.item.create",
           item: { type: "function_call_output", call_id: call.call_id, output: runTool(call.name, call.arguments) } });
  }
  send({ type: "response.create" });
}

// ---- user actions ----------------------------------------------------------------------------------

function onCallButton() {
  if (startable(machine.state)) dispatch({ type: "START", mode: "voice" });
  else dispatch({ type: "STOP" });
}

const startable = (state) => state === S.WARMING || state === S.IDLE || state === S.ERROR;

function onSubmitText(e) {
  e.preventDefault();
  const text = ui.messageInput.value.trim();
  if (!text) return;
  ui.messageInput.value = "";
  if (isConnected(machine.state)) {
    sendText(text);
  } else {
    // Not in a call: typing starts a text-only one and the message goes out once it is up.
    pendingText.push(text);
    if (startable(machine.state)) dispatch({ type: "START", mode: "text" });
  }
}

function sendText(text) {
  transcript.userTyped(text);
  dispatch({ type: "TEXT_SENT" }); // may cancel the reply in progress first (response.cancel)
  lastUserTranscript = text;
  turnMark = audio.ctx ? { time: audio.ctx.currentTime, kind: "text" } : null;
  send({
    type: "conversation.item.create",
    item: { type: "message", role: "user", content: [{ type: "input_text", text }] },
  });
  send({ type: "response.create" });
}

function setMuted(value) {
  muted = value;
  // A disabled track yields silence: the server keeps getting a steady stream and its VAD can end a turn.
  audio.stream?.getAudioTracks().forEach((t) => (t.enabled = !muted));
  render();
}

// ---- voices and warm-up ----------------------------------------------------------------------------

function selectedVoice() {
  if (!voices) return null;
  return ui.voiceSelect.value || voices.default || null;
}

async function loadVoices() {
  try {
    const res = await fetch(endpoint("voices"), { headers: { Accept: "application/json" } });
    if (!res.ok) return; // 404: the server has no voice choice; the picker stays hidden
    const body = await res.json();
    const list = (body.voices ?? []).map((v) => (typeof v === "string" ? { id: v, name: v } : { id: v.id, name: v.name ?? v.id }));
    if (list.length === 0) return;
    voices = { list, default: body.default ?? list[0].id };
  } catch {
    return; // no picker is better than a broken one
  }
  const saved = localStorage.getItem(VOICE_KEY);
  for (const v of voices.list) ui.voiceSelect.add(new Option(v.name, v.id));
  ui.voiceSelect.value = voices.list.some((v) => v.id === saved) ? saved : voices.default;
  ui.voiceField.hidden = false;
}

function onVoiceChange() {
  localStorage.setItem(VOICE_KEY, ui.voiceSelect.value);
  // Applies from the next reply on; the server keeps the rest of the session as it is.
  send({ type: "session.update", session: { type: "realtime", audio: { output: { voice: ui.voiceSelect.value } } } });
}

async function prewarm() {
  const started = performance.now();
  const ticker = setInterval(() => {
    const s = Math.round((performance.now() - started) / 1000);
    if (machine.ctx.warm === "pending") ui.serverStatusText.textContent = `Warming up models… ${s} s`;
  }, 1000);
  try {
    // With keys configured /prewarm needs one too; a page fetch can send it as a header.
    const headers = { Accept: "application/json" };
    if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
    const res = await fetch(endpoint("prewarm"), { headers });
    const body = await res.json().catch(() => null);
    const failures = Object.values(body?.deployments ?? {}).filter((d) => d.status === "failed");
    if (failures.length) {
      testHook.prewarm = { ok: false, ms: Math.round(performance.now() - started), failures };
      dispatch({ type: "SERVER_FAILED", failures });
      return;
    }
    if (res.status === 401 && !apiKey) {
      testHook.prewarm = { ok: true, skipped: true, ms: Math.round(performance.now() - started) };
      dispatch({ type: "PREWARM_SKIPPED" });
      return;
    }
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    testHook.prewarm = { ok: true, ms: Math.round(performance.now() - started) };
    dispatch({ type: "PREWARM_OK" });
  } catch (err) {
    testHook.prewarm = { ok: false, ms: Math.round(performance.now() - started), error: String(err) };
    dispatch({ type: "PREWARM_FAILED", message: err.message || "network error" });
  } finally {
    clearInterval(ticker);
  }
}

// ---- rendering -------------------------------------------------------------------------------------

const INFO_NOTICE_MS = 5000; // info notices ("Reconnected.") clear themselves; warnings and errors stay

const STATUS = {
  [S.WARMING]: "Getting ready. You can start now; the first reply may take a moment.",
  [S.IDLE]: "Ready when you are.",
  [S.CONNECTING]: "Connecting…",
  [S.LISTENING]: "Listening. Go ahead and talk.",
  [S.USER_SPEAKING]: "Hearing you…",
  [S.THINKING]: "Thinking…",
  [S.ASSISTANT_SPEAKING]: "Speaking. Talk to interrupt.",
  [S.RECONNECTING]: "Connection lost. Reconnecting…",
  [S.ERROR]: "Something needs your attention.",
};

function statusText() {
  const { state, ctx } = machine;
  if (ctx.mode === "text" && isConnected(state)) {
    return state === S.THINKING ? STATUS[S.THINKING] : state === S.ASSISTANT_SPEAKING ? "Speaking." : "Connected. Type a message.";
  }
  if (muted && (state === S.LISTENING || state === S.USER_SPEAKING)) return "Muted. Unmute to talk.";
  return STATUS[state];
}

const WARM_TEXT = { pending: null, ready: "Models ready", skipped: "Ready", failed: "Warm-up failed",
                    broken: "A model failed to start" };

function render() {
  const { state, ctx } = machine;
  const connected = isConnected(state);
  const inCall = connected || state === S.CONNECTING || state === S.RECONNECTING;
  ui.app.dataset.state = state;
  ui.app.dataset.muted = String(muted);

  setText(ui.statusText, statusText());
  ui.serverStatus.dataset.warm = ctx.warm;
  if (WARM_TEXT[ctx.warm]) setText(ui.serverStatusText, WARM_TEXT[ctx.warm]);

  setText(ui.callButtonText, inCall ? "End" : state === S.ERROR ? "Try again" : "Start talking");
  ui.callButton.dataset.role = inCall ? "end" : "start";
  ui.callButton.setAttribute("aria-label", inCall ? "End the conversation" : "Start talking (uses your microphone)");
  ui.textOnlyButton.hidden = !(state === S.ERROR && ctx.micProblem);

  const voiceCall = inCall && ctx.mode === "voice";
  ui.app.dataset.mic = String(voiceCall);
  ui.muteButton.disabled = !voiceCall;
  ui.muteButton.setAttribute("aria-pressed", String(muted));
  setText(ui.muteButtonText, muted ? "Unmute" : "Mute");

  ui.emptyHint.hidden = !transcript.isEmpty;

  const n = ctx.notice;
  ui.notice.hidden = !n;
  if (n) {
    ui.notice.dataset.level = n.level;
    // Errors interrupt; info waits its turn.
    ui.notice.setAttribute("role", n.level === "error" ? "alert" : "status");
    setText(ui.noticeText, n.text);
  }
  if (n !== shownNotice) {
    shownNotice = n;
    clearTimeout(noticeTimer);
    if (n?.level === "info") {
      noticeTimer = setTimeout(() => machine.ctx.notice === n && dispatch({ type: "DISMISS_NOTICE" }), INFO_NOTICE_MS);
    }
  }
}

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text; // avoid re-announcing unchanged live regions
}

function scrollToLatest() {
  const el = ui.conversation;
  el.scrollTop = el.scrollHeight;
  ui.emptyHint.hidden = !transcript.isEmpty;
}

// ---- wiring ----------------------------------------------------------------------------------------

ui.callButton.addEventListener("click", onCallButton);
ui.textOnlyButton.addEventListener("click", () => {
  dispatch({ type: "START", mode: "text" });
  ui.messageInput.focus();
});
ui.muteButton.addEventListener("click", () => setMuted(!muted));
ui.noticeDismiss.addEventListener("click", () => dispatch({ type: "DISMISS_NOTICE" }));
ui.textForm.addEventListener("submit", onSubmitText);
ui.voiceSelect.addEventListener("change", onVoiceChange);
ui.turnSelect.value = localStorage.getItem(TURN_KEY) ?? "";
ui.turnSelect.addEventListener("change", onTurnChange);
if (ui.transportSelect) {
  ui.transportSelect.value = chooseTransport(HASH_TRANSPORT ?? localStorage.getItem(TRANSPORT_KEY), hasWebRtc());
  if (!hasWebRtc()) ui.transportSelect.disabled = true;
  // Applies from the next call (or reconnect): a live call keeps its transport.
  ui.transportSelect.addEventListener("change", () => localStorage.setItem(TRANSPORT_KEY, ui.transportSelect.value));
}
document.addEventListener("keydown", (e) => {
  // "M" toggles mute, except while typing.
  if (e.key.toLowerCase() !== "m" || e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement) return;
  if (!ui.muteButton.disabled) setMuted(!muted);
});
window.addEventListener("pagehide", () => {
  closeSocket(); // a WebRTC call too: its peer connection closes, the server ends the call
  releaseMic();
});

render();
loadVoices();
prewarm();
