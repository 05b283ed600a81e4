// AudioWorkletProcessor for microphone capture (the role of QuiLLMan's processor.js).
// Runs on the audio thread: mixes to mono, resamples the context rate down to the session rate,
// cuts fixed frames (e.g. 40 ms) and posts each as pcm16 with its level. The page only
// base64-encodes and sends, so the main thread never touches per-sample work.
//
// Speech detection is the server's job (server VAD); the level here drives the meter and the
// page's own "last voiced frame" mark used to measure voice-to-voice latency.

import { Framer, Resampler, floatToPcm16, levels } from "./pcm.js";

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { targetRate = 24000, frameMs = 40 } = options.processorOptions ?? {};
    // `sampleRate` and `currentTime` are globals of the worklet scope.
    this.resampler = new Resampler(sampleRate, targetRate);
    this.framer = new Framer(Math.round((targetRate * frameMs) / 1000));
    this.frameS = frameMs / 1000;
  }

  process(inputs) {
    const channels = inputs[0];
    if (channels && channels.length > 0) {
      const mono = channels.length === 1 ? channels[0] : mix(channels);
      for (const frame of this.framer.push(this.resampler.process(mono))) {
        const { rms, peak } = levels(frame);
        const pcm = floatToPcm16(frame);
        // `time` = context time at the end of this frame, for latency marks on the page.
        this.port.postMessage({ pcm, rms, peak, time: currentTime + channels[0].length / sampleRate }, [pcm.buffer]);
      }
    }
    return true; // keep running while the node is connected
  }
}

function mix(channels) {
  const out = new Float32Array(channels[0].length);
  for (const ch of channels) for (let i = 0; i < out.length; i++) out[i] += ch[i] / channels.length;
  return out;
}

registerProcessor("quillman-capture", CaptureProcessor);
