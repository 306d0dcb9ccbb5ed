// A mention as people use it: Анна writes "@Bob …"; Bob, elsewhere, sees
// an @ badge on the conversation (also after a reload, from the server's
// count), opens it, finds the message marked for him, and the badge goes.
import { join } from 'node:path';
import { artifacts, check, dataDir, demoPage, launch, open, scenario, sendText, startServer, stopServer, until } from './lib.mjs';

await scenario('mentions', async (cleanup) => {
  const server = await startServer({ dir: dataDir() });
  cleanup.push(() => stopServer(server));
  const browser = await launch();
  cleanup.push(() => browser.close());
  const ann = await demoPage(browser, server.base, 'Анна');
  const bob = await demoPage(browser, server.base, 'Bob');
  await open(ann, 'Demo lobby');
  // Анна's page knows Bob's name once he is a member of the lobby.
  await until('Анна to see Bob among the members', async () => (await ann.textContent('#chat-members')).includes('Bob'));

  await sendText(ann, '@Bob can you review the invoice?');
  const badge = (page) => page.locator('#conversations .conv', { hasText: 'Demo lobby' }).locator('.mention-badge');
  await until('Bob\'s @ badge', async () => (await badge(bob).count()) === 1 && (await badge(bob).textContent()) === '@1');
  check(true, 'Bob, not looking at the lobby, sees @1 on it');
  await bob.reload();
  await bob.waitForSelector('#status.online');
  await until('the badge after a reload', async () => (await badge(bob).count()) === 1 && (await badge(bob).textContent()) === '@1');
  check(true, 'after a reload the server\'s count shows the same @1');
  await bob.screenshot({ path: join(artifacts, 'mention-badge.png') });

  await open(bob, 'Demo lobby');
  const mention = bob.locator('#messages .msg.mentions-me', { hasText: 'can you review' });
  await mention.waitFor();
  check(true, 'the message that mentions Bob is marked for him');
  await until('the badge to go', async () => (await badge(bob).count()) === 0);
  check(true, 'opening the conversation clears the mention count');
  await bob.screenshot({ path: join(artifacts, 'mention.png') });
});
