// Pure audio helpers shared by the page, the capture worklet and the tests.
// No DOM and no Web Audio here, so Node can import this file as it is.

/** Float32 samples in [-1, 1] -> signed 16-bit PCM (clamped, asymmetric scale like the Web Audio spec). */
export function floatToPcm16(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = samples[i];
    // NaN would become 0 through Int16Array anyway; clamp first so loud input saturates instead of wrapping.
    const c = s > 1 ? 1 : s < -1 ? -1 : s;
    out[i] = c < 0 ? Math.round(c * 0x8000) : Math.round(c * 0x7fff);
  }
  return out;
}

/** Signed 16-bit PCM -> Float32 in [-1, 1). */
export function pcm16ToFloat(pcm) {
  const out = new Float32Array(pcm.length);
  for (let i = 0; i < pcm.length; i++) out[i] = pcm[i] / 0x8000;
  return out;
}

/** Int16Array -> little-endian bytes, whatever the platform's byte order. */
export function pcm16ToBytes(pcm) {
  const bytes = new Uint8Array(pcm.length * 2);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < pcm.length; i++) view.setInt16(i * 2, pcm[i], true);
  return bytes;
}

/** Little-endian bytes -> Int16Array. An odd trailing byte is dropped (it cannot be a sample). */
export function bytesToPcm16(bytes) {
  const n = bytes.length >> 1;
  const out = new Int16Array(n);
  const view = new DataView(bytes.buffer, bytes.byteOffset, n * 2);
  for (let i = 0; i < n; i++) out[i] = view.getInt16(i * 2, true);
  return out;
}

// btoa/atob work on "binary strings"; String.fromCharCode(...big) overflows the argument
// limit, so bytes go through in slices.
const B64_SLICE = 0x8000;

export function bytesToBase64(bytes) {
  let bin = "";
  for (let i = 0; i < bytes.length; i += B64_SLICE) {
    bin += String.fromCharCode.apply(null, bytes.subarray(i, i + B64_SLICE));
  }
  return btoa(bin);
}

export function base64ToBytes(b64) {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** Float32 -> base64 pcm16 little-endian: the `audio` of `input_audio_buffer.append`. */
export function encodeAudio(samples) {
  return bytesToBase64(pcm16ToBytes(floatToPcm16(samples)));
}

/** base64 pcm16 little-endian (the `delta` of `response.output_audio.delta`) -> Float32. */
export function decodeAudio(b64) {
  return pcm16ToFloat(bytesToPcm16(base64ToBytes(b64)));
}

/** Root-mean-square and peak of a block, for the level meter and the local speech-end mark. */
export function levels(samples) {
  let sum = 0;
  let peak = 0;
  for (let i = 0; i < samples.length; i++) {
    const a = Math.abs(samples[i]);
    sum += a * a;
    if (a > peak) peak = a;
  }
  return { rms: samples.length ? Math.sqrt(sum / samples.length) : 0, peak };
}

/** Level in [0, 1] for a meter: -60 dBFS..0 dBFS mapped linearly. */
export function meterLevel(rms) {
  if (!(rms > 0)) return 0;
  const db = 20 * Math.log10(rms);
  return Math.min(1, Math.max(0, (db + 60) / 60));
}

/**
 * Streaming sample-rate converter that keeps its phase across blocks, so audio cut into
 * 128-frame render quanta (capture) or network chunks (playback) converts exactly as if it
 * were one long signal: no clicks or drift at block edges.
 *
 * Band-limited interpolation: each output sample is the input convolved with a Blackman-windowed
 * sinc low-pass, evaluated at the output instant. The cutoff sits just under the lower of the
 * two Nyquist rates, so downsampling 48 kHz to 24 kHz keeps nothing above ~11 kHz to fold back
 * into the speech band Whisper and the turn model hear (a box filter leaves -10 dB there), and
 * upsampling leaves no images. Cost: 2 * ZERO_CROSSINGS / cutoff taps per output sample
 * (~70 at 48 -> 24 kHz), and that many input samples of delay (< 1 ms).
 */
const ZERO_CROSSINGS = 16; // per side; more = sharper cutoff, more taps
const ROLLOFF = 0.9; // cutoff as a share of the lower Nyquist rate

export class Resampler {
  constructor(inRate, outRate) {
    if (!(inRate > 0) || !(outRate > 0)) throw new RangeError("sample rates must be positive");
    this.inRate = inRate;
    this.outRate = outRate;
    this.step = inRate / outRate; // input samples per output sample
    // Cutoff in cycles per input sample, times 2 (1 = the input's Nyquist).
    this.cutoff = ROLLOFF * Math.min(1, outRate / inRate);
    this.half = ZERO_CROSSINGS / this.cutoff; // filter half-width, in input samples
    this.reset();
  }

  reset() {
    // `pos` is the next output instant, in input samples relative to `tail[0]`; the tail starts
    // with `half` zeros so the first output sample has its left half of the filter.
    const lead = Math.ceil(this.half);
    this.tail = new Float32Array(lead);
    this.pos = lead;
  }

  process(input) {
    if (this.step === 1) return Float32Array.from(input);
    const buf = new Float32Array(this.tail.length + input.length);
    buf.set(this.tail);
    buf.set(input, this.tail.length);
    const { step, half, cutoff } = this;
    const count = Math.max(0, Math.ceil((buf.length - half - this.pos) / step));
    const out = new Float32Array(count);
    let pos = this.pos;
    for (let k = 0; k < count; k++) {
      const first = Math.max(0, Math.ceil(pos - half));
      const last = Math.min(buf.length - 1, Math.floor(pos + half));
      let acc = 0;
      let gain = 0;
      for (let i = first; i <= last; i++) {
        const w = tap(i - pos, half, cutoff);
        acc += buf[i] * w;
        gain += w;
      }
      out[k] = gain ? acc / gain : 0; // unit DC gain whatever the phase
      pos += step;
    }
    const from = Math.max(0, Math.min(Math.floor(pos - half), buf.length));
    this.tail = buf.slice(from);
    this.pos = pos - from;
    return out;
  }
}

/** Windowed-sinc low-pass tap at distance `x` (input samples) from the output instant. */
function tap(x, half, cutoff) {
  if (Math.abs(x) >= half) return 0;
  const t = Math.PI * cutoff * x;
  const sinc = t === 0 ? 1 : Math.sin(t) / t;
  const phase = (Math.PI * (x + half)) / half; // 0..2π across the window
  const blackman = 0.42 - 0.5 * Math.cos(phase) + 0.08 * Math.cos(2 * phase);
  return cutoff * sinc * blackman;
}

/** One-shot conversion of a whole signal. */
export function resample(samples, inRate, outRate) {
  return new Resampler(inRate, outRate).process(samples);
}

/**
 * Cuts a stream of samples into fixed-size frames (e.g. 40 ms for `input_audio_buffer.append`).
 * push() returns the frames completed by this block, each a fresh Float32Array.
 */
export class Framer {
  constructor(frameSize) {
    if (!(frameSize > 0)) throw new RangeError("frame size must be positive");
    this.frameSize = frameSize;
    this.buf = new Float32Array(frameSize);
    this.fill = 0;
  }

  push(samples) {
    const frames = [];
    let i = 0;
    while (i < samples.length) {
      const n = Math.min(this.frameSize - this.fill, samples.length - i);
      this.buf.set(samples.subarray(i, i + n), this.fill);
      this.fill += n;
      i += n;
      if (this.fill === this.frameSize) {
        frames.push(this.buf);
        this.buf = new Float32Array(this.frameSize);
        this.fill = 0;
      }
    }
    return frames;
  }
}
