// Microphone capture for the playground: float samples from the audio graph (the AudioContext runs
// at 16 kHz, so the browser resamples the microphone) into 16-bit PCM frames of 100 ms, posted to
// the page, which sends them over the WebSocket while the talk button is down.
class PcmCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.frame = new Int16Array(1600);
    this.used = 0;
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    const samples = input[0];
    for (let i = 0; i < samples.length; i++) {
      const s = Math.max(-1, Math.min(1, samples[i]));
      this.frame[this.used++] = s < 0 ? s * 0x8000 : s * 0x7fff;
      if (this.used === this.frame.length) {
        this.port.postMessage(this.frame.buffer, [this.frame.buffer]);
        this.frame = new Int16Array(1600);
        this.used = 0;
      }
    }
    return true;
  }
}

registerProcessor("pcm-capture", PcmCapture);
