import { test } from "node:test";
import assert from "node:assert/strict";
import {
  Framer,
  Resampler,
  base64ToBytes,
  bytesToBase64,
  bytesToPcm16,
  decodeAudio,
  encodeAudio,
  floatToPcm16,
  levels,
  meterLevel,
  pcm16ToBytes,
  pcm16ToFloat,
  resample,
} from "../pcm.js";

const sine = (freq, rate, n, amp = 0.5) => Float32Array.from({ length: n }, (_, i) => amp * Math.sin((2 * Math.PI * freq * i) / rate));

/** Frequency of the strongest component by a naive DFT scan around candidates (small n only). */
function power(signal, freq, rate) {
  let re = 0;
  let im = 0;
  for (let i = 0; i < signal.length; i++) {
    re += signal[i] * Math.cos((2 * Math.PI * freq * i) / rate);
    im -= signal[i] * Math.sin((2 * Math.PI * freq * i) / rate);
  }
  return (re * re + im * im) / signal.length ** 2;
}

function splitInto(signal, sizes) {
  const parts = [];
  let i = 0;
  let k = 0;
  while (i < signal.length) {
    const n = sizes[k++ % sizes.length];
    parts.push(signal.subarray(i, i + n));
    i += n;
  }
  return parts;
}

const concat = (arrays) => {
  const out = new Float32Array(arrays.reduce((n, a) => n + a.length, 0));
  let o = 0;
  for (const a of arrays) {
    out.set(a, o);
    o += a.length;
  }
  return out;
};

test("floatToPcm16 scales, rounds and clamps", () => {
  assert.deepEqual(Array.from(floatToPcm16(Float32Array.from([0, 1, -1, 0.5, -0.5, 2, -2, NaN]))), [
    0, 32767, -32768, 16384, -16384, 32767, -32768, 0,
  ]);
});

test("pcm16ToFloat inverts floatToPcm16 within two steps", () => {
  const x = sine(440, 24000, 480, 0.9);
  const y = pcm16ToFloat(floatToPcm16(x));
  for (let i = 0; i < x.length; i++) assert.ok(Math.abs(x[i] - y[i]) <= 2 / 32768); // asymmetric scale + rounding
  assert.equal(pcm16ToFloat(Int16Array.from([-32768]))[0], -1);
});

test("pcm16 bytes are little-endian", () => {
  const bytes = pcm16ToBytes(Int16Array.from([1, -2, 0x1234]));
  assert.deepEqual(Array.from(bytes), [0x01, 0x00, 0xfe, 0xff, 0x34, 0x12]);
  assert.deepEqual(Array.from(bytesToPcm16(bytes)), [1, -2, 0x1234]);
  // An odd trailing byte is not a sample.
  assert.deepEqual(Array.from(bytesToPcm16(Uint8Array.from([1, 0, 7]))), [1]);
});

test("base64 round-trips and matches Node's encoder, also past the slice size", () => {
  const bytes = Uint8Array.from({ length: 100000 }, (_, i) => (i * 7919) & 0xff);
  const b64 = bytesToBase64(bytes);
  assert.equal(b64, Buffer.from(bytes).toString("base64"));
  assert.deepEqual(base64ToBytes(b64), bytes);
  assert.equal(bytesToBase64(new Uint8Array(0)), "");
});

test("encodeAudio/decodeAudio: the wire format of append and output_audio.delta", () => {
  const x = Float32Array.from([0, 0.25, -0.25, 1, -1]);
  const b64 = encodeAudio(x);
  const raw = Buffer.from(b64, "base64");
  assert.equal(raw.length, 10);
  assert.equal(raw.readInt16LE(2), 8192);
  assert.equal(raw.readInt16LE(8), -32768);
  const y = decodeAudio(b64);
  assert.equal(y.length, 5);
  assert.ok(Math.abs(y[1] - 0.25) < 1e-3);
});

test("levels and meterLevel", () => {
  const { rms, peak } = levels(Float32Array.from([0.5, -0.5, 0.5, -0.5]));
  assert.equal(rms, 0.5);
  assert.equal(peak, 0.5);
  assert.deepEqual(levels(new Float32Array(0)), { rms: 0, peak: 0 });
  assert.equal(meterLevel(0), 0);
  assert.equal(meterLevel(1), 1);
  assert.ok(Math.abs(meterLevel(0.001) - 0) < 1e-9); // -60 dBFS = floor
  assert.ok(Math.abs(meterLevel(0.0316227766) - 0.5) < 1e-6); // -30 dBFS = half
});

test("downsampling keeps DC after the filter's lead-in", () => {
  const r = new Resampler(44100, 24000);
  const dc = r.process(new Float32Array(4410).fill(0.3));
  const lead = Math.ceil(r.half / r.step);
  assert.ok(Math.abs(dc.length + lead - 2400) <= 2, "short by the filter delay only");
  for (const v of dc.subarray(lead)) assert.ok(Math.abs(v - 0.3) < 1e-3);
});

test("downsampling keeps a speech-band tone and removes what would alias", () => {
  const rate = 48000;
  const n = 4800;
  const tone = resample(sine(1000, rate, n), rate, 24000);
  // The 1 kHz tone survives at nearly full power...
  assert.ok(power(tone, 1000, 24000) > 0.9 * power(sine(1000, rate, n), 1000, rate));
  // ...and tones above the new 12 kHz Nyquist (they would fold to 10 and 4 kHz) are all but gone:
  // a box filter lets 20 kHz through at about -10 dB, plain decimation at full power.
  for (const [freq, folded] of [[14000, 10000], [20000, 4000]]) {
    const high = sine(freq, rate, n);
    const decimated = Float32Array.from({ length: 2400 }, (_, i) => high[2 * i]);
    const filtered = resample(high, rate, 24000);
    assert.ok(power(filtered, folded, 24000) < 0.001 * power(decimated, folded, 24000), `${freq} Hz`);
  }
});

for (const [inRate, outRate] of [
  [48000, 24000],
  [44100, 24000],
  [96000, 24000],
  [22050, 24000],
  [24000, 48000],
  [24000, 44100],
  [16000, 24000],
]) {
  test(`streaming ${inRate} -> ${outRate} in odd blocks equals one-shot`, () => {
    const x = sine(440, inRate, Math.round(inRate * 0.25));
    const whole = resample(x, inRate, outRate);
    const r = new Resampler(inRate, outRate);
    const pieces = concat(splitInto(x, [128, 1, 37, 500, 3]).map((b) => r.process(b)));
    assert.equal(pieces.length, whole.length);
    for (let i = 0; i < whole.length; i++) assert.ok(Math.abs(pieces[i] - whole[i]) < 1e-5, `sample ${i}`);
    // Length tracks the rate ratio (no drift), short only by the filter's delay.
    const delay = Math.ceil(r.half / r.step);
    assert.ok(Math.abs(whole.length + delay - (x.length * outRate) / inRate) <= 2);
    // And the tone is still 440 Hz.
    assert.ok(power(whole, 440, outRate) > 10 * power(whole, 880, outRate));
  });
}

test("upsampling keeps the tone and adds no image above the old Nyquist", () => {
  const up = resample(sine(5000, 24000, 2400), 24000, 48000);
  assert.ok(power(up, 5000, 48000) > 1000 * power(up, 19000, 48000));
});

test("equal rates pass through and reset() forgets the held tail", () => {
  assert.deepEqual(Array.from(resample(Float32Array.from([0.1, 0.2]), 24000, 24000)), [
    Math.fround(0.1),
    Math.fround(0.2),
  ]);
  const r = new Resampler(48000, 24000);
  assert.equal(r.process(Float32Array.from([1])).length, 0); // less than the filter's reach: held
  r.reset();
  const x = sine(440, 48000, 480);
  assert.deepEqual(Array.from(r.process(x)), Array.from(new Resampler(48000, 24000).process(x)));
  assert.throws(() => new Resampler(0, 24000), RangeError);
});

test("Framer cuts exact frames across arbitrary blocks", () => {
  const f = new Framer(960); // 40 ms at 24 kHz
  const frames = [];
  let next = 0;
  for (const size of [128, 64, 1000, 7, 2000]) {
    const block = Float32Array.from({ length: size }, () => next++);
    frames.push(...f.push(block));
  }
  assert.equal(frames.length, Math.floor(next / 960));
  frames.forEach((fr, k) => {
    assert.equal(fr.length, 960);
    assert.equal(fr[0], k * 960);
    assert.equal(fr[959], k * 960 + 959);
  });
  assert.throws(() => new Framer(0), RangeError);
});
