// The spirit's voice through Web Audio: the pieces of one answer's audio joined in `seq`
// order, decoded, and played through a gain and a stereo panner automated from this
// listener's own `pan_track`, on the planchette's clock.

/** @typedef {import('./protocol').PanPoint} PanPoint */
/** @typedef {Extract<import('./protocol').ServerEvent, {type: 'spirit_audio'}>} SpiritAudio */

export class Voice {
  /** @param {HTMLElement} status a place to say what was played (tests and screen readers read it) */
  constructor(status) {
    this.status = status;
    /** @type {AudioContext | null} */
    this.context = null;
    this.muted = false;
    /** @type {GainNode | null} */
    this.master = null;
    /** @type {Map<string, {pieces: Map<number, string>, pan: PanPoint[], last: number | null}>} */
    this.answers = new Map();
    this.played = 0;
  }

  /** Browsers start audio only after a gesture: call this from a click or a key press. */
  unlock() {
    const Context = window.AudioContext;
    if (!Context) return;
    if (!this.context) {
      this.context = new Context();
      this.master = this.context.createGain();
      this.master.gain.value = this.muted ? 0 : 1;
      this.master.connect(this.context.destination);
    }
    if (this.context.state === 'suspended') this.context.resume().catch(() => {});
  }

  /** @param {boolean} muted */
  setMuted(muted) {
    this.muted = muted;
    if (this.master && this.context) this.master.gain.setValueAtTime(muted ? 0 : 1, this.context.currentTime);
  }

  /**
   * One piece; the last one plays the answer.
   * @param {SpiritAudio} piece
   * @param {number | null} clockMs where the answer's clock is now (null: not started)
   */
  receive(piece, clockMs) {
    let answer = this.answers.get(piece.message_id);
    if (!answer) {
      answer = { pieces: new Map(), pan: [], last: null };
      this.answers.set(piece.message_id, answer);
    }
    answer.pieces.set(piece.seq, piece.audio_base64);
    answer.pan.push(...piece.pan_track);
    if (piece.last) answer.last = piece.seq;
    if (answer.last !== null && answer.pieces.size === answer.last + 1) {
      this.answers.delete(piece.message_id);
      this.play(piece.message_id, answer, piece.format, clockMs).catch((error) => {
        this.status.textContent = `The spirit's voice could not be played (${error && error.message ? error.message : 'unknown error'}).`;
      });
    }
  }

  /** A restarted answer: drop the audio gathered for it. @param {string} questionId */
  forget(questionId) {
    void questionId;
    this.answers.clear();
  }

  /**
   * @param {string} messageId
   * @param {{pieces: Map<number, string>, pan: PanPoint[], last: number | null}} answer
   * @param {string} format
   * @param {number | null} clockMs
   */
  async play(messageId, answer, format, clockMs) {
    const chunks = [];
    let length = 0;
    for (let seq = 0; seq <= (answer.last || 0); seq += 1) {
      const binary = atob(answer.pieces.get(seq) || '');
      const bytes = new Uint8Array(binary.length);
      for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
      chunks.push(bytes);
      length += bytes.length;
    }
    const file = new Uint8Array(length);
    let at = 0;
    for (const chunk of chunks) {
      file.set(chunk, at);
      at += chunk.length;
    }
    if (!this.context || !this.master) {
      this.status.textContent = 'The spirit spoke; click anywhere on the page to hear it next time.';
      return;
    }
    const context = this.context;
    const buffer = await context.decodeAudioData(file.buffer);
    // The audio's 0 is the answer's clock 0: start part-way in when it came late.
    const offset = Math.max(0, (clockMs || 0) / 1000);
    if (offset >= buffer.duration) {
      this.report(messageId, format, buffer.duration, 'too late to play');
      return;
    }
    const source = context.createBufferSource();
    source.buffer = buffer;
    const gain = context.createGain();
    const panner = context.createStereoPanner();
    source.connect(gain).connect(panner).connect(this.master);
    const start = context.currentTime + 0.02;
    const track = answer.pan.slice().sort((a, b) => a.at_ms - b.at_ms);
    let first = true;
    for (const point of track) {
      const when = start + point.at_ms / 1000 - offset;
      const pan = Math.max(-1, Math.min(1, point.pan));
      const level = Math.max(0, Math.min(1, point.gain));
      if (first || when <= start) {
        panner.pan.setValueAtTime(pan, Math.max(start, when));
        gain.gain.setValueAtTime(level, Math.max(start, when));
        first = false;
      } else {
        panner.pan.linearRampToValueAtTime(pan, when);
        gain.gain.linearRampToValueAtTime(level, when);
      }
    }
    source.start(start, offset);
    this.report(messageId, format, buffer.duration, track.length ? `pan ${track[0].pan.toFixed(2)} to ${track[track.length - 1].pan.toFixed(2)}` : 'centred');
  }

  /**
   * @param {string} messageId
   * @param {string} format
   * @param {number} seconds
   * @param {string} how
   */
  report(messageId, format, seconds, how) {
    this.played += 1;
    this.status.dataset.played = String(this.played);
    this.status.dataset.messageId = messageId;
    this.status.textContent = `The spirit spoke for ${seconds.toFixed(1)} s (${format}, ${how}).`;
  }
}
