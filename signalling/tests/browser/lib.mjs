// Shared by the browser scenarios: start and stop the real `signalling`
// binary, launch Debian's Chromium with fake camera and microphone, sign
// people in through the demo, and small waiting helpers. Each scenario is
// a script that exits 0 when everything it checks holds.
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const artifacts = process.env.ARTIFACTS || join(tmpdir(), 'confer-browser-artifacts');
mkdirSync(artifacts, { recursive: true });

export function dataDir() {
  return mkdtempSync(join(tmpdir(), 'confer-browser-'));
}

/** A free loopback port (so a restarted server can take the same one). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

/** Starts `signalling serve` and resolves when it listens. */
export function startServer({ dir, port = 0, env = {} }) {
  const bin = process.env.SIGNALLING_BIN;
  if (!bin) throw new Error('SIGNALLING_BIN is not set (run through cargo test --test browser)');
  const proc = spawn(bin, ['serve', '--listen', `127.0.0.1:${port}`, '--data-dir', dir], {
    env: Object.fromEntries(Object.entries({ CONFER_LOG__FILTER: 'warn', ...process.env, ...env }).filter(([k]) => k !== 'CONFER_CONFIG')),
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  // The server never outlives the scenario, even when it crashes.
  process.on('exit', () => proc.kill('SIGKILL'));
  return new Promise((resolve, reject) => {
    let out = '';
    proc.stdout.on('data', (chunk) => {
      out += chunk;
      const m = out.match(/signalling listening on (http:\/\/\S+)/);
      if (m) resolve({ proc, base: m[1] });
    });
    proc.on('exit', (code) => reject(new Error(`signalling exited with ${code} before listening`)));
  });
}

/** Another web site on loopback (another origin: its own port) serving
 * one page whose HTML `html()` gives at request time, as an application
 * that embeds Confer would. Loopback, so that the browser's local-network
 * rules do not stand between it and the server. */
export async function siteServer(html) {
  const port = await freePort();
  const srv = createHttpServer((req, res) => {
    res.setHeader('content-type', 'text/html; charset=utf-8');
    res.end(html());
  });
  await new Promise((resolve) => srv.listen(port, '127.0.0.1', resolve));
  return { origin: `http://127.0.0.1:${port}`, close: () => new Promise((resolve) => srv.close(resolve)) };
}

export function stopServer({ proc }) {
  return new Promise((resolve) => {
    if (proc.exitCode !== null) return resolve();
    proc.on('exit', () => resolve());
    proc.kill('SIGTERM');
  });
}

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--no-first-run',
      '--use-fake-device-for-media-stream',
      '--use-fake-ui-for-media-stream',
      '--allow-loopback-in-peer-connection',
    ],
  });
}

/** A page signed in to the demo as `name`, connected. */
export async function demoPage(browser, base, name, { capture } = {}) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  await context.grantPermissions(['camera', 'microphone'], { origin: base });
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error(`[${name}] page error:`, e.message));
  // A dialog is answered with `page.dialogAnswer` when a test set one,
  // dismissed (and logged: it is an alert the test did not expect) otherwise.
  page.on('dialog', (d) => {
    const answer = page.dialogAnswer;
    page.dialogAnswer = undefined;
    if (answer !== undefined) return d.accept(answer).catch(() => {});
    console.error(`[${name}] dialog:`, d.message());
    return d.dismiss().catch(() => {});
  });
  if (capture) await page.addInitScript((c) => { window.conferCapture = c; }, capture);
  await page.goto(base);
  await page.fill('#signin-name', name);
  await page.click('#signin-go');
  await page.waitForSelector('#status.online');
  return page;
}

/** Opens the conversation titled `title` in the page's list. */
export async function open(page, title) {
  const conv = page.locator('#conversations .conv', { hasText: title });
  await conv.first().waitFor();
  await conv.first().click();
  await page.waitForSelector('#chat-title', { state: 'visible' });
}

export async function sendText(page, text) {
  await page.fill('#text', text);
  await page.click('#send');
}

/** Polls `fn` until it returns a truthy value (or throws after `ms`). */
export async function until(what, fn, ms = 20_000) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) { last = e.message; }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
}

export function check(cond, message) {
  if (!cond) throw new Error(message);
  console.log(`ok: ${message}`);
}

/** The 6-digit code of the newest mail to `email` in the outbox. */
export function lastCode(dir, email) {
  const outbox = join(dir, 'outbox');
  const mails = readdirSync(outbox).filter((f) => f.endsWith('.eml'))
    .map((f) => readFileSync(join(outbox, f), 'utf8'))
    .filter((t) => t.toLowerCase().includes(`to: ${email}`));
  const m = mails.at(-1)?.match(/Confer code: (\d{6})/);
  if (!m) throw new Error(`no code mailed to ${email}`);
  return m[1];
}

/** Registers an application through the REST API (code from the outbox). */
export async function register(base, dir, email, appName) {
  const post = (path, body) => fetch(`${base}${path}`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
  });
  await post('/api/v1/registrations', { email, app_name: appName });
  const r = await post('/api/v1/registrations/confirm', { email, app_name: appName, code: lastCode(dir, email) });
  const app = await r.json();
  return {
    ...app,
    async token(externalId, name, contexts = []) {
      const t = await fetch(`${base}/api/v1/tokens`, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          authorization: `Basic ${Buffer.from(`${app.app_id}:${app.app_secret}`).toString('base64')}`,
        },
        body: JSON.stringify({ external_id: externalId, name, contexts }),
      });
      return (await t.json()).token;
    },
  };
}

/** Runs a scenario: prints its checks, exits 1 on the first failure. */
export async function scenario(name, body) {
  const started = Date.now();
  const cleanup = [];
  try {
    await body(cleanup);
    console.log(`${name}: passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } catch (e) {
    console.error(`${name}: FAILED: ${e.stack || e}`);
    process.exitCode = 1;
  } finally {
    for (const f of cleanup.reverse()) await f().catch(() => {});
  }
}

/** A server of its own, a browser, and Анна and Bob signed in to the demo
 * with the lobby open on both pages (the scenarios of what people do with
 * messages start so). */
export async function lobbyPair(cleanup) {
  const server = await startServer({ dir: dataDir() });
  cleanup.push(() => stopServer(server));
  const browser = await launch();
  cleanup.push(() => browser.close());
  const ann = await demoPage(browser, server.base, 'Анна');
  const bob = await demoPage(browser, server.base, 'Bob');
  await open(ann, 'Demo lobby');
  await open(bob, 'Demo lobby');
  return { server, ann, bob };
}
