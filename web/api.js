// The séance protocol from a browser: the REST routes and a WebSocket that reconnects.
// Types come from protocol.d.ts, generated from the server's Rust types.

/** @typedef {import('./protocol').SessionTicket} SessionTicket */
/** @typedef {import('./protocol').Session} Session */
/** @typedef {import('./protocol').PersonasBody} PersonasBody */
/** @typedef {import('./protocol').MessagesBody} MessagesBody */
/** @typedef {import('./protocol').ErrorBody} ErrorBody */
/** @typedef {import('./protocol').ClientFrame} ClientFrame */
/** @typedef {import('./protocol').ServerFrame} ServerFrame */

/** A REST call that failed: the protocol's `{"error": {code, message}}`, or a network failure. */
export class ApiError extends Error {
  /**
   * @param {number} status HTTP status, 0 when the server could not be reached
   * @param {string} code
   * @param {string} message
   */
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** The REST base: `?api=` when given (a deployed stack's HTTP API), else this page's origin. */
export function apiBase() {
  const given = new URLSearchParams(location.search).get('api');
  return (given || location.origin).replace(/\/+$/, '');
}

/**
 * @template T
 * @param {string} path
 * @param {{method?: string, body?: unknown, token?: string}} [options]
 * @returns {Promise<T>}
 */
async function call(path, options = {}) {
  /** @type {Record<string, string>} */
  const headers = {};
  if (options.body !== undefined) headers['content-type'] = 'application/json';
  if (options.token) headers.authorization = `Bearer ${options.token}`;
  let response;
  try {
    response = await fetch(apiBase() + path, {
      method: options.method || 'GET',
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
    });
  } catch {
    throw new ApiError(0, 'unreachable', 'The séance server cannot be reached. Check your connection and try again.');
  }
  if (response.status === 204) return /** @type {T} */ (/** @type {unknown} */ (undefined));
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    /** @type {ErrorBody | {message?: string} | null} */
    const error = body;
    if (error && 'error' in error && error.error) {
      throw new ApiError(response.status, error.error.code, error.error.message);
    }
    // API Gateway's own answers are {"message": …}.
    const message = error && 'message' in error && error.message ? error.message : `HTTP ${response.status}`;
    throw new ApiError(response.status, 'gateway', message);
  }
  return body;
}

export const api = {
  /** @returns {Promise<PersonasBody>} */
  personas: () => call('/api/personas'),
  /** @param {import('./protocol').CreateSessionBody} body @returns {Promise<SessionTicket>} */
  create: (body) => call('/api/sessions', { method: 'POST', body }),
  /** @param {string} id @param {string} displayName @returns {Promise<SessionTicket>} */
  join: (id, displayName) => call(`/api/sessions/${encodeURIComponent(id)}/join`, { method: 'POST', body: { display_name: displayName } }),
  /** @param {string} id @returns {Promise<Session>} */
  session: (id) => call(`/api/sessions/${encodeURIComponent(id)}`),
  /** @param {string} id @param {string} token @param {string} [before] @returns {Promise<MessagesBody>} */
  messages: (id, token, before) => call(`/api/sessions/${encodeURIComponent(id)}/messages?limit=50${before ? `&before=${encodeURIComponent(before)}` : ''}`, { token }),
  /** @param {string} id @param {string} token @returns {Promise<void>} */
  end: (id, token) => call(`/api/sessions/${encodeURIComponent(id)}/end`, { method: 'POST', token }),
};

/**
 * One participant's socket. It opens with the token as a subprotocol (browsers cannot set
 * headers), sends `sync` once open (the server cannot push before the handshake ends), and
 * after a drop reconnects with exponential back-off and `sync.after` the last message it
 * holds, so nothing is lost and nothing is shown twice.
 */
export class SeanceSocket {
  /**
   * @param {SessionTicket} ticket
   * @param {{
   *   onFrame: (frame: ServerFrame) => void,
   *   onStatus: (status: 'connecting' | 'open' | 'reconnecting' | 'closed', attempt: number, delayMs: number) => void,
   *   lastMessageId: () => string | null,
   *   shouldReconnect: () => Promise<boolean>,
   * }} handlers
   */
  constructor(ticket, handlers) {
    this.ticket = ticket;
    this.handlers = handlers;
    /** @type {WebSocket | null} */
    this.socket = null;
    this.attempt = 0;
    this.stopped = false;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this.timer = null;
    this.pingTimer = null;
  }

  open() {
    this.stopped = false;
    this.handlers.onStatus(this.attempt === 0 ? 'connecting' : 'reconnecting', this.attempt, 0);
    const socket = new WebSocket(this.ticket.websocket_url, ['seance', this.ticket.token]);
    this.socket = socket;
    socket.addEventListener('open', () => {
      this.attempt = 0;
      this.handlers.onStatus('open', 0, 0);
      this.sync(this.handlers.lastMessageId());
      // API Gateway drops a socket idle for 10 minutes.
      this.pingTimer = setInterval(() => this.send({ type: 'ping' }), 5 * 60 * 1000);
    });
    socket.addEventListener('message', (event) => {
      let frame;
      try {
        frame = JSON.parse(String(event.data));
      } catch {
        return;
      }
      // API Gateway's own frames ({"message": …}) have no type: ignore them.
      if (frame && typeof frame.type === 'string') this.handlers.onFrame(frame);
    });
    socket.addEventListener('close', () => {
      if (this.pingTimer) clearInterval(this.pingTimer);
      if (this.socket !== socket) return;
      this.socket = null;
      if (!this.stopped) this.retry();
    });
  }

  async retry() {
    if (!(await this.handlers.shouldReconnect())) {
      this.stopped = true;
      this.handlers.onStatus('closed', this.attempt, 0);
      return;
    }
    this.attempt += 1;
    // 0.5 s, 1 s, 2 s … up to 15 s, with jitter so a room does not come back in lockstep.
    const base = Math.min(15000, 500 * 2 ** (this.attempt - 1));
    const delay = Math.round(base * (0.75 + Math.random() * 0.5));
    this.handlers.onStatus('reconnecting', this.attempt, delay);
    this.timer = setTimeout(() => this.open(), delay);
  }

  /** @param {string | null} after */
  sync(after) {
    this.send(after ? { type: 'sync', after } : { type: 'sync' });
  }

  /** @param {ClientFrame} frame @returns {boolean} whether it went out */
  send(frame) {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return false;
    this.socket.send(JSON.stringify(frame));
    return true;
  }

  get isOpen() {
    return !!this.socket && this.socket.readyState === WebSocket.OPEN;
  }

  close() {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.pingTimer) clearInterval(this.pingTimer);
    const socket = this.socket;
    this.socket = null;
    if (socket) socket.close(1000, 'bye');
    this.handlers.onStatus('closed', 0, 0);
  }
}
