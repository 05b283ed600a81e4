import { test } from "node:test";
import assert from "node:assert/strict";
import { CallRefused, EVENTS_LABEL, chooseTransport, credential, gathered, openCall } from "../rtc.js";

class FakeTarget {
  constructor() { this.listeners = {}; }
  addEventListener(type, fn) { (this.listeners[type] ??= []).push(fn); }
  removeEventListener(type, fn) { this.listeners[type] = (this.listeners[type] ?? []).filter((f) => f !== fn); }
  emit(type, event = {}) { for (const fn of this.listeners[type] ?? []) fn(event); }
}

class FakeChannel extends FakeTarget {
  constructor(label) { super(); this.label = label; this.readyState = "connecting"; this.sent = []; this.bufferedAmount = 0; }
  send(text) { this.sent.push(JSON.parse(text)); }
  close() { this.readyState = "closed"; }
}

class FakePeer extends FakeTarget {
  static last = null;
  constructor() {
    super();
    FakePeer.last = this;
    this.iceGatheringState = "new";
    this.connectionState = "new";
    this.tracks = [];
    this.transceivers = [];
    this.closed = false;
  }
  createDataChannel(label) { this.channel = new FakeChannel(label); return this.channel; }
  addTrack(track, stream) { this.tracks.push([track, stream]); }
  addTransceiver(kind, init) { this.transceivers.push([kind, init]); }
  async createOffer() { return { type: "offer", sdp: "v=0 offer" }; }
  async setLocalDescription(d) {
    this.localDescription = d;
    setTimeout(() => { this.iceGatheringState = "complete"; this.localDescription = { ...d, sdp: "v=0 offer+candidates" }; this.emit("icegatheringstatechange"); }, 5);
  }
  async setRemoteDescription(d) { this.remoteDescription = d; }
  close() { this.closed = true; this.connectionState = "closed"; }
}

function fakeFetch(responses) {
  const calls = [];
  const impl = async (url, init) => {
    calls.push({ url: String(url), init });
    const r = responses.shift();
    return {
      status: r.status,
      ok: r.status >= 200 && r.status < 300,
      headers: { get: (name) => (r.headers ?? {})[name] ?? null },
      text: async () => r.text ?? "",
      json: async () => r.json,
    };
  };
  impl.calls = calls;
  return impl;
}

const mic = { getAudioTracks: () => ["mic-track"] };

test("WebRTC is the default; the websocket when picked or when the browser has no WebRTC", () => {
  assert.equal(chooseTransport(null, true), "webrtc");
  assert.equal(chooseTransport("webrtc", true), "webrtc");
  assert.equal(chooseTransport("websocket", true), "websocket");
  assert.equal(chooseTransport(null, false), "websocket");
});

test("a page with a key uses it; without, a secret from the page endpoint; a disabled endpoint: none", async () => {
  assert.equal(await credential({ apiKey: "k", fetchImpl: null, url: "x" }), "k");
  const withSecret = fakeFetch([{ status: 200, json: { value: "ek_abc", expires_at: 1 } }]);
  assert.equal(await credential({ apiKey: null, fetchImpl: withSecret, url: "/web/client_secret" }), "ek_abc");
  assert.equal(withSecret.calls[0].init.method, "POST");
  assert.equal(await credential({ apiKey: null, fetchImpl: fakeFetch([{ status: 204 }]), url: "x" }), null);
  await assert.rejects(
    credential({ apiKey: null, fetchImpl: fakeFetch([{ status: 403, json: { error: { code: "origin_not_allowed" } } }]), url: "x" }),
    (err) => err instanceof CallRefused && err.code === "origin_not_allowed");
});

test("a call offers the mic and the events channel, waits for candidates, posts the SDP, applies the answer", async () => {
  const fetchImpl = fakeFetch([{ status: 201, text: "v=0 answer", headers: { Location: "/v1/realtime/calls/rtc_42" } }]);
  const events = [];
  const link = await openCall({ url: "/v1/realtime/calls", bearer: "ek_1", stream: mic, Peer: FakePeer, fetchImpl,
                                onEvent: (e) => events.push(e) });
  const pc = FakePeer.last;
  assert.equal(pc.channel.label, EVENTS_LABEL);
  assert.deepEqual(pc.tracks, [["mic-track", mic]]);
  const { init } = fetchImpl.calls[0];
  assert.equal(init.body, "v=0 offer+candidates"); // the gathered offer, not the first one
  assert.equal(init.headers["Content-Type"], "application/sdp");
  assert.equal(init.headers.Authorization, "Bearer ek_1");
  assert.deepEqual(pc.remoteDescription, { type: "answer", sdp: "v=0 answer" });
  assert.equal(link.callId, "rtc_42");
  assert.equal(link.send({ type: "response.create" }), false); // channel not open yet
  pc.channel.readyState = "open";
  assert.equal(link.send({ type: "response.create" }), true);
  assert.deepEqual(pc.channel.sent, [{ type: "response.create" }]);
  pc.channel.emit("message", { data: JSON.stringify({ type: "session.created" }) });
  pc.channel.emit("message", { data: "not json" });
  assert.deepEqual(events, [{ type: "session.created" }]);
});

test("a text-only call still receives audio; a refused call closes its peer and says why", async () => {
  const fetchImpl = fakeFetch([{ status: 401, json: { error: { code: "client_secret_expired", message: "expired" } } }]);
  await assert.rejects(openCall({ url: "u", bearer: null, stream: null, Peer: FakePeer, fetchImpl }),
    (err) => err instanceof CallRefused && err.status === 401 && err.code === "client_secret_expired");
  const pc = FakePeer.last;
  assert.deepEqual(pc.transceivers, [["audio", { direction: "recvonly" }]]);
  assert.equal(pc.closed, true);
  assert.equal(fetchImpl.calls[0].init.headers.Authorization, undefined);
});

test("the link reports the end once: a failed connection or a closed channel", async () => {
  const fetchImpl = fakeFetch([{ status: 201, text: "v=0 answer", headers: {} }]);
  const ends = [];
  await openCall({ url: "u", stream: mic, Peer: FakePeer, fetchImpl, onClose: (why) => ends.push(why) });
  const pc = FakePeer.last;
  pc.connectionState = "failed";
  pc.emit("connectionstatechange");
  pc.channel.emit("close");
  assert.deepEqual(ends, ["connection failed"]);
  assert.equal(pc.closed, true);
});

test("gathering that never completes is waited for a bounded time", async () => {
  const pc = new FakeTarget();
  pc.iceGatheringState = "gathering";
  const start = Date.now();
  await gathered(pc, 30);
  assert.ok(Date.now() - start >= 25);
});
