// Two people talk in a thread as they would: reply to a message from its
// tools, see the thread's line under the root ("1 reply · 1 new") while
// the conversation keeps only top-level messages, open the thread beside
// the conversation, answer there, and find the thread again in the list of
// followed threads. A screenshot goes to the artifacts.
import { join } from 'node:path';
import { artifacts, check, lobbyPair, open, scenario, sendText, until } from './lib.mjs';

await scenario('threads', async (cleanup) => {
  const { ann, bob } = await lobbyPair(cleanup);
  await sendText(ann, 'Deploy on Friday?');
  await sendText(ann, 'Lunch at 13:00');
  const root = (page) => page.locator('#messages .msg', { hasText: 'Deploy on Friday?' });
  await root(bob).waitFor();

  // Bob replies from the message's tools: the thread opens beside it.
  await root(bob).hover();
  await root(bob).locator('button.reply').click();
  await bob.locator('#thread').waitFor();
  await bob.fill('#thread-text', 'Yes, after *15:00*');
  await bob.click('#thread-send');
  await bob.locator('#thread-messages .msg', { hasText: 'Yes, after 15:00' }).waitFor();
  check(true, 'Bob\'s reply shows in the thread panel');

  // Анна sees the thread's line under the root, not the reply itself.
  const link = root(ann).locator('.thread-link');
  await until('Анна to see the thread line', async () => (await link.count()) === 1
    && (await link.textContent()).startsWith('1 reply') && (await link.textContent()).endsWith('1 new'));
  check((await ann.locator('#messages .msg', { hasText: 'Yes, after 15:00' }).count()) === 0,
    'the reply stays out of the conversation');

  // She opens the thread: the reply is there, and the thread is read.
  await link.click();
  await ann.locator('#thread-messages .msg', { hasText: 'Yes, after 15:00' }).waitFor();
  check((await ann.locator('#thread-messages .msg').first().textContent()).includes('Deploy on Friday?'),
    'the thread panel starts with its root');
  await until('the new count to go', async () => !(await link.textContent()).includes('new'));
  check(true, 'opening the thread reads it');
  await ann.fill('#thread-text', 'Great, I will tell QA');
  await ann.click('#thread-send');
  await bob.locator('#thread-messages .msg', { hasText: 'Great, I will tell QA' }).waitFor();
  check(true, 'Bob, with the thread open, gets Анна\'s reply in it');
  await until('Bob\'s thread line to count two replies', async () =>
    (await root(bob).locator('.thread-link').textContent()).startsWith('2 replies'));
  await ann.screenshot({ path: join(artifacts, 'thread.png') });

  // The thread is in Bob's followed threads; after a reload it comes back.
  await bob.reload();
  await bob.waitForSelector('#status.online');
  await bob.click('#show-threads');
  const followed = bob.locator('#search-results .thread-result', { hasText: 'Deploy on Friday?' });
  await followed.waitFor();
  check((await followed.textContent()).includes('2 replies'), 'Bob follows the thread he replied in');
  await followed.click();
  await bob.locator('#thread-messages .msg', { hasText: 'Great, I will tell QA' }).waitFor();
  check((await bob.locator('#messages .msg', { hasText: 'Great, I will tell QA' }).count()) === 0,
    'opened from the list, the thread shows in its panel and the conversation keeps top-level messages');
});
