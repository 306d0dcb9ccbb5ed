// Quote and forward as people use them: Bob quotes Анна's message from its
// tools and both see the quote above his reply; Анна starts a conversation
// with Bob and forwards a message there, and Bob finds it marked as
// forwarded. The list of mentions is checked on the way. Screenshots go to
// the artifacts.
import { join } from 'node:path';
import { artifacts, check, lobbyPair, open, scenario, sendText, until } from './lib.mjs';

await scenario('copies', async (cleanup) => {
  const { ann, bob } = await lobbyPair(cleanup);
  await until('Анна to see Bob among the members', async () => (await ann.textContent('#chat-members')).includes('Bob'));
  await sendText(ann, 'The warehouse moves to _Dock 4_ on Monday');
  const original = (page) => page.locator('#messages .msg[data-seq="1"]', { hasText: 'The warehouse moves' });
  await original(bob).waitFor();

  // Bob quotes it.
  await original(bob).hover();
  await original(bob).locator('button.quote-it').click();
  check((await bob.textContent('#quoting-text')).startsWith('Quoting Анна'), 'the composer shows what Bob quotes');
  await sendText(bob, '@Анна which gate?');
  const reply = (page) => page.locator('#messages .msg', { hasText: 'which gate?' });
  await reply(ann).waitFor();
  const quote = reply(ann).locator('blockquote.quote');
  await quote.waitFor();
  check((await quote.textContent()).includes('The warehouse moves to Dock 4'), 'Анна sees the quote above Bob\'s reply');
  check(await bob.locator('#quoting').isHidden(), 'sending takes the quote out of the composer');
  await ann.screenshot({ path: join(artifacts, 'quote.png') });

  // The mentions list finds Bob's question for Анна.
  await ann.click('#show-mentions');
  await ann.locator('#search-results .mention-result', { hasText: 'which gate?' }).waitFor();
  check(true, 'Анна\'s mentions list has Bob\'s question');
  await ann.locator('#search-results .mention-result').first().click();

  // Анна starts "Logistics" with Bob and forwards the message there.
  await ann.click('#new-conv');
  await ann.fill('#new-conv-title', 'Logistics');
  await ann.locator('#new-conv-people label', { hasText: 'Bob' }).locator('input').check();
  await ann.click('#new-conv-create');
  await ann.locator('#conversations .conv', { hasText: 'Logistics' }).waitFor();
  await open(ann, 'Demo lobby');
  await original(ann).hover();
  await original(ann).locator('button.forward').click();
  await ann.selectOption('#forward-to', { label: 'Logistics' });
  await ann.click('#forward-go');
  await open(bob, 'Logistics');
  const copy = bob.locator('#messages .msg', { hasText: 'The warehouse moves' });
  await copy.waitFor();
  check((await copy.locator('.forwarded').textContent()) === 'Forwarded from Анна', 'Bob sees the copy marked as forwarded from Анна');
  await bob.screenshot({ path: join(artifacts, 'forward.png') });
});
