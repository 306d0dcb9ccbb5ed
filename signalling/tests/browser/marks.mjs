// Two people react to a message and pin it as they would: hover, pick an
// emoji from the palette, click a reaction to add or take back their own,
// read who reacted from its tooltip, pin, and find the message again in
// the conversation's pinned list. Screenshots go to the artifacts.
import { join } from 'node:path';
import { artifacts, check, lobbyPair, open, scenario, sendText, until } from './lib.mjs';

await scenario('marks', async (cleanup) => {
  const { ann, bob } = await lobbyPair(cleanup);
  await sendText(ann, 'Release *1.4* is out');
  await sendText(ann, 'Retro on Friday at 15:00');
  const release = (page) => page.locator('#messages .msg', { hasText: 'Release 1.4 is out' });
  await release(bob).waitFor();

  // Bob reacts from the palette.
  await release(bob).hover();
  await release(bob).locator('button.react').click();
  await bob.locator('.palette button', { hasText: '👍' }).click();
  const chip = (page, emoji) => release(page).locator('.reaction', { hasText: emoji });
  await until('Анна to see Bob\'s reaction', async () => (await chip(ann, '👍').count()) === 1
    && (await chip(ann, '👍').textContent()) === '👍 1');
  check((await chip(ann, '👍').getAttribute('title')) === 'Bob', 'the reaction\'s tooltip names who chose it');
  check(!(await chip(ann, '👍').getAttribute('class')).includes('mine'), 'it is not marked as Анна\'s');

  // Анна joins in by clicking the reaction, and Bob adds another.
  await chip(ann, '👍').click();
  await until('the count to reach 2 on both sides', async () => (await chip(bob, '👍').textContent()) === '👍 2'
    && (await chip(ann, '👍').textContent()) === '👍 2');
  check((await chip(ann, '👍').getAttribute('class')).includes('mine'), 'Анна\'s own reaction is marked as hers');
  check((await chip(bob, '👍').getAttribute('title')) === 'Bob, Анна', 'the tooltip lists both, first first');
  await release(bob).hover();
  await release(bob).locator('button.react').click();
  await bob.locator('.palette button', { hasText: '🎉' }).click();
  await until('Анна to see 🎉', async () => (await chip(ann, '🎉').count()) === 1);
  check(true, 'two reactions on one message, each with its count');

  // Bob pins the release; Анна sees the pin count and finds it in the list.
  await release(bob).hover();
  await release(bob).locator('button.pin').click();
  await until('Анна to see the pin', async () => (await ann.locator('#show-pins').isVisible())
    && (await ann.locator('#show-pins').textContent()) === '📌 1');
  check((await release(ann).getAttribute('class')).includes('pinned'), 'the pinned message is marked in the conversation');
  await ann.screenshot({ path: join(artifacts, 'reactions-and-pins.png') });
  await ann.click('#show-pins');
  const item = ann.locator('#pins-list .pinned-item');
  await item.first().waitFor();
  check((await item.count()) === 1 && (await item.textContent()).includes('Release 1.4 is out'),
    'the pinned list shows the message, formatted');
  await ann.screenshot({ path: join(artifacts, 'pinned-list.png') });
  await item.click();

  // Анна takes her reaction back; after a reload both pages still agree.
  await chip(ann, '👍').click();
  await until('the count to drop to 1', async () => (await chip(bob, '👍').textContent()) === '👍 1');
  await bob.reload();
  await bob.waitForSelector('#status.online');
  await open(bob, 'Demo lobby');
  await until('Bob\'s reloaded page to show the reactions and the pin', async () =>
    (await chip(bob, '👍').count()) === 1 && (await chip(bob, '👍').textContent()) === '👍 1'
    && (await chip(bob, '🎉').count()) === 1 && (await bob.locator('#show-pins').textContent()) === '📌 1');
  check(true, 'history brings the reactions and the pins back after a reload');

  // Read-by: Bob has the lobby open, so he has read Анна's messages;
  // pointing at one shows who.
  const retro = ann.locator('#messages .msg', { hasText: 'Retro on Friday' });
  await until('the read-by tooltip', async () => {
    await ann.mouse.move(0, 0);
    await retro.hover();
    return ((await retro.getAttribute('title')) || '').startsWith('Read by');
  });
  check((await retro.getAttribute('title')) === 'Read by Bob', 'pointing at her message shows Анна who has read it');

  // Unpinned: the count goes.
  await release(bob).hover();
  await release(bob).locator('button.pin').click();
  await until('Анна to see no pins', async () => !(await ann.locator('#show-pins').isVisible()));
  check(true, 'unpinning removes the pin on the other side');
});
