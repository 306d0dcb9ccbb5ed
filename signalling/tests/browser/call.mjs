// Calls between browsers at 640×360, 15 fps: two people talk peer-to-peer;
// when the third joins, all three move to the SFU and each decodes the
// others' video (framesDecoded grows in getStats()). A screenshot of the
// call grid goes to the artifacts.
import { join } from 'node:path';
import { artifacts, check, dataDir, demoPage, launch, open, scenario, startServer, stopServer, until } from './lib.mjs';

const capture = { width: 640, height: 360, frameRate: 15 };

/** Received video per connection, from the page's getStats(). */
const stats = (page) => page.evaluate(() => window.confer.calls.videoStats());

/** Waits until `page` decodes video from `count` senders over `via`, and
 * the frames keep coming. */
async function decoding(page, name, via, count) {
  const first = await until(`${name} to decode ${count} video stream(s) via ${via}`, async () => {
    const s = (await stats(page)).filter((r) => r.via === via && r.framesDecoded > 5);
    return s.length >= count && s;
  }, 40_000);
  // And the frames keep coming on each of them.
  const later = await until(`${name}'s frames to keep coming via ${via}`, async () => {
    const now = (await stats(page)).filter((r) => r.via === via);
    return first.every((r) => now.some((x) => x.mid === r.mid && x.framesDecoded >= r.framesDecoded + 5)) && now;
  }, 15_000);
  check(true, `${name} decodes ${count} video stream(s) via ${via}: ${later.map((r) => `${r.framesDecoded} frames ${r.frameWidth}px`).join(', ')}`);
}

await scenario('call', async (cleanup) => {
  const server = await startServer({ dir: dataDir() });
  cleanup.push(() => stopServer(server));
  const browser = await launch();
  cleanup.push(() => browser.close());
  const ann = await demoPage(browser, server.base, 'Ann', { capture });
  const bob = await demoPage(browser, server.base, 'Bob', { capture });
  const carol = await demoPage(browser, server.base, 'Carol', { capture });
  for (const p of [ann, bob, carol]) await open(p, 'Demo lobby');

  await ann.click('#call-video');
  await bob.locator('#ring').waitFor({ state: 'visible' });
  check((await bob.textContent('#ring-text')).includes('Ann is calling'), 'Bob\'s page rings');
  await carol.locator('#ring').waitFor({ state: 'visible' });
  await bob.click('#accept');
  await until('peer-to-peer', async () => (await ann.evaluate(() => window.confer.calls.topology)) === 'p2p'
    && (await bob.evaluate(() => window.confer.calls.topology)) === 'p2p');
  check(true, 'two people: the server chose peer-to-peer');
  await decoding(ann, 'Ann', 'p2p', 1);
  await decoding(bob, 'Bob', 'p2p', 1);

  await carol.click('#accept');
  for (const [p, name] of [[ann, 'Ann'], [bob, 'Bob'], [carol, 'Carol']]) {
    await until(`${name} on the SFU`, async () => (await p.evaluate(() => window.confer.calls.topology)) === 'sfu');
  }
  check(true, 'three people: everyone moved to the SFU');
  await decoding(ann, 'Ann', 'sfu', 2);
  await decoding(bob, 'Bob', 'sfu', 2);
  await decoding(carol, 'Carol', 'sfu', 2);
  await until('the peer-to-peer connection to close', async () => (await stats(ann)).every((r) => r.via === 'sfu'));
  check(true, 'the old peer-to-peer connection is closed once the SFU\'s media flows');

  // Mute is shown to the others through the call state.
  await bob.click('#mute');
  await until('Ann to learn Bob muted', () => ann.evaluate(() => {
    const c = window.confer.calls.call;
    return c && c.participants.some((p) => !p.audio);
  }));
  check(true, 'Bob\'s mute reaches the others');
  // Carol shares her screen: the others learn it, and her video goes on.
  await carol.click('#screen');
  await until('Ann to learn Carol shares her screen', () => ann.evaluate(() => {
    const c = window.confer.calls.call;
    return c && c.participants.some((p) => p.screen);
  }));
  check((await carol.evaluate(() => window.confer.calls.videoSender.track.label)).startsWith('screen'),
    'Carol\'s video sender now carries her screen');
  await decoding(ann, 'Ann', 'sfu', 2);
  await ann.waitForTimeout(1000);
  await ann.screenshot({ path: join(artifacts, 'call-grid.png') });

  // Carol and Bob hang up; with one person left the call ends for Ann too.
  for (const p of [carol, bob]) await p.click('#hangup');
  await until('the call to end', async () => (await ann.locator('#call').isHidden())
    && (await ann.locator('#messages .msg', { hasText: 'Call' }).count()) >= 2);
  check(true, 'the call ended and its start and end are in the conversation');

  // A call everyone declines ends at once, as declined.
  await ann.click('#call-audio');
  for (const p of [bob, carol]) {
    await p.locator('#ring').waitFor({ state: 'visible' });
    await p.click('#decline');
  }
  await until('the declined call to end', async () => (await ann.locator('#call').isHidden())
    && (await ann.locator('#messages .msg', { hasText: 'declined' }).count()) >= 1);
  check(true, 'declined by everyone, the call ends and says so in the conversation');
});
