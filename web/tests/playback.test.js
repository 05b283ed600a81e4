import { test } from "node:test";
import assert from "node:assert/strict";
import { Player } from "../playback.js";
import { resample } from "../pcm.js";

/** Just enough of an AudioContext: a clock we move by hand and sources that record start/stop. */
class FakeContext {
  constructor(sampleRate = 48000) {
    this.sampleRate = sampleRate;
    this.currentTime = 0;
    this.destination = { name: "speakers" };
    this.sources = [];
  }
  createBuffer(channels, length, sampleRate) {
    return { channels, length, sampleRate, data: null, copyToChannel(d) { this.data = d; } };
  }
  createBufferSource() {
    const src = {
      buffer: null,
      startedAt: null,
      stopped: false,
      onended: null,
      connect(dest) { this.dest = dest; },
      disconnect() { this.dest = null; },
      start(t) { this.startedAt = t; },
      stop() { this.stopped = true; },
    };
    this.sources.push(src);
    return src;
  }
  /** Advance the clock, firing onended for sources that finished. */
  advance(s) {
    this.currentTime += s;
    for (const src of this.sources) {
      const end = src.startedAt + src.buffer.length / this.sampleRate;
      if (!src.stopped && !src.ended && end <= this.currentTime + 1e-9) {
        src.ended = true;
        src.onended?.();
      }
    }
  }
}

const chunk = (ms, rate = 24000) => new Float32Array((rate * ms) / 1000).fill(0.1);

test("the first chunk starts right away and later ones follow without gaps", () => {
  const ctx = new FakeContext();
  const starts = [];
  const p = new Player(ctx, { inputRate: 24000, leadS: 0.02, onStart: (t) => starts.push(t) });
  ctx.currentTime = 1.0;
  const t0 = p.enqueue(chunk(40));
  assert.equal(t0, 1.02);
  assert.deepEqual(starts, [1.02]);
  const ends = [];
  for (let i = 0; i < 5; i++) p.enqueue(chunk(40));
  for (const src of ctx.sources) ends.push([src.startedAt, src.startedAt + src.buffer.length / ctx.sampleRate]);
  // Each chunk starts exactly where the previous one ended (up to the resampler's held sample).
  for (let i = 1; i < ends.length; i++) assert.ok(Math.abs(ends[i][0] - ends[i - 1][1]) < 1e-9);
  assert.equal(starts.length, 1, "onStart only when going from silent to sounding");
  assert.equal(p.chunksReceived, 6);
  assert.equal(ctx.sources[0].buffer.sampleRate, 48000, "resampled to the context rate");
  assert.ok(Math.abs(p.bufferedS - 0.26) < 0.001);
});

test("played chunks are counted and drain is reported once", () => {
  const ctx = new FakeContext();
  let drained = 0;
  const p = new Player(ctx, { inputRate: 24000, onDrained: () => drained++ });
  p.enqueue(chunk(50));
  p.enqueue(chunk(50));
  ctx.advance(0.08);
  assert.equal(p.chunksPlayed, 1);
  assert.equal(drained, 0);
  ctx.advance(0.1);
  assert.equal(p.chunksPlayed, 2);
  assert.equal(drained, 1);
  assert.equal(p.playing, false);
});

test("an underrun restarts a little ahead of now, not in the past", () => {
  const ctx = new FakeContext();
  const starts = [];
  const p = new Player(ctx, { inputRate: 24000, leadS: 0.01, onStart: (t) => starts.push(t) });
  p.enqueue(chunk(20));
  ctx.advance(0.5); // played out; the next chunk is late
  const t = p.enqueue(chunk(20));
  assert.ok(Math.abs(t - 0.51) < 1e-9);
  assert.equal(starts.length, 2);
});

test("stop() silences everything queued and nothing of it counts as played", () => {
  const ctx = new FakeContext();
  let drained = 0;
  const p = new Player(ctx, { inputRate: 24000, onDrained: () => drained++ });
  for (let i = 0; i < 4; i++) p.enqueue(chunk(40));
  assert.equal(p.stop(), true);
  assert.ok(ctx.sources.every((s) => s.stopped && s.dest === null));
  ctx.advance(1);
  assert.equal(p.chunksPlayed, 0);
  assert.equal(p.chunksDropped, 4);
  assert.equal(drained, 0, "a barge-in is not a natural end");
  assert.equal(p.stop(), false);
  // The next reply starts fresh, right away.
  const t = p.enqueue(chunk(40));
  assert.ok(Math.abs(t - (ctx.currentTime + 0.02)) < 1e-9);
});

test("sample-accurate continuity: chunked playback equals the whole signal resampled", () => {
  const ctx = new FakeContext(48000);
  const p = new Player(ctx, { inputRate: 24000 });
  const signal = Float32Array.from({ length: 2400 }, (_, i) => Math.sin(i / 10));
  for (let i = 0; i < signal.length; i += 333) p.enqueue(signal.subarray(i, i + 333));
  const played = ctx.sources.flatMap((s) => Array.from(s.buffer.data));
  const whole = resample(signal, 24000, 48000);
  assert.equal(played.length, whole.length);
  for (let k = 0; k < whole.length; k++) assert.ok(Math.abs(played[k] - whole[k]) < 1e-6, `sample ${k}`);
});

test("playedS is what was heard of the current stream, read before a barge-in stops it", () => {
  const ctx = new FakeContext();
  const p = new Player(ctx, { inputRate: 24000, leadS: 0 });
  p.beginStream();
  p.enqueue(chunk(100));
  p.enqueue(chunk(100));
  assert.equal(p.playedS, 0);
  ctx.advance(0.15);
  assert.ok(Math.abs(p.playedS - 0.15) < 0.002, `${p.playedS}`);
  ctx.advance(1);
  assert.ok(Math.abs(p.playedS - 0.2) < 0.002, "no more than was scheduled");
  p.beginStream();
  assert.equal(p.playedS, 0, "a new reply starts from zero");
});
