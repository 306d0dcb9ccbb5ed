// The server restarts in the middle of a chat: the pages notice, reconnect
// by themselves and resume from their last event, so messages sent while
// a page was away appear in it, in order, once.
import { join } from 'node:path';
import { artifacts, check, dataDir, demoPage, freePort, launch, open, scenario, sendText, startServer, stopServer, until } from './lib.mjs';

await scenario('restart', async (cleanup) => {
  const dir = dataDir();
  const port = await freePort();
  let server = await startServer({ dir, port });
  cleanup.push(() => stopServer(server));
  const browser = await launch();
  cleanup.push(() => browser.close());

  const ann = await demoPage(browser, server.base, 'Ann');
  const bob = await demoPage(browser, server.base, 'Bob');
  await open(ann, 'Demo lobby');
  await open(bob, 'Demo lobby');
  await sendText(ann, 'before the restart');
  await bob.locator('#messages .msg', { hasText: 'before the restart' }).waitFor();

  // Stop the server; both pages see they lost it.
  await stopServer(server);
  await until('Bob to notice', async () => (await bob.textContent('#status')).includes('reconnecting'));
  check(true, 'Bob\'s page shows it is reconnecting');

  // Bob's page stays away (offline) while the server comes back and Ann
  // writes three messages.
  await bob.context().setOffline(true);
  server = await startServer({ dir, port });
  await until('Ann to reconnect', async () => (await ann.textContent('#status')) === 'online', 30_000);
  for (const n of [1, 2, 3]) {
    await sendText(ann, `meanwhile ${n}`);
    await ann.locator('#messages .msg:not(.pending)', { hasText: `meanwhile ${n}` }).waitFor();
  }
  check(true, 'Ann reconnected by herself and sent three messages while Bob was away');
  await bob.context().setOffline(false);

  await until('Bob to reconnect', async () => (await bob.textContent('#status')) === 'online', 30_000);
  await bob.locator('#messages .msg', { hasText: 'meanwhile 3' }).waitFor();
  const texts = await bob.locator('#messages .msg .text').allTextContents();
  const seen = texts.filter((t) => t.startsWith('meanwhile') || t === 'before the restart');
  check(JSON.stringify(seen) === JSON.stringify(['before the restart', 'meanwhile 1', 'meanwhile 2', 'meanwhile 3']),
    `Bob's page shows what was sent meanwhile, in order, once: ${JSON.stringify(seen)}`);

  // And the connection works both ways again.
  await sendText(bob, 'back');
  await ann.locator('#messages .msg', { hasText: 'back' }).waitFor();
  check(true, 'Bob\'s reply after reconnecting reaches Ann');
  await bob.screenshot({ path: join(artifacts, 'after-restart.png') });
});
