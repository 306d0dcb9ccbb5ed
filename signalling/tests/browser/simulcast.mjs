// Simulcast through the SFU: one browser publishes three layers at
// 1280×720; the other shows it as a thumbnail and receives the low layer
// (frameWidth ≤ 320), then in spotlight and receives the high one (1280).
// The server sends two-person calls through the SFU here
// (conference_server_based_threshold = 2), so two browsers suffice.
import { join } from 'node:path';
import { artifacts, check, dataDir, demoPage, launch, open, scenario, startServer, stopServer, until } from './lib.mjs';

await scenario('simulcast', async (cleanup) => {
  const server = await startServer({
    dir: dataDir(),
    env: { CONFER_CALLS__CONFERENCE_SERVER_BASED_THRESHOLD: '2' },
  });
  cleanup.push(() => stopServer(server));
  const browser = await launch();
  cleanup.push(() => browser.close());
  const ann = await demoPage(browser, server.base, 'Ann', { capture: { width: 1280, height: 720, frameRate: 15 } });
  // Bob only watches: his own camera is small.
  const bob = await demoPage(browser, server.base, 'Bob', { capture: { width: 320, height: 180, frameRate: 15 } });
  await open(ann, 'Demo lobby');
  await open(bob, 'Demo lobby');

  await ann.click('#call-video');
  await bob.locator('#ring').waitFor({ state: 'visible' });
  await bob.click('#accept');
  await until('the SFU', async () => (await bob.evaluate(() => window.confer.calls.topology)) === 'sfu');
  const layers = await until('Ann to publish three layers', () => ann.evaluate(() => {
    const sender = window.confer.calls.videoSender;
    const encodings = sender && sender.getParameters().encodings;
    return encodings && encodings.length === 3 && encodings.map((e) => e.rid).join(',');
  }));
  check(layers === 'q,h,f', `Ann publishes three simulcast layers (${layers}) at 1280×720`);

  const annSlot = await until('Ann\'s slot at Bob', () => bob.evaluate(() => {
    const c = window.confer.calls;
    const me = c.app.userId;
    // The video slot (audio slots have no tile).
    for (const [mid, user] of c.slots) if (user !== me && c.tiles.has(`sfu:${mid}`)) return mid;
    return null;
  }));
  const width = async () => (await bob.evaluate(() => window.confer.calls.videoStats())).find((r) => r.mid === annSlot);

  await bob.evaluate((mid) => window.confer.calls.setQuality(mid, 'thumbnail'), annSlot);
  const low = await until('the low layer', async () => {
    const r = await width();
    return r && r.framesDecoded > 0 && r.frameWidth > 0 && r.frameWidth <= 320 && r;
  }, 40_000);
  check(true, `as a thumbnail Bob receives the low layer: ${low.frameWidth}×${low.frameHeight}`);

  // The spotlight button on Ann's tile asks for the highest layer.
  await bob.click(`#call-grid .tile[data-mid="${annSlot}"] .spot`);
  let seen;
  const high = await until('the high layer', async () => {
    const r = await width();
    seen = r;
    return r && r.frameWidth === 1280 && r;
  }, 60_000).catch(async (e) => {
    const pub = await ann.evaluate(async () => {
      const out = [];
      (await window.confer.calls.pub.getStats()).forEach((r) => {
        if (r.type === 'outbound-rtp' && r.kind === 'video') out.push(`${r.rid}:${r.frameWidth}x${r.frameHeight} ${r.qualityLimitationReason} active=${r.active}`);
      });
      return out;
    });
    throw new Error(`${e.message}; Bob receives ${JSON.stringify(seen)}; Ann sends ${JSON.stringify(pub)}`);
  });
  check(true, `in spotlight Bob receives the high layer: ${high.frameWidth}×${high.frameHeight}`);
  await bob.screenshot({ path: join(artifacts, 'call-spotlight.png') });
  await bob.click('#hangup');
});
