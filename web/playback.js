// Gapless streamed playback of reply audio: each chunk becomes an AudioBufferSourceNode started
// exactly where the previous one ends, on the AudioContext clock. The first chunk plays as soon as
// it arrives (plus a few ms of scheduling lead); there is no jitter buffer to fill first.
//
// Only uses the AudioContext surface (currentTime, sampleRate, createBuffer, createBufferSource),
// so the tests drive it with a fake context.

import { Resampler } from "./pcm.js";

export class Player {
  /**
   * @param {BaseAudioContext} ctx
   * @param {object} opts
   * @param {number} opts.inputRate  rate of the chunks given to enqueue() (the session's output rate)
   * @param {AudioNode} [opts.destination]  defaults to ctx.destination
   * @param {number} [opts.leadS]  how far ahead of "now" a chunk starts when nothing is queued
   * @param {(startTime:number)=>void} [opts.onStart]  playback went from silent to sounding
   * @param {()=>void} [opts.onDrained]  everything queued has been played
   */
  constructor(ctx, { inputRate, destination, leadS = 0.02, onStart = () => {}, onDrained = () => {} }) {
    this.ctx = ctx;
    this.destination = destination ?? ctx.destination;
    this.leadS = leadS;
    this.onStart = onStart;
    this.onDrained = onDrained;
    // Resample to the context rate ourselves, with state kept across chunks: the browser would
    // resample each buffer on its own, which can click at every chunk boundary.
    this.resampler = new Resampler(inputRate, ctx.sampleRate);
    this.active = new Set();
    this.nextTime = 0;
    this.chunksReceived = 0;
    this.chunksPlayed = 0;
    this.chunksDropped = 0;
    this._starts = new Map(); // source -> [start time, duration], for playedS
    this._playedEndedS = 0; // seconds of this stream in chunks that finished playing
  }

  /** Seconds of the current stream (since beginStream) the listener has heard: what a
   * barge-in's `conversation.item.truncate` reports as `audio_end_ms`. Read it before stop(). */
  get playedS() {
    const now = this.ctx.currentTime;
    let heard = this._playedEndedS;
    for (const [start, duration] of this._starts.values()) heard += Math.min(Math.max(now - start, 0), duration);
    return heard;
  }

  get playing() {
    return this.active.size > 0;
  }

  /** Seconds of audio scheduled but not yet heard. */
  get bufferedS() {
    return Math.max(0, this.nextTime - this.ctx.currentTime);
  }

  /** Queue one chunk (Float32 at inputRate). Returns the context time it starts at, or null if empty. */
  enqueue(samples) {
    this.chunksReceived++;
    const data = this.resampler.process(samples);
    if (data.length === 0) return null;

    const buffer = this.ctx.createBuffer(1, data.length, this.ctx.sampleRate);
    buffer.copyToChannel(data, 0);
    const src = this.ctx.createBufferSource();
    src.buffer = buffer;
    src.connect(this.destination);

    const wasIdle = !this.playing;
    // First chunk, or the queue ran dry (underrun): restart a little ahead of now.
    const earliest = this.ctx.currentTime + this.leadS;
    if (this.nextTime < earliest) this.nextTime = earliest;
    const startTime = this.nextTime;
    src.start(startTime);
    this.nextTime += data.length / this.ctx.sampleRate;

    this.active.add(src);
    this._starts.set(src, [startTime, data.length / this.ctx.sampleRate]);
    src.onended = () => this._ended(src);
    if (wasIdle) this.onStart(startTime);
    return startTime;
  }

  /** A new reply begins: don't carry the last reply's resampler phase into it. */
  beginStream() {
    this.resampler.reset();
    this._playedEndedS = 0;
  }

  /** Barge-in: silence now and forget everything queued. */
  stop() {
    for (const src of this.active) {
      src.onended = null; // a stopped chunk was not played
      try {
        src.stop();
      } catch {
        // not started yet in some engines: nothing to stop
      }
      src.disconnect();
      this.chunksDropped++;
    }
    const hadAudio = this.active.size > 0;
    this.active.clear();
    this._starts.clear();
    this.nextTime = 0;
    this.resampler.reset();
    return hadAudio;
  }

  _ended(src) {
    if (!this.active.delete(src)) return;
    this._playedEndedS += this._starts.get(src)?.[1] ?? 0;
    this._starts.delete(src);
    src.disconnect();
    this.chunksPlayed++;
    if (this.active.size === 0) this.onDrained();
  }
}
