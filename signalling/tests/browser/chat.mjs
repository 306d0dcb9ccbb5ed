// Two people chat in two browser contexts: each message appears on the
// other side, unread counts and the read mark update, typing, edit,
// delete, light formatting rendered safely, an image attachment with its preview, search, and a discussion
// of a business object opened by an application's token, and that page
// embedded by the application's origin (tokens by postMessage from it,
// from no other). Screenshots of the chat go to the artifacts.
import { join } from 'node:path';
import { artifacts, check, dataDir, demoPage, launch, open, register, scenario, sendText, siteServer, startServer, stopServer, until } from './lib.mjs';

await scenario('chat', async (cleanup) => {
  const dir = dataDir();
  // An application's site, which the operator lets embed Confer, and
  // another site, which it does not. Their pages frame Confer with `framed`.
  let framed = '';
  const embedding = (token) => `<!doctype html><title>embedding</title>
    <iframe id="confer" src="${server.base}/#token=${encodeURIComponent(token)}" style="width:900px;height:600px"></iframe>
    <script>
      window.tokenAsked = 0;
      window.addEventListener('message', (e) => {
        if (e.origin === '${server.base}' && e.data?.type === 'confer-token-expired') window.tokenAsked += 1;
      });
    </script>`;
  const erpSite = await siteServer(() => framed);
  cleanup.push(() => erpSite.close());
  const evilSite = await siteServer(() => framed);
  cleanup.push(() => evilSite.close());
  const server = await startServer({ dir, env: { CONFER_WEB__PARENT_ORIGINS: `["${erpSite.origin}"]` } });
  cleanup.push(() => stopServer(server));
  const browser = await launch();
  cleanup.push(() => browser.close());

  const ann = await demoPage(browser, server.base, 'Анна');
  const bob = await demoPage(browser, server.base, 'Bob');
  check(await ann.locator('#demo-badge').isVisible(), 'the demo is marked as such');

  await open(ann, 'Demo lobby');
  await sendText(ann, 'Привет, Bob! 👋');
  // Bob has not opened the lobby: an unread count.
  const badge = bob.locator('#conversations .conv', { hasText: 'Demo lobby' }).locator('.unread');
  await until('Bob\'s unread count', async () => (await badge.textContent()) === '1');
  check(true, 'Bob sees 1 unread message in the lobby');

  await open(bob, 'Demo lobby');
  const fromAnn = bob.locator('#messages .msg', { hasText: 'Привет, Bob!' });
  await fromAnn.waitFor();
  await until('Анна\'s name', async () => (await fromAnn.locator('.author').textContent()) === 'Анна');
  check(true, 'Bob sees Анна\'s message under her name');
  check(await bob.locator('#messages .read-mark').isVisible(), 'the read mark shows where Bob\'s new messages start');
  await until('the unread count to go', async () => (await badge.count()) === 0);
  check(true, 'opening the conversation reads it: the unread count is gone');

  // Typing, then a reply.
  await bob.type('#text', 'Hi');
  await until('Анна to see Bob typing', async () => (await ann.textContent('#typing')).includes('Bob is typing'));
  check(true, 'Анна sees "Bob is typing…"');
  await bob.fill('#text', 'Hi Анна, got it');
  await bob.click('#send');
  await ann.locator('#messages .msg', { hasText: 'Hi Анна, got it' }).waitFor();
  check(true, 'Анна sees Bob\'s reply');
  const annBadge = ann.locator('#conversations .conv', { hasText: 'Demo lobby' }).locator('.unread');
  check((await annBadge.count()) === 0, 'a message in the open conversation is read at once');

  // Edit and delete reach the other side.
  const mine = ann.locator('#messages .msg.mine', { hasText: 'Привет, Bob!' });
  ann.dialogAnswer = 'Привет, Bob! (edited)';
  await mine.hover();
  await mine.locator('button.edit').click();
  await bob.locator('#messages .msg', { hasText: 'Привет, Bob! (edited)' }).locator('.meta', { hasText: 'edited' }).waitFor();
  check(true, 'Bob sees the edit');
  await sendText(ann, 'a typo to delete');
  const typo = ann.locator('#messages .msg.mine', { hasText: 'a typo to delete' });
  await bob.locator('#messages .msg', { hasText: 'a typo to delete' }).waitFor();
  await typo.hover();
  await typo.locator('button.delete').click();
  await until('Bob to see the deletion', async () => (await bob.locator('#messages .msg', { hasText: 'a typo to delete' }).count()) === 0
    && (await bob.locator('#messages .msg.deleted').count()) === 1);
  check(true, 'Bob sees the deletion');

  // Light formatting, rendered safely: markup in a message is text, and
  // only http(s) and mailto become links.
  const marked = '*Итоги* _квартала_: `SELECT 1` — https://example.com/report?q=1. '
    + '<b>not bold</b> <img src=x onerror="window.pwned=1"> javascript:window.pwned=2 '
    + '[x](javascript:window.pwned=3) mailto:bob@example.com snake_case_name 2*3*4';
  await sendText(ann, marked);
  const shown = bob.locator('#messages .msg', { hasText: 'Итоги' }).locator('.text');
  await shown.waitFor();
  const rendered = await shown.evaluate((t) => ({
    strong: [...t.querySelectorAll('strong')].map((e) => e.textContent),
    em: [...t.querySelectorAll('em')].map((e) => e.textContent),
    code: [...t.querySelectorAll('code')].map((e) => e.textContent),
    links: [...t.querySelectorAll('a')].map((a) => ({ href: a.getAttribute('href'), rel: a.rel, target: a.target })),
    elements: [...t.querySelectorAll('*')].map((e) => e.tagName.toLowerCase()).sort(),
    text: t.textContent,
    pwned: window.pwned,
  }));
  check(rendered.strong.join() === 'Итоги' && rendered.em.join() === 'квартала' && rendered.code.join() === 'SELECT 1',
    `*bold*, _italic_ and \`code\` render (${JSON.stringify(rendered)})`);
  check(JSON.stringify(rendered.links) === JSON.stringify([
    { href: 'https://example.com/report?q=1', rel: 'noopener noreferrer', target: '_blank' },
    { href: 'mailto:bob@example.com', rel: 'noopener noreferrer', target: '_blank' },
  ]), `an https and a mailto link, nothing else, without the sentence's full stop (${JSON.stringify(rendered.links)})`);
  check(rendered.elements.join() === 'a,a,code,em,strong', `no element from the message's markup (${rendered.elements})`);
  check(rendered.text.includes('<b>not bold</b> <img src=x onerror="window.pwned=1"> javascript:window.pwned=2')
    && rendered.text.includes('snake_case_name 2*3*4') && rendered.pwned === undefined,
    'markup and a javascript: link show as text, and run nothing');
  await bob.screenshot({ path: join(artifacts, 'formatting.png') });

  // An image attachment: uploaded from the page, previewed on the other side.
  const png = await ann.evaluate(() => {
    const c = document.createElement('canvas');
    c.width = 800; c.height = 500;
    const g = c.getContext('2d');
    g.fillStyle = '#2f6fde'; g.fillRect(0, 0, 800, 500);
    g.fillStyle = '#fff'; g.font = 'bold 90px sans-serif'; g.fillText('План склада', 60, 280);
    return c.toDataURL('image/png').split(',')[1];
  });
  await ann.setInputFiles('#attach', { name: 'план-склада.png', mimeType: 'image/png', buffer: Buffer.from(png, 'base64') });
  await until('the upload', async () => (await ann.textContent('#attached')) === 'план-склада.png');
  await ann.fill('#text', 'Plan attached');
  await ann.click('#send');
  const preview = bob.locator('#messages .msg', { hasText: 'Plan attached' }).locator('img.preview');
  await preview.waitFor();
  const width = await until('the preview to load', () => preview.evaluate((img) => img.complete && img.naturalWidth));
  check(width === 320, `Bob sees the image's preview, ${width} px wide`);

  // Search.
  await bob.fill('#search', 'Привет');
  await bob.locator('#search-results .result', { hasText: 'Привет' }).first().waitFor();
  check(true, 'search finds the message');
  await bob.fill('#search', '');
  await bob.waitForTimeout(400);

  // Bob starts a conversation with Анна, whom he knows from the lobby.
  await bob.click('#new-conv');
  await bob.fill('#new-conv-title', 'Проект «Склад»');
  await bob.locator('#new-conv-people label', { hasText: 'Анна' }).locator('input').check();
  await bob.click('#new-conv-create');
  await ann.locator('#conversations .conv', { hasText: 'Проект «Склад»' }).waitFor();
  check(true, 'a conversation Bob creates with Анна appears in her list');
  await until('Bob\'s presence', async () => (await ann.locator('#conversations .conv', { hasText: 'Проект «Склад»' }).locator('.presence.online').count()) === 1);
  check(true, 'Анна sees Bob online next to their one-to-one conversation');
  await open(ann, 'Demo lobby');

  await ann.screenshot({ path: join(artifacts, 'chat-anna.png') });
  await bob.screenshot({ path: join(artifacts, 'chat-bob.png') });

  // An application embeds the client for its user with a token that lets
  // the user see an invoice: the page opens the invoice's discussion.
  const erp = await register(server.base, dir, 'erp@example.com', 'ERP');
  const token = await erp.token('carol', 'Carol', ['Invoice:17']);
  const carol = await (await browser.newContext()).newPage();
  await carol.goto(`${server.base}/#token=${encodeURIComponent(token)}&context=Invoice:17&title=${encodeURIComponent('Invoice 17')}`);
  await until('the discussion to open', async () => (await carol.textContent('#chat-title')).includes('Invoice 17 · Invoice:17'));
  check(!(await carol.evaluate(() => location.href)).includes('token='), 'the token leaves the address bar');
  await sendText(carol, 'Please check the VAT on this invoice');
  await carol.locator('#messages .msg.mine', { hasText: 'VAT' }).waitFor({ state: 'attached' });
  await carol.locator('#messages .msg:not(.pending)', { hasText: 'VAT' }).waitFor();
  check(await carol.locator('#demo-badge').isHidden(), 'an application\'s user is not marked demo');
  await carol.screenshot({ path: join(artifacts, 'discussion.png') });

  // Her token expires (here: is replaced by one the server refuses) while
  // the connection is down: the page asks its application (the parent
  // window; here the page itself) for a new one and goes on with it.
  await carol.evaluate(() => {
    window.tokenAsked = 0;
    window.addEventListener('message', (e) => { if (e.data?.type === 'confer-token-expired') window.tokenAsked += 1; });
    window.confer.state.token = 'expired';
    window.confer.state.ws.close();
  });
  await until('the page to ask for a token', () => carol.evaluate(() => window.tokenAsked > 0), 30_000);
  check((await carol.textContent('#status')) === 'session expired', 'with its token refused, the page says so and asks its application');
  const fresh = await erp.token('carol', 'Carol', ['Invoice:17']);
  await carol.evaluate((t) => window.postMessage({ type: 'confer-token', token: t }, location.origin), fresh);
  await until('the page to reconnect', async () => (await carol.textContent('#status')) === 'online');
  await sendText(carol, 'Back with a new token');
  await carol.locator('#messages .msg:not(.pending)', { hasText: 'Back with a new token' }).waitFor();
  check(true, 'a new token handed over by postMessage reconnects the page');

  // The documented embedding: the application's page frames Confer and
  // hands it a new token when asked. The WebSocket carries the token in
  // its subprotocol, not in its URL.
  const confer = (page) => until('the framed page', () => page.frames().find((f) => f.url().startsWith(`${server.base}/`)));
  framed = embedding(token);
  const erpPage = await (await browser.newContext()).newPage();
  await erpPage.goto(`${erpSite.origin}/`);
  const inErp = await confer(erpPage);
  await until('the framed page to connect', async () => (await inErp.textContent('#status')) === 'online');
  check(true, `${erpSite.origin}, a configured parent origin, embeds the page`);
  const socket = await inErp.evaluate(() => ({ url: window.confer.state.ws.url, protocol: window.confer.state.ws.protocol }));
  check(!socket.url.includes('token') && socket.protocol === 'confer.v1', `the WebSocket URL has no token (${socket.url}, subprotocol ${socket.protocol})`);
  await inErp.evaluate(() => {
    window.confer.state.token = 'expired';
    window.confer.state.ws.close();
  });
  await until('the page to ask the ERP for a token', () => erpPage.evaluate(() => window.tokenAsked > 0), 30_000);
  const renewed = await erp.token('carol', 'Carol', ['Invoice:17']);
  await erpPage.evaluate(([t, origin]) => document.getElementById('confer').contentWindow.postMessage({ type: 'confer-token', token: t }, origin), [renewed, server.base]);
  await until('the framed page to reconnect', async () => (await inErp.textContent('#status')) === 'online');
  check(true, 'the embedding application\'s postMessage token reconnects the framed page');

  // Another site may not frame the page at all (CSP frame-ancestors) …
  const evilOrigin = evilSite.origin;
  framed = embedding('expired');
  const evilContext = await browser.newContext();
  const evilPage = await evilContext.newPage();
  await evilPage.goto(`${evilOrigin}/`);
  await evilPage.waitForLoadState('load');
  const blocked = evilPage.frames().find((f) => f !== evilPage.mainFrame());
  const loaded = await blocked.evaluate(() => typeof window.confer).catch(() => 'unreachable');
  check(loaded !== 'object', `a page of ${evilOrigin} cannot frame Confer (the frame is ${blocked.url()}, its app ${loaded})`);
  // … and were the CSP lost on the way, the page still takes no token from
  // it: here the test strips the header to reach the page's own check.
  await evilContext.route(`${server.base}/`, async (route) => {
    const response = await route.fetch();
    const headers = { ...response.headers() };
    delete headers['content-security-policy'];
    await route.fulfill({ response, headers });
  });
  await evilPage.reload();
  const exposed = await confer(evilPage);
  await until('the exposed page to find its token refused', async () => (await exposed.textContent('#status')) === 'session expired', 30_000);
  const stolen = await erp.token('carol', 'Carol', ['Invoice:17']);
  await evilPage.evaluate(([t, origin]) => document.getElementById('confer').contentWindow.postMessage({ type: 'confer-token', token: t }, origin), [stolen, server.base]);
  await evilPage.waitForTimeout(2000);
  check((await exposed.evaluate(() => window.confer.state.token)) === 'expired'
    && (await exposed.textContent('#status')) === 'session expired', `a token posted by ${evilOrigin} is ignored`);
});
