// The reference séance client: create or join a séance, sit at the table, ask, and watch
// (and hear) the spirit answer. Plain JavaScript modules; types from protocol.d.ts.

import { api, apiBase, ApiError, SeanceSocket } from './api.js';
import { TalkingBoard } from './board.js';
import { Voice } from './voice.js';

/** @typedef {import('./protocol').SessionTicket} SessionTicket */
/** @typedef {import('./protocol').Session} Session */
/** @typedef {import('./protocol').Participant} Participant */
/** @typedef {import('./protocol').Message} Message */
/** @typedef {import('./protocol').ServerFrame} ServerFrame */
/** @typedef {import('./protocol').ErrorCode} ErrorCode */

/** @param {string} id */
function $(id) {
  const node = document.getElementById(id);
  if (!node) throw new Error(`the page has no #${id}`);
  return node;
}
const input = (/** @type {string} */ id) => /** @type {HTMLInputElement} */ ($(id));

/** What to tell a person for each of the socket's error codes. @type {Record<ErrorCode, string>} */
const SOCKET_ERRORS = {
  invalid_json: 'The server could not read what this page sent. Reloading the page should help.',
  unknown_type: 'The server did not understand a request from this page. Reloading the page should help.',
  invalid_message: 'That was not accepted',
  rate_limited: 'You are going too fast for the spirit.',
  spirit_busy: 'The spirit already has three questions waiting. Ask again once it has answered one.',
  session_ended: 'This séance has ended.',
  unavailable: 'The séance cannot reach its storage for a moment. Nothing was lost; try again shortly.',
  internal: 'Something went wrong on the server. Please try again.',
};

/** What to tell a person when a REST call fails. @param {unknown} error */
function restErrorText(error) {
  if (!(error instanceof ApiError)) return 'Something went wrong. Please try again.';
  switch (error.status) {
    case 0: return error.message;
    case 404: return 'There is no such séance. Check the link, or open a séance of your own.';
    case 409: return `You cannot join: ${error.message}.`;
    case 422: return error.message.charAt(0).toUpperCase() + error.message.slice(1) + '.';
    case 429: return 'Too many attempts from here. Wait a minute and try again.';
    case 503: return 'The séance server is having trouble reaching its database. Try again in a moment.';
    default: return error.message || `The server answered ${error.status}.`;
  }
}

const SPIRIT_STATES = {
  idle: 'The spirit is waiting for a question.',
  thinking: 'The spirit is thinking…',
  speaking: 'The spirit is answering…',
};

const state = {
  /** @type {SessionTicket | null} */ ticket: null,
  /** @type {Session | null} */ session: null,
  /** @type {Map<string, Participant>} online now, by id */ online: new Map(),
  /** @type {Message[]} oldest first, each once */ messages: [],
  /** @type {Set<string>} */ messageIds: new Set(),
  /** @type {string | null} the `after` of the sync in flight */ syncAfter: null,
  /** @type {{questionId: string, text: string} | null} */ live: null,
  ended: false,
  /** @type {SeanceSocket | null} */ socket: null,
  lastTypingSent: 0,
  /** @type {Map<string, ReturnType<typeof setTimeout>>} */ typingTimers: new Map(),
  /** @type {Map<string, string>} persona names by id */ personaNames: new Map(),
};

const board = new TalkingBoard(/** @type {SVGSVGElement} */ (/** @type {unknown} */ ($('board'))), $('spelled'));
const voice = new Voice($('voice-status'));
board.onFinish = () => {
  if (!state.live) showSpirit('idle');
};

// ----------------------------------------------------------------------------------------
// Small helpers for the page.

/** @param {string} text @param {'error' | 'info'} [kind] */
function alertUser(text, kind = 'error') {
  const alert = $('alert');
  alert.textContent = text;
  alert.dataset.kind = kind;
  alert.hidden = false;
  clearTimeout(Number(alert.dataset.timer || 0));
  alert.dataset.timer = String(setTimeout(() => { alert.hidden = true; }, 10000));
}

function clearAlert() {
  $('alert').hidden = true;
}

/** The address to share: this page with `?session=` (and `?api=` when set). @param {string} sessionId */
function shareLink(sessionId) {
  const url = new URL(location.pathname, location.origin);
  url.searchParams.set('session', sessionId);
  const given = new URLSearchParams(location.search).get('api');
  if (given) url.searchParams.set('api', given);
  return url.toString();
}

/** Each tab is one person: its ticket lives in sessionStorage, so a reload keeps the seat. */
const tickets = {
  /** @param {string} sessionId @returns {SessionTicket | null} */
  load(sessionId) {
    try {
      const raw = sessionStorage.getItem(`seance:${apiBase()}:${sessionId}`);
      return raw ? JSON.parse(raw) : null;
    } catch {
      return null;
    }
  },
  /** @param {SessionTicket} ticket */
  save(ticket) {
    try {
      sessionStorage.setItem(`seance:${apiBase()}:${ticket.session.id}`, JSON.stringify(ticket));
    } catch {
      // Private windows may refuse storage: the séance still works until a reload.
    }
  },
};

// ----------------------------------------------------------------------------------------
// The lobby: create or join.

async function loadPersonas() {
  const select = /** @type {HTMLSelectElement} */ ($('create-persona'));
  try {
    const { personas } = await api.personas();
    for (const persona of personas) state.personaNames.set(persona.id, persona.name);
    renderSession();
    select.replaceChildren(...personas.map((persona) => {
      const option = document.createElement('option');
      option.value = persona.id;
      option.textContent = persona.era ? `${persona.name} (${persona.era})` : persona.name;
      option.dataset.description = persona.description;
      return option;
    }));
    const describe = () => {
      const chosen = select.selectedOptions[0];
      $('persona-description').textContent = chosen ? chosen.dataset.description || '' : '';
    };
    select.addEventListener('change', describe);
    describe();
  } catch (error) {
    alertUser(restErrorText(error));
  }
}

/** @param {SubmitEvent} event */
async function onCreate(event) {
  event.preventDefault();
  voice.unlock();
  const form = /** @type {HTMLFormElement} */ (event.currentTarget);
  const button = /** @type {HTMLButtonElement} */ (form.querySelector('button[type=submit]'));
  button.disabled = true;
  try {
    const ticket = await api.create({
      name: input('create-name').value,
      host_name: input('create-host').value,
      persona: /** @type {HTMLSelectElement} */ ($('create-persona')).value || null,
      max_participants: Number(input('create-seats').value) || null,
    });
    tickets.save(ticket);
    history.replaceState(null, '', shareLink(ticket.session.id));
    enterRoom(ticket);
  } catch (error) {
    alertUser(restErrorText(error));
  } finally {
    button.disabled = false;
  }
}

/** @param {string} sessionId */
async function showJoin(sessionId) {
  $('create').hidden = true;
  $('join').hidden = false;
  try {
    const session = await api.session(sessionId);
    if (session.status === 'ended') {
      showEnded();
      return;
    }
    $('join-about').textContent = `“${session.name}”: ${session.participant_count} of ${session.max_participants} seats taken.`;
    input('join-name').focus();
  } catch (error) {
    alertUser(restErrorText(error));
    $('join').hidden = true;
    $('create').hidden = false;
  }
  $('join-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    voice.unlock();
    const button = /** @type {HTMLButtonElement} */ ($('join-form').querySelector('button[type=submit]'));
    button.disabled = true;
    try {
      const ticket = await api.join(sessionId, input('join-name').value);
      tickets.save(ticket);
      enterRoom(ticket);
    } catch (error) {
      alertUser(restErrorText(error));
    } finally {
      button.disabled = false;
    }
  });
}

// ----------------------------------------------------------------------------------------
// The room.

/** @param {SessionTicket} ticket */
function enterRoom(ticket) {
  clearAlert();
  state.ticket = ticket;
  state.session = ticket.session;
  $('lobby').hidden = true;
  $('room').hidden = false;
  $('mute').hidden = false;
  $('session-title').textContent = ticket.session.name;
  input('share-link').value = shareLink(ticket.session.id);
  $('host-controls').hidden = ticket.participant.role !== 'host';
  document.title = `${ticket.session.name} · Séance`;
  renderSession();
  renderSeats();
  state.socket = new SeanceSocket(ticket, {
    onFrame,
    onStatus: showConnection,
    lastMessageId: () => {
      const last = state.messages[state.messages.length - 1];
      state.syncAfter = last ? last.id : null;
      return state.syncAfter;
    },
    shouldReconnect,
  });
  state.socket.open();
  input('ask-input').focus();
}

async function shouldReconnect() {
  if (state.ended || !state.session) return false;
  try {
    const session = await api.session(state.session.id);
    if (session.status === 'ended') {
      showEnded();
      return false;
    }
    return true;
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      showEnded();
      return false;
    }
    return true;
  }
}

/** @param {'connecting' | 'open' | 'reconnecting' | 'closed'} status @param {number} attempt @param {number} delayMs */
function showConnection(status, attempt, delayMs) {
  const node = $('connection');
  node.dataset.status = status;
  const askButton = /** @type {HTMLButtonElement} */ ($('ask-button'));
  askButton.disabled = status !== 'open';
  if (status === 'open') node.textContent = 'Connected';
  else if (status === 'connecting') node.textContent = 'Connecting…';
  else if (status === 'reconnecting') {
    node.textContent = delayMs > 0
      ? `Connection lost. Reconnecting in ${Math.ceil(delayMs / 1000)} s (attempt ${attempt})…`
      : `Reconnecting (attempt ${attempt})…`;
  } else node.textContent = state.ended ? 'The séance has ended' : 'Disconnected';
}

function renderSession() {
  const session = state.session;
  if (!session) return;
  $('session-meta').textContent = `Spirit: ${state.personaNames.get(session.persona) || session.persona} · ${state.online.size} at the table · ${session.max_participants} seats`;
}

function renderSeats() {
  const session = state.session;
  const me = state.ticket ? state.ticket.participant : null;
  if (!session) return;
  const seats = session.max_participants;
  /** @type {Map<number, Participant>} */
  const bySeat = new Map();
  for (const participant of state.online.values()) bySeat.set(participant.seat, participant);
  const nodes = [];
  for (let seat = 0; seat < seats; seat += 1) {
    // Where the protocol puts seat `seat` of `seats`: seat 0 at the bottom centre, then
    // clockwise as the board is drawn.
    const theta = (2 * Math.PI * seat) / seats;
    const node = document.createElement('div');
    node.setAttribute('role', 'listitem');
    node.className = 'seat';
    node.style.left = `${(50 - 50 * Math.sin(theta)).toFixed(2)}%`;
    node.style.top = `${(50 + 50 * Math.cos(theta)).toFixed(2)}%`;
    node.dataset.seat = String(seat);
    const person = bySeat.get(seat);
    if (person) {
      node.classList.add('taken');
      if (me && person.id === me.id) node.classList.add('me');
      node.dataset.name = person.display_name;
      const name = document.createElement('span');
      name.className = 'seat-name';
      name.textContent = person.display_name;
      node.append(name);
      const extra = [person.role === 'host' ? 'host' : '', me && person.id === me.id ? 'you' : ''].filter(Boolean).join(', ');
      if (extra) {
        const tag = document.createElement('span');
        tag.className = 'seat-tag';
        tag.textContent = extra;
        node.append(tag);
      }
      node.setAttribute('aria-label', `Seat ${seat + 1}: ${person.display_name}${extra ? ` (${extra})` : ''}`);
    } else {
      node.classList.add('empty');
      node.textContent = '·';
      node.setAttribute('aria-label', `Seat ${seat + 1}: empty`);
    }
    nodes.push(node);
  }
  $('seats').replaceChildren(...nodes);
  renderSession();
}

/** @param {Message} message */
function messageNode(message) {
  const item = document.createElement('li');
  item.className = `message ${message.kind}`;
  item.dataset.id = message.id;
  item.dataset.kind = message.kind;
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = message.kind === 'spirit' ? 'The spirit' : (message.author ? message.author.display_name : 'Someone');
  const text = document.createElement('span');
  text.className = 'text';
  text.textContent = message.content;
  const time = document.createElement('time');
  time.dateTime = message.created_at;
  time.textContent = new Date(message.created_at).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  item.append(who, text, time);
  return item;
}

/**
 * Adds messages not held yet; `prepend` for older pages. Returns how many were new.
 * @param {Message[]} messages @param {boolean} [prepend]
 */
function addMessages(messages, prepend = false) {
  const fresh = messages.filter((message) => !state.messageIds.has(message.id));
  for (const message of fresh) state.messageIds.add(message.id);
  const list = $('messages');
  if (prepend) {
    state.messages.unshift(...fresh);
    list.prepend(...fresh.map(messageNode));
  } else {
    state.messages.push(...fresh);
    const live = list.querySelector('.live');
    for (const message of fresh) {
      if (live) list.insertBefore(messageNode(message), live);
      else list.append(messageNode(message));
    }
  }
  list.scrollTop = list.scrollHeight;
  return fresh.length;
}

/** @param {string} questionId @param {string} text */
function showLive(questionId, text) {
  const list = $('messages');
  let live = /** @type {HTMLElement | null} */ (list.querySelector('.live'));
  if (!live) {
    live = document.createElement('li');
    live.className = 'message spirit live';
    live.setAttribute('aria-hidden', 'true');
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = 'The spirit';
    const body = document.createElement('span');
    body.className = 'text';
    live.append(who, body);
    list.append(live);
  }
  live.dataset.questionId = questionId;
  const body = /** @type {HTMLElement} */ (live.querySelector('.text'));
  body.textContent = text || '…';
  list.scrollTop = list.scrollHeight;
}

function dropLive() {
  const live = $('messages').querySelector('.live');
  if (live) live.remove();
  state.live = null;
}

/** @param {'idle' | 'thinking' | 'speaking'} spirit */
function showSpirit(spirit) {
  const node = $('spirit-state');
  node.dataset.state = spirit;
  node.textContent = SPIRIT_STATES[spirit];
}

/** @param {Participant} participant */
function showTyping(participant) {
  const timers = state.typingTimers;
  const old = timers.get(participant.id);
  if (old) clearTimeout(old);
  timers.set(participant.id, setTimeout(() => {
    timers.delete(participant.id);
    renderTyping();
  }, 3000));
  renderTyping();
}

function renderTyping() {
  const names = [...state.typingTimers.keys()]
    .map((id) => state.online.get(id))
    .filter((p) => p !== undefined)
    .map((p) => p.display_name);
  $('typing').textContent = names.length === 0 ? '' : names.length === 1 ? `${names[0]} is typing…` : `${names.join(', ')} are typing…`;
}

function showEnded() {
  if (state.ended) return;
  state.ended = true;
  if (state.socket) state.socket.close();
  board.stop();
  $('lobby').hidden = true;
  $('room').hidden = true;
  $('mute').hidden = true;
  $('ended').hidden = false;
  $('announcer').textContent = 'The séance has ended.';
  showConnection('closed', 0, 0);
}

/** @param {ServerFrame} frame */
function onFrame(frame) {
  switch (frame.type) {
    case 'session_state': {
      state.session = frame.session;
      state.online = new Map(frame.participants.map((p) => [p.id, p]));
      board.draw(frame.board);
      const asked = state.syncAfter;
      if (asked === null && state.messages.length === 0) {
        addMessages(frame.messages);
        $('older').hidden = frame.messages.length < 20;
      } else {
        addMessages(frame.messages);
        // More than one frame's worth was missed: ask for the rest.
        if (frame.has_more && state.socket) state.socket.sync(state.socket.handlers.lastMessageId());
      }
      showSpirit(frame.spirit);
      if (frame.spirit === 'idle') dropLive();
      renderSeats();
      if (frame.session.status === 'ended') showEnded();
      break;
    }
    case 'user_joined':
      state.online.set(frame.participant.id, frame.participant);
      renderSeats();
      break;
    case 'user_left':
      state.online.delete(frame.participant.id);
      renderSeats();
      break;
    case 'user_typing':
      showTyping(frame.participant);
      break;
    case 'message_received': {
      addMessages([frame.message]);
      const mine = state.ticket && frame.message.author && frame.message.author.id === state.ticket.participant.id;
      if (mine && input('ask-input').dataset.pending === frame.message.content) delete input('ask-input').dataset.pending;
      break;
    }
    case 'spirit_thinking':
      // A second `spirit_thinking` for the same question restarts its answer.
      state.live = { questionId: frame.question_id, text: '' };
      board.begin(frame.question_id);
      voice.forget(frame.question_id);
      showSpirit('thinking');
      showLive(frame.question_id, '');
      break;
    case 'spirit_token': {
      if (!state.live || state.live.questionId !== frame.question_id) state.live = { questionId: frame.question_id, text: '' };
      state.live.text += frame.text;
      showSpirit('speaking');
      showLive(frame.question_id, state.live.text);
      board.extend(frame.question_id, frame.planchette);
      break;
    }
    case 'spirit_audio':
      voice.receive(frame, board.questionId === frame.question_id ? board.clock : null);
      break;
    case 'spirit_response': {
      const questionId = frame.message.in_reply_to || '';
      dropLive();
      addMessages([frame.message]);
      // The spirit is idle once the planchette has finished spelling (board.onFinish).
      board.complete(questionId, frame.planchette);
      const question = state.messages.find((m) => m.id === questionId);
      const asker = question && question.author ? ` ${question.author.display_name}` : '';
      $('announcer').textContent = `The spirit answers${asker}: ${frame.message.content}`;
      break;
    }
    case 'session_ended':
      showEnded();
      break;
    case 'error': {
      let text = SOCKET_ERRORS[frame.code] || frame.message;
      if (frame.code === 'invalid_message') text = `${text}: ${frame.message}`;
      if ((frame.code === 'rate_limited' || frame.code === 'unavailable') && frame.retry_after_ms) text = `${text} Try again in ${Math.ceil(frame.retry_after_ms / 1000)} s.`;
      alertUser(text);
      // A refused question is not stored: give its text back to edit or resend.
      const box = input('ask-input');
      if (frame.request_type === 'send_message' && box.dataset.pending && !box.value) box.value = box.dataset.pending;
      delete box.dataset.pending;
      if (frame.code === 'session_ended') showEnded();
      break;
    }
    case 'pong':
      break;
    default:
      // Events added to the protocol later are ignored by this version of the page.
      break;
  }
}

/** @param {SubmitEvent} event */
function onAsk(event) {
  event.preventDefault();
  voice.unlock();
  const box = input('ask-input');
  const content = box.value.trim();
  if (!content) {
    alertUser('Type a question for the spirit first.');
    return;
  }
  if (!state.socket || !state.socket.send({ type: 'send_message', content })) {
    alertUser('Not connected right now; your question is still in the box. Try again when the page says it is connected.');
    return;
  }
  clearAlert();
  box.dataset.pending = content;
  box.value = '';
}

function onTyping() {
  const now = Date.now();
  if (state.socket && now - state.lastTypingSent > 2000 && input('ask-input').value) {
    state.lastTypingSent = now;
    state.socket.send({ type: 'typing' });
  }
}

async function onOlder() {
  if (!state.ticket || state.messages.length === 0) return;
  try {
    const page = await api.messages(state.ticket.session.id, state.ticket.token, state.messages[0].id);
    addMessages(page.messages, true);
    $('older').hidden = page.next_before === null;
  } catch (error) {
    alertUser(restErrorText(error));
  }
}

function wireRoom() {
  $('ask-form').addEventListener('submit', onAsk);
  $('ask-input').addEventListener('input', onTyping);
  $('older').addEventListener('click', onOlder);
  $('copy-link').addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(input('share-link').value);
      alertUser('The link is copied. Send it to the others.', 'info');
    } catch {
      input('share-link').select();
    }
  });
  $('mute').addEventListener('click', () => {
    voice.unlock();
    const muted = $('mute').getAttribute('aria-pressed') !== 'true';
    voice.setMuted(muted);
    $('mute').setAttribute('aria-pressed', String(muted));
    $('mute').textContent = muted ? 'Unmute the spirit' : 'Mute the spirit';
  });
  $('end').addEventListener('click', () => {
    $('end').hidden = true;
    $('end-confirm').hidden = false;
    $('end-no').focus();
  });
  $('end-no').addEventListener('click', () => {
    $('end-confirm').hidden = true;
    $('end').hidden = false;
    $('end').focus();
  });
  $('end-yes').addEventListener('click', async () => {
    if (!state.ticket) return;
    try {
      await api.end(state.ticket.session.id, state.ticket.token);
      showEnded();
    } catch (error) {
      if (error instanceof ApiError && error.status === 409) showEnded();
      else alertUser(restErrorText(error));
    }
  });
  // Audio may start only after a gesture; any key or click will do.
  document.addEventListener('pointerdown', () => voice.unlock(), { once: true });
  document.addEventListener('keydown', () => voice.unlock(), { once: true });
}

function start() {
  wireRoom();
  $('create-form').addEventListener('submit', onCreate);
  const sessionId = new URLSearchParams(location.search).get('session');
  if (sessionId) {
    const ticket = tickets.load(sessionId);
    if (ticket) enterRoom(ticket);
    else showJoin(sessionId);
  }
  loadPersonas();
}

start();
