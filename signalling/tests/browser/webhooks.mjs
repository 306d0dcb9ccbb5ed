// A message that arrives through an incoming webhook shows in the web
// client like any message of the application's bot: under "Bot", its
// formatting rendered, its buttons offered. Screenshot to the artifacts.
import { join } from 'node:path';
import { artifacts, check, dataDir, launch, open, register, scenario, startServer, stopServer } from './lib.mjs';

await scenario('webhooks', async (cleanup) => {
  const dir = dataDir();
  const server = await startServer({ dir });
  cleanup.push(() => stopServer(server));
  const browser = await launch();
  cleanup.push(() => browser.close());
  const ops = await register(server.base, dir, 'ops@example.com', 'Ops');
  const token = await ops.token('dana', 'Dana');
  const page = await (await browser.newContext({ viewport: { width: 1100, height: 700 } })).newPage();
  page.on('pageerror', (e) => console.error('page error:', e.message));
  await page.goto(`${server.base}/#token=${encodeURIComponent(token)}`);
  await page.waitForSelector('#status.online');

  // Dana starts "Alerts"; the application makes a webhook for it.
  await page.click('#new-conv');
  await page.fill('#new-conv-title', 'Alerts');
  await page.click('#new-conv-create');
  await open(page, 'Alerts');
  const conversation = await page.locator('#conversations .conv', { hasText: 'Alerts' }).getAttribute('data-id');
  const basic = `Basic ${Buffer.from(`${ops.app_id}:${ops.app_secret}`).toString('base64')}`;
  const made = await (await fetch(`${server.base}/api/v1/conversations/${conversation}/webhooks`, {
    method: 'POST', headers: { 'content-type': 'application/json', authorization: basic },
    body: JSON.stringify({ name: 'ci' }),
  })).json();

  // CI posts through it.
  const posted = await fetch(made.webhook ? made.url : '', {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ text: 'Deploy of *1.4* finished', actions: [{ value: 'rollback', presentation: 'Roll back' }] }),
  });
  check(posted.status === 201, 'the webhook accepts the post');
  const message = page.locator('#messages .msg', { hasText: 'Deploy of 1.4 finished' });
  await message.waitFor();
  check((await message.locator('.author').textContent()) === 'Bot', 'the message shows under the bot');
  check((await message.locator('.text strong').textContent()) === '1.4', 'its formatting is rendered');
  check(await message.locator('.actions button', { hasText: 'Roll back' }).isVisible(), 'its button is offered');
  await page.screenshot({ path: join(artifacts, 'webhook.png') });
});
