// The talking board, drawn from `session_state.board`, and the planchette gliding along
// the server's path in time with each point's `at_ms`.

/** @typedef {import('./protocol').Board} Board */
/** @typedef {import('./protocol').PathPoint} PathPoint */

const SVG = 'http://www.w3.org/2000/svg';
const WIDTH = 1000;
const HEIGHT = 700;
/** How long the planchette takes to glide to the next symbol (it waits on each until then). */
const GLIDE_MS = 320;

/**
 * @param {string} name
 * @param {Record<string, string | number>} attributes
 * @param {string} [text]
 */
function el(name, attributes, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

export class TalkingBoard {
  /**
   * @param {SVGSVGElement} svg
   * @param {HTMLElement} spelled where the letters visited so far are written
   */
  constructor(svg, spelled) {
    this.svg = svg;
    this.spelled = spelled;
    /** @type {Map<string, SVGTextElement>} */
    this.symbols = new Map();
    /** @type {Map<string, {x: number, y: number}>} */
    this.places = new Map();
    /** @type {PathPoint[]} */
    this.path = [];
    /** @type {number | null} performance.now() at the answer's `at_ms` 0 */
    this.startedAt = null;
    this.next = 0;
    this.visits = 0;
    /** @type {ReturnType<typeof setInterval> | null} */
    this.timer = null;
    /** @type {string | null} */
    this.questionId = null;
    this.planchette = el('g', { class: 'planchette', 'data-symbol': 'REST', 'data-visit': 0, 'aria-hidden': 'true' });
    this.position = { x: WIDTH / 2, y: HEIGHT / 2 };
    /** Whether the whole path is known (`spirit_response` came). */
    this.final = false;
    /** Called when the planchette has visited the last symbol of a complete answer. */
    this.onFinish = () => {};
  }

  /** @param {Board} board */
  draw(board) {
    this.svg.replaceChildren();
    this.symbols.clear();
    this.places.clear();
    this.svg.append(el('rect', { x: 8, y: 8, width: WIDTH - 16, height: HEIGHT - 16, rx: 48, class: 'board-face' }));
    this.svg.append(el('rect', { x: 28, y: 28, width: WIDTH - 56, height: HEIGHT - 56, rx: 36, class: 'board-inlay' }));
    for (const { symbol, x, y } of board.symbols) {
      const place = { x: x * WIDTH, y: y * HEIGHT };
      this.places.set(symbol, place);
      if (symbol === 'REST') continue;
      const word = symbol.length > 1;
      const text = el('text', { x: place.x, y: place.y, class: word ? 'symbol word' : 'symbol', 'text-anchor': 'middle', 'dominant-baseline': 'central' }, symbol);
      this.symbols.set(symbol, /** @type {SVGTextElement} */ (text));
      this.svg.append(text);
    }
    // The planchette: a rounded heart with a window over the symbol it points at.
    this.planchette.replaceChildren(
      el('path', { d: 'M0,-62 C38,-62 62,-30 58,4 C54,38 22,60 0,74 C-22,60 -54,38 -58,4 C-62,-30 -38,-62 0,-62 Z', class: 'planchette-body' }),
      el('circle', { cx: 0, cy: 0, r: 24, class: 'planchette-window' }),
    );
    this.svg.append(this.planchette);
    this.moveTo(this.places.get('REST') || { x: WIDTH / 2, y: HEIGHT / 2 });
  }

  /** @param {{x: number, y: number}} place */
  moveTo(place) {
    this.position = place;
    this.planchette.setAttribute('transform', `translate(${place.x.toFixed(1)} ${place.y.toFixed(1)})`);
  }

  /** A new answer (or the same one restarted): forget the path so far. @param {string} questionId */
  begin(questionId) {
    this.stop();
    this.questionId = questionId;
    this.path = [];
    this.next = 0;
    this.startedAt = null;
    this.final = false;
    this.spelled.textContent = '';
  }

  /**
   * More of the path. The answer's clock starts when its first points arrive.
   * @param {string} questionId
   * @param {PathPoint[]} points
   */
  extend(questionId, points) {
    if (this.questionId !== questionId) this.begin(questionId);
    if (this.startedAt === null) this.startedAt = performance.now();
    this.path.push(...points);
    this.run();
  }

  /**
   * The whole path, from `spirit_response`: replaces what the tokens gave (a page that
   * joined mid-answer has only part of it) and plays what has not been played.
   * @param {string} questionId
   * @param {PathPoint[]} points
   */
  complete(questionId, points) {
    if (this.questionId !== questionId) this.begin(questionId);
    if (this.startedAt === null) this.startedAt = performance.now();
    this.path = points.slice();
    this.final = true;
    this.run();
  }

  /** Milliseconds on the answer's clock, or null when no answer is playing. */
  get clock() {
    return this.startedAt === null ? null : performance.now() - this.startedAt;
  }

  run() {
    if (this.timer === null) this.timer = setInterval(() => this.step(), 30);
    this.step();
  }

  stop() {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  step() {
    const now = this.clock;
    if (now === null) return;
    while (this.next < this.path.length && this.path[this.next].at_ms <= now) {
      this.arrive(this.path[this.next]);
      this.next += 1;
    }
    if (this.next >= this.path.length) {
      this.stop();
      if (this.final) {
        this.final = false;
        this.onFinish();
      }
      return;
    }
    // Between two symbols: wait on the last one, then glide to the next in time.
    const target = this.path[this.next];
    const from = this.next > 0 ? this.path[this.next - 1] : null;
    const fromPlace = from ? { x: from.x * WIDTH, y: from.y * HEIGHT } : this.position;
    const toPlace = { x: target.x * WIDTH, y: target.y * HEIGHT };
    const leave = Math.max(from ? from.at_ms : 0, target.at_ms - GLIDE_MS);
    if (now < leave) return;
    const span = Math.max(1, target.at_ms - leave);
    const t = Math.min(1, (now - leave) / span);
    const eased = t * t * (3 - 2 * t);
    this.moveTo({ x: fromPlace.x + (toPlace.x - fromPlace.x) * eased, y: fromPlace.y + (toPlace.y - fromPlace.y) * eased });
  }

  /** @param {PathPoint} point */
  arrive(point) {
    this.moveTo({ x: point.x * WIDTH, y: point.y * HEIGHT });
    this.visits += 1;
    this.planchette.setAttribute('data-symbol', point.symbol);
    this.planchette.setAttribute('data-visit', String(this.visits));
    const text = this.symbols.get(point.symbol);
    if (text) {
      text.classList.add('lit');
      setTimeout(() => text.classList.remove('lit'), 450);
    }
    if (point.symbol === 'REST') {
      if (this.spelled.textContent && !this.spelled.textContent.endsWith(' ')) this.spelled.textContent += ' ';
    } else {
      this.spelled.textContent += point.symbol;
    }
  }
}
