// Two portcullis replicas (A and B) sharing sessions in Redis, one Chromium (headless, through
// playwright-core): sign in through A, use the session through B, a dashboard burst spread
// over both after the access token expired (the provider's token endpoint slowed past the
// refresh lock's lease), sign out through B. Started by tests/it/redis.rs, which checks the
// rest (a copy of the cookie refused by A, nothing left in Redis); this script prints one JSON
// line with what the browser saw, and exits non-zero on the first surprise.
//
// Environment: A, B (the replicas), OP (the provider), ACCESS_TTL (seconds an access token
// lives), SLOW_MS (how long the token endpoint takes during the burst), CHROMIUM.
import { chromium } from 'playwright-core';

const a = process.env.A;
const b = process.env.B;
const op = process.env.OP;
const ttl = Number(process.env.ACCESS_TTL || 3);
const slowMs = Number(process.env.SLOW_MS || 0);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const out = {};
try {
  const ctx = await browser.newContext();
  await ctx.route('**/*', (route) => {
    const host = new URL(route.request().url()).hostname;
    return host === '127.0.0.1' || host === 'localhost' ? route.continue() : route.abort();
  });
  const check = (cond, msg) => { if (!cond) throw new Error(msg); };
  const pageA = await ctx.newPage();
  pageA.setDefaultTimeout(15000);

  // 1. Sign in through A.
  await pageA.goto(`${a}/start/here`);
  check(new URL(pageA.url()).pathname === '/oauth2/sign_in', `expected the sign-in page, got ${pageA.url()}`);
  await pageA.click('#sign-in');
  await pageA.waitForSelector('#username');
  await pageA.fill('#username', 'alice');
  await pageA.click('#login');
  await pageA.waitForURL(`${a}/start/here`);
  out.cookies = (await ctx.cookies()).map((c) => ({ name: c.name, size: c.value.length, httpOnly: c.httpOnly }));

  // 2. The same session through B (cookies are per host, not per port).
  const pageB = await ctx.newPage();
  pageB.setDefaultTimeout(15000);
  const onB = await pageB.goto(`${b}/through/b`);
  out.through_b = onB.status();
  out.through_b_url = pageB.url();

  // 3. The access token expires; the token endpoint turns slow; 30 requests at once, half on
  //    each replica. All pass; the provider sees one refresh.
  await pageA.waitForTimeout((ttl + 2) * 1000);
  await fetch(`${op}/_test/slow?ms=${slowMs}`);
  const burst = ([n, tag]) => Promise.all(
    Array.from({ length: n }, (_, i) => fetch(`/api/dash/${tag}${i}`).then((r) => r.status)),
  );
  const [fromA, fromB] = await Promise.all([pageA.evaluate(burst, [15, 'a']), pageB.evaluate(burst, [15, 'b'])]);
  out.burst = [...fromA, ...fromB];
  await fetch(`${op}/_test/slow?ms=0`);
  out.refreshes = (await (await fetch(`${op}/_test/stats`)).json()).refresh;
  out.cookie = (await ctx.cookies()).find((c) => c.name === '_portcullis')?.value ?? null;

  // 4. Sign out through B (typed: no confirmation), on to the provider and back.
  await pageB.goto(`${b}/oauth2/sign_out`);
  await pageB.waitForLoadState('load');
  out.after_sign_out = pageB.url();
  out.cookies_after = (await ctx.cookies()).map((c) => c.name);
  // A, in the other tab, is signed out too
  const again = await pageA.goto(`${a}/after/sign/out`);
  out.a_after_sign_out = new URL(pageA.url()).pathname;
  out.a_after_status = again.status();
} catch (e) {
  out.error = String(e && e.stack ? e.stack : e);
}
await browser.close();
console.log(JSON.stringify(out));
process.exit(out.error ? 1 : 0);
