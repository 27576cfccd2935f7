// Segment's and RudderStack's own Node SDKs, from npm and unmodified, pointed at the reference
// server with a write key (docs/segment.md): track, identify, page, screen, group and alias
// arrive as Trailmark events, checked through the event inspector (names, properties, the
// hashed e-mail, user ids), and a retried batch is stored once. Wrong and revoked keys get 401.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Analytics as SegmentAnalytics } from '@segment/analytics-node';
import RudderAnalytics from '@rudderstack/rudder-sdk-node';
import { startServer } from '../../bindings/js/test/server.mjs';

const sha256 = (s) => createHash('sha256').update(s).digest('hex');
const args = [
  '--app', 'seg:seg-secret', '--app', 'rud:rud-secret',
  '--write-key', 'seg=wk_segment_0123456789', '--write-key', 'rud=wk_rudder_0123456789', '--revoked-write-key', 'seg=wk_revoked_0123456789',
];

/** The calls both SDKs make, with the ids and e-mail of `who`. */
function calls(client, who) {
  const user = `${who}-user-1`;
  client.identify({ userId: user, anonymousId: `${who}-anon`, traits: { email: `Grace.${who}@Example.com`, plan: 'pro' } });
  client.track({ userId: user, event: 'Order Completed', properties: { revenue: 12.5, currency: 'eur', order_id: 'o-1' } });
  client.track({ userId: user, event: 'Video Played', properties: { seconds: 30 } });
  client.page({ userId: user, name: 'Pricing', properties: { url: 'https://shop.example/pricing' } });
  client.screen({ userId: user, name: 'Home' });
  client.group({ userId: user, groupId: 'acme', traits: { name: 'Acme Inc' } });
  client.alias({ userId: `${who}-user-2`, previousId: user });
}

/** What arrived for `app`, checked the same way for both SDKs. */
async function arrived(server, app, who) {
  // The inspector lists one person's events: both user ids, each event once.
  const all = [];
  for (const user of [`${who}-user-1`, `${who}-user-2`]) all.push(...(await server.events(`app_id=${app}&user_id=${user}`)));
  return [...new Map(all.map((e) => [e.event_id, e])).values()];
}

async function checkArrived(server, app, who) {
  const events = await arrived(server, app, who);
  const types = events.map((e) => e.type).sort();
  assert.deepEqual(types, ['alias', 'group', 'identify', 'page_view', 'purchase', 'screen_view', 'video_played']);
  const by = (t) => events.find((e) => e.type === t);
  const identify = by('identify');
  assert.equal(identify.user_id, `${who}-user-1`);
  assert.equal(identify.properties.email_sha256, sha256(`grace.${who}@example.com`));
  assert.equal(identify.properties.plan, 'pro');
  assert.equal(identify.properties.email, undefined);
  assert.equal(identify.enrichment.auth, 'write_key');
  const purchase = by('purchase');
  assert.deepEqual([purchase.properties.revenue, purchase.properties.currency], [12.5, 'EUR']);
  assert.equal(purchase.user_id, `${who}-user-1`);
  assert.equal(by('video_played').properties.seconds, 30);
  assert.equal(by('page_view').properties.name, 'Pricing');
  assert.equal(by('page_view').properties.url, 'https://shop.example/pricing');
  assert.equal(by('screen_view').properties.name, 'Home');
  assert.equal(by('group').context.group_id, 'acme');
  assert.equal(by('alias').user_id, `${who}-user-2`);
  assert.ok(!JSON.stringify(events).toLowerCase().includes(`grace.${who}@example.com`), 'no raw e-mail stored');
  return events.length;
}

test('Segment and RudderStack Node SDKs deliver every call', async () => {
  const server = await startServer({ args });
  try {
    // Segment's analytics-node, its write key as the Basic user name, /v1/batch.
    const segment = new SegmentAnalytics({ writeKey: 'wk_segment_0123456789', host: server.base, flushInterval: 100, maxRetries: 2 });
    const errors = [];
    const requests = [];
    segment.on('error', (e) => errors.push(e));
    segment.on('http_request', (r) => requests.push(r));
    calls(segment, 'seg');
    await segment.closeAndFlush({ timeout: 10_000 });
    assert.deepEqual(errors, []);
    assert.ok(requests.length >= 1);
    const stored = await checkArrived(server, 'seg', 'seg');

    // The SDK's batch sent again, as a retry after a lost answer would: stored once.
    for (const r of requests) {
      const resp = await fetch(r.url, { method: 'POST', headers: r.headers, body: r.body });
      const answer = await resp.json();
      assert.equal(resp.status, 200, JSON.stringify(answer));
      assert.equal(answer.accepted, 0, JSON.stringify(answer));
    }
    assert.equal((await arrived(server, 'seg', 'seg')).length, stored);

    // RudderStack's rudder-sdk-node: gzip bodies, /v1/batch.
    const rudder = new RudderAnalytics('wk_rudder_0123456789', { dataPlaneUrl: server.base, flushInterval: 100, retryCount: 1 });
    calls(rudder, 'rud');
    await rudder.flush();
    await checkArrived(server, 'rud', 'rud');
  } finally {
    await server.stop();
  }
});

test('a wrong or revoked write key gets 401, and a write key is not an SDK secret', async () => {
  const server = await startServer({ args });
  try {
    const batch = JSON.stringify({ batch: [{ type: 'track', event: 'x', anonymousId: 'a' }] });
    const basic = (key) => `Basic ${Buffer.from(`${key}:`).toString('base64')}`;
    for (const [key, code] of [['wk_nope', 'invalid_write_key'], ['wk_revoked_0123456789', 'revoked_write_key']]) {
      const resp = await fetch(`${server.base}/v1/batch`, { method: 'POST', headers: { authorization: basic(key), 'content-type': 'application/json' }, body: batch });
      assert.equal(resp.status, 401);
      assert.equal((await resp.json()).error.code, code);
    }
    // Segment's SDK with a revoked key reports the failure (and stores nothing).
    const segment = new SegmentAnalytics({ writeKey: 'wk_revoked_0123456789', host: server.base, flushInterval: 50, maxRetries: 0 });
    const errors = [];
    segment.on('error', (e) => errors.push(e));
    segment.track({ anonymousId: 'a', event: 'Never' });
    await segment.closeAndFlush({ timeout: 5_000 });
    assert.equal(errors.length, 1);
    assert.deepEqual(await server.events('app_id=seg&anonymous_id=a'), []);
    for (const path of ['/v1/install', '/v1/click', '/v1/event']) {
      const resp = await fetch(`${server.base}${path}`, { method: 'POST', headers: { authorization: basic('wk_segment_0123456789') }, body: '{}' });
      assert.equal(resp.status, 401, path);
    }
    const settings = await fetch(`${server.base}/v1/projects/wk_segment_0123456789/settings`);
    assert.equal(settings.status, 200);
    assert.equal((await settings.json()).integrations['Segment.io'].apiKey, 'wk_segment_0123456789');
  } finally {
    await server.stop();
  }
});
