// The reference client end to end in real Chromium (Debian's package, driven by
// playwright-core; nothing is downloaded). Started by tests/browser.rs with the address of
// a harness it spawned on port 0:
//
//   node tests/browser/e2e.mjs http://127.0.0.1:PORT
//
// Screenshots go to $SEANCE_ARTIFACTS (default target/browser-artifacts). Exits non-zero
// with the failed check's message; prints one JSON line of what it saw on success.

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

const require = createRequire(import.meta.url);
const base = process.argv[2];
if (!base) {
  console.error('usage: node e2e.mjs BASE_URL');
  process.exit(2);
}
const artifacts = process.env.SEANCE_ARTIFACTS || path.resolve('target/browser-artifacts');
mkdirSync(artifacts, { recursive: true });
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const WAIT = { timeout: 20000 };
// waitForFunction polls on a timer: its default, requestAnimationFrame, can be starved on a
// loaded machine while the page itself is fine.
const POLL = { ...WAIT, polling: 100 };

/** @param {boolean} ok @param {string} what */
function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
  console.error(`ok - ${what}`);
}

/** The symbols the planchette must visit for an answer, as the protocol says. @param {string} answer */
function expectedSymbols(answer) {
  const word = answer.trim().replace(/[!-/:-@[-`{-~]+$/, '').toUpperCase();
  if (['YES', 'NO', 'GOODBYE'].includes(word)) return [word];
  return [...answer.toUpperCase()].filter((c) => /[A-Z0-9]/.test(c));
}

const browser = await chromium.launch({
  executablePath,
  args: ['--no-sandbox', '--autoplay-policy=no-user-gesture-required'],
});
const seen = {};
try {
  // bypassCSP lets the test inject axe-core; the page itself runs under the harness's CSP.
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 }, bypassCSP: true });
  const host = await context.newPage();
  const guest = await context.newPage();
  const pageErrors = [];
  for (const [name, page] of [['host', host], ['guest', guest]]) {
    page.on('pageerror', (error) => pageErrors.push(`${name}: ${error.message}`));
    page.on('console', (message) => {
      if (message.type() === 'error') pageErrors.push(`${name} console: ${message.text()}`);
    });
  }

  // The guest's sockets go through a switch, so the test can cut them as a network would.
  let outage = false;
  /** @type {import('playwright-core').WebSocketRoute[]} */
  const guestSockets = [];
  await guest.routeWebSocket(/\/ws/, (socket) => {
    if (outage) {
      socket.close({ code: 4000, reason: 'network down' });
      return;
    }
    socket.connectToServer();
    guestSockets.push(socket);
  });

  // 1. The host opens a séance from the lobby.
  await host.goto(`${base}/`);
  await host.waitForSelector('#create-persona option', { ...WAIT, state: 'attached' });
  await host.fill('#create-name', 'Midnight at the manor');
  await host.fill('#create-host', 'Ada');
  await host.fill('#create-seats', '6');
  await host.click('#create-form button[type=submit]');
  await host.waitForSelector('#connection[data-status="open"]', WAIT);
  const link = await host.inputValue('#share-link');
  check(link.startsWith(`${base}/?session=`), `the share link is this page with ?session= (${link})`);

  // 2. The guest joins from the shared link; each sees the other at the table.
  await guest.goto(link);
  await guest.waitForSelector('#join-name', WAIT);
  await guest.fill('#join-name', 'Bea');
  await guest.click('#join-form button[type=submit]');
  await guest.waitForSelector('#connection[data-status="open"]', WAIT);
  for (const [page, name] of [[host, 'host'], [guest, 'guest']]) {
    await page.waitForSelector('.seat.taken[data-name="Ada"]', WAIT);
    await page.waitForSelector('.seat.taken[data-name="Bea"]', WAIT);
    check(true, `the ${name} sees Ada and Bea at the table`);
  }
  check(await host.locator('.seat[data-seat="0"][data-name="Ada"]').count() === 1, 'the host sits in seat 0');

  // Record every planchette arrival and every connection status on both pages.
  for (const page of [host, guest]) {
    await page.evaluate(() => {
      const w = /** @type {any} */ (window);
      /**
       * Every value `name` is set to, in order. A page that wakes after a stall sets it
       * several times in one go (the planchette catching up on the letters it missed), and
       * the observer then gets all those records in one call: each holds the value before
       * it, and the last one's is the attribute's value now.
       * @param {Element} element @param {string} name @param {string[]} into
       */
      const record = (element, name, into) => new MutationObserver((records) => records.forEach((_, i) => into.push(
        i + 1 < records.length ? records[i + 1].oldValue : element.getAttribute(name))))
        .observe(element, { attributes: true, attributeFilter: [name], attributeOldValue: true });
      w.visits = [];
      record(document.querySelector('.planchette'), 'data-symbol', w.visits);
      w.statuses = [];
      record(document.getElementById('connection'), 'data-status', w.statuses);
    });
  }

  // 3. The guest asks, by keyboard; both pages show the question, the planchette spells
  //    the answer's letters in order, and the answer text appears.
  const question = 'Who haunts the east wing?';
  await guest.focus('#ask-input');
  await guest.keyboard.type(question);
  await guest.keyboard.press('Enter');
  for (const page of [host, guest]) {
    await page.waitForSelector(`#messages li.question:has-text("${question}")`, WAIT);
  }
  check(true, 'both pages show the question');
  // The host's page stalls for a while mid-answer, as a busy device would: when it wakes,
  // the planchette catches up, visiting every letter it missed, in order.
  await host.waitForFunction(() => document.getElementById('spelled').textContent.length >= 1, null, POLL);
  await host.evaluate(() => { const until = performance.now() + 900; while (performance.now() < until); });
  const answers = [];
  for (const page of [host, guest]) {
    const answer = page.locator('#messages li.spirit:not(.live) .text').first();
    await answer.waitFor(WAIT);
    answers.push(await answer.textContent());
  }
  check(answers[0] === answers[1] && answers[0].length > 0, `both pages show the same answer (“${answers[0]}”)`);
  const expected = expectedSymbols(answers[0]);
  for (const [page, name] of [[host, 'host'], [guest, 'guest']]) {
    await page.waitForFunction((n) => window.visits.filter((s) => s !== 'REST').length >= n, expected.length, POLL);
    const visited = (await page.evaluate(() => window.visits)).filter((s) => s !== 'REST');
    check(JSON.stringify(visited) === JSON.stringify(expected), `the ${name}'s planchette visits ${expected.join('')} in order (saw ${visited.join('')})`);
  }
  check(await host.locator('#spirit-state[data-state="idle"]').count() === 1, 'the spirit is idle again');
  check((await host.textContent('#announcer')).includes(answers[0]), 'the answer is announced to screen readers');
  // The offline voice speaks every answer: each page decoded and played it with its own pan.
  for (const [page, name] of [[host, 'host'], [guest, 'guest']]) {
    await page.waitForFunction(() => Number(document.getElementById('voice-status').dataset.played) >= 1, null, POLL);
    check(true, `the ${name} played the voice: ${await page.textContent('#voice-status')}`);
  }

  // 4. A screenshot of the board mid-answer.
  await host.fill('#ask-input', 'Is anyone there?');
  await host.press('#ask-input', 'Enter');
  await host.waitForFunction(() => document.getElementById('spirit-state').dataset.state === 'speaking'
    && document.getElementById('spelled').textContent.length >= 3, null, POLL);
  await host.screenshot({ path: path.join(artifacts, 'board-mid-answer.png') });
  await host.locator('#messages li.spirit:not(.live)').nth(1).waitFor(WAIT);
  await guest.locator('#messages li.spirit:not(.live)').nth(1).waitFor(WAIT);

  // 5. The guest's socket is cut; while it is down the host asks and is answered; the
  //    guest shows that it is reconnecting, comes back, and holds every message once.
  outage = true;
  for (const socket of guestSockets.splice(0)) await socket.close({ code: 4000, reason: 'network down' });
  await guest.waitForSelector('#connection[data-status="reconnecting"]', WAIT);
  check(true, `the guest says it is reconnecting (“${await guest.textContent('#connection')}”)`);
  await guest.screenshot({ path: path.join(artifacts, 'reconnecting.png') });
  const missed = 'What did I miss?';
  await host.fill('#ask-input', missed);
  await host.press('#ask-input', 'Enter');
  await host.locator('#messages li.spirit:not(.live)').nth(2).waitFor(WAIT);
  outage = false;
  await guest.waitForSelector('#connection[data-status="open"]', { timeout: 30000 });
  await guest.locator('#messages li.spirit:not(.live)').nth(2).waitFor(WAIT);
  const ids = (page) => page.$$eval('#messages li[data-id]', (items) => items.map((item) => item.dataset.id));
  const hostIds = await ids(host);
  const guestIds = await ids(guest);
  check(hostIds.length === 6, `the host holds three questions and three answers (${hostIds.length})`);
  check(new Set(guestIds).size === guestIds.length, 'the guest shows no message twice');
  check(JSON.stringify(guestIds) === JSON.stringify(hostIds), 'the guest holds every message the host does, in the same order');
  check(await guest.locator(`#messages li.question:has-text("${missed}")`).count() === 1, 'the question asked during the outage reached the guest once');
  const statuses = await guest.evaluate(() => window.statuses);
  check(statuses.includes('reconnecting') && statuses[statuses.length - 1] === 'open', `the guest went reconnecting → open (${statuses.join(' → ')})`);

  // 6. Accessibility: no serious or critical axe-core violations, in the room and the lobby.
  const axeSource = require.resolve('axe-core/axe.min.js');
  const audit = async (page, where) => {
    await page.addScriptTag({ path: axeSource });
    const result = await page.evaluate(async () => {
      const r = await window.axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'] } });
      return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, targets: v.nodes.map((n) => n.target.join(' ')) }));
    });
    const serious = result.filter((v) => v.impact === 'serious' || v.impact === 'critical');
    check(serious.length === 0, `axe-core finds no serious violations in the ${where}: ${JSON.stringify(serious)}`);
    return result;
  };
  seen.axe_room = await audit(host, 'room');

  // 7. A small screen: 375 px wide, nothing wider than the screen, the board and the
  //    question box usable.
  const phone = await context.newPage();
  await phone.setViewportSize({ width: 375, height: 740 });
  await phone.goto(link);
  await phone.waitForSelector('#join-name', WAIT);
  seen.axe_lobby = await audit(phone, 'join page at 375 px');
  await phone.fill('#join-name', 'Cy');
  await phone.press('#join-name', 'Enter');
  await phone.waitForSelector('#connection[data-status="open"]', WAIT);
  await phone.waitForSelector('#messages li[data-id]', WAIT);
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth);
  check(overflow <= 375, `at 375 px nothing is wider than the screen (${overflow})`);
  const boardBox = await phone.locator('#board').boundingBox();
  check(boardBox !== null && boardBox.width > 250 && boardBox.x >= 0 && boardBox.x + boardBox.width <= 375, `the board fits the small screen (${JSON.stringify(boardBox)})`);
  await phone.screenshot({ path: path.join(artifacts, 'room-375px.png'), fullPage: true });
  seen.axe_phone_room = await audit(phone, 'room at 375 px');

  // 8. The host ends the séance; every page says so.
  await host.click('#end');
  await host.click('#end-yes');
  for (const [page, name] of [[host, 'host'], [guest, 'guest'], [phone, 'phone']]) {
    await page.waitForSelector('#ended:not([hidden])', WAIT);
    check(await page.locator('#room').isHidden(), `the ${name} page says the séance has ended`);
  }
  await guest.screenshot({ path: path.join(artifacts, 'ended.png') });
  check(pageErrors.length === 0, `no page errors (${pageErrors.join('; ')})`);
  seen.answer = answers[0];
  seen.messages = hostIds.length;
  seen.reconnect_statuses = statuses;
  console.log(JSON.stringify({ ok: true, ...seen }));
} catch (error) {
  console.error(error && error.stack ? error.stack : String(error));
  process.exitCode = 1;
} finally {
  await browser.close();
}
