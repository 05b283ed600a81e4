// WebRTC transport: the Realtime API's browser transport (POST /v1/realtime/calls).
// The mic goes out as an Opus track with the browser's echo cancellation, noise suppression and
// gain control; the reply comes back as a track the page plays in an <audio> element; every
// other event rides the "oai-events" data channel as JSON, exactly as over the websocket.
// No DOM here (the caller passes RTCPeerConnection, fetch and the mic stream), so node tests it.

export const EVENTS_LABEL = "oai-events";
export const TRANSPORT_KEY = "quillman.transport";
export const GATHER_TIMEOUT_MS = 3000; // the server takes no trickled candidates: wait, bounded

/** "webrtc" unless the user picked the websocket or the browser has no WebRTC. */
export function chooseTransport(saved, hasWebRtc) {
  if (!hasWebRtc) return "websocket";
  return saved === "websocket" ? "websocket" : "webrtc";
}

export class CallRefused extends Error {
  constructor(status, code, message) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

async function refusal(res) {
  const body = await res.json().catch(() => null);
  const err = body?.error ?? {};
  return new CallRefused(res.status, err.code ?? null, err.message ?? `HTTP ${res.status}`);
}

/** What the page authenticates with: its API key if it was given one (/#key=...), else an
 * ephemeral secret from the server's page endpoint (a keyed server that enables it), else
 * nothing (a server without keys). A secret opens one call: ask again for every connect. */
export async function credential({ apiKey, fetchImpl, url }) {
  if (apiKey) return apiKey;
  const res = await fetchImpl(url, { method: "POST", headers: { Accept: "application/json" } });
  if (res.status === 204 || res.status === 404) return null; // off: a keyless server (404: an older one)
  if (!res.ok) throw await refusal(res);
  return (await res.json()).value;
}

/** Resolves once ICE gathering is complete (or after timeoutMs: send what we have). */
export function gathered(pc, timeoutMs = GATHER_TIMEOUT_MS) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(done, timeoutMs);
    function done() {
      clearTimeout(timer);
      pc.removeEventListener?.("icegatheringstatechange", check);
      resolve();
    }
    function check() {
      if (pc.iceGatheringState === "complete") done();
    }
    pc.addEventListener("icegatheringstatechange", check);
  });
}

/** Open a call: offer (mic track or receive-only audio, the events channel), POST it, apply the
 * answer. Returns a link with the websocket's shape for the page: send(), close(),
 * bufferedAmount. onEvent(parsed server event), onTrack(MediaStream), onOpen(), onClose(why). */
export async function openCall({ url, bearer, stream, Peer, fetchImpl, onEvent, onTrack, onOpen, onClose, gatherMs }) {
  const pc = new Peer();
  const channel = pc.createDataChannel(EVENTS_LABEL);
  let closed = false;
  const link = {
    kind: "webrtc",
    pc,
    channel,
    callId: null,
    send(event) {
      if (closed || channel.readyState !== "open") return false;
      channel.send(JSON.stringify(event));
      return true;
    },
    get bufferedAmount() {
      return channel.bufferedAmount ?? 0;
    },
    close() {
      if (closed) return;
      closed = true;
      try { channel.close(); } catch { /* already closed */ }
      pc.close();
    },
  };
  const end = (why) => {
    if (closed) return;
    link.close();
    onClose?.(why);
  };
  channel.addEventListener("open", () => onOpen?.());
  channel.addEventListener("close", () => end("channel closed"));
  channel.addEventListener("message", (e) => {
    let ev;
    try {
      ev = JSON.parse(e.data);
    } catch {
      return; // not ours to show
    }
    onEvent?.(ev);
  });
  pc.addEventListener("track", (e) => onTrack?.(e.streams?.[0] ?? null, e.track));
  pc.addEventListener("connectionstatechange", () => {
    if (pc.connectionState === "failed" || pc.connectionState === "closed") end(`connection ${pc.connectionState}`);
  });
  const tracks = stream?.getAudioTracks?.() ?? [];
  if (tracks.length) tracks.forEach((t) => pc.addTrack(t, stream));
  else pc.addTransceiver("audio", { direction: "recvonly" }); // a text-only call still hears replies
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc, gatherMs);
    const headers = { "Content-Type": "application/sdp" };
    if (bearer) headers.Authorization = `Bearer ${bearer}`;
    const res = await fetchImpl(url, { method: "POST", body: pc.localDescription.sdp, headers });
    if (res.status !== 201) throw await refusal(res);
    link.callId = (res.headers.get("Location") ?? "").split("/").pop() || null;
    await pc.setRemoteDescription({ type: "answer", sdp: await res.text() });
  } catch (err) {
    closed = true;
    pc.close();
    throw err;
  }
  return link;
}
