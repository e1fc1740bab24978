// Drives Debian's Chromium (headless, through playwright-core: no browser download) through
// portcullis' browser login against the real oidc-provider of op.mjs. Started by
// tests/it/browser.rs, which asserts what the app received; this script prints one JSON line
// with what the browser saw, and exits non-zero on the first surprise.
//
// Environment: APP (portcullis), OP (the provider), SHOTS (screenshot folder), ACCESS_TTL
// (seconds an access token lives), CHROMIUM (default /usr/bin/chromium).
import { chromium } from 'playwright-core';

const app = process.env.APP;
const op = process.env.OP;
const shots = process.env.SHOTS;
const ttl = Number(process.env.ACCESS_TTL || 3);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const out = {};
try {
  const ctx = await browser.newContext();
  // Loopback only: anything else is aborted (and would show up as a failed load).
  await ctx.route('**/*', (route) => {
    const host = new URL(route.request().url()).hostname;
    return host === '127.0.0.1' || host === 'localhost' ? route.continue() : route.abort();
  });
  const page = await ctx.newPage();
  page.setDefaultTimeout(15000);
  const check = (cond, msg) => { if (!cond) throw new Error(msg); };
  const signInAt = async (user) => {
    await page.click('#sign-in');
    await page.waitForSelector('#username');
    await page.fill('#username', user);
    await page.click('#login');
  };

  // 1. A deep link with a query: sign-in page, provider login, back on the same deep link.
  const deep = `${app}/deep/link?x=1&y=two%20words`;
  await page.goto(deep);
  check(new URL(page.url()).pathname === '/oauth2/sign_in', `expected the sign-in page, got ${page.url()}`);
  await page.screenshot({ path: `${shots}/01-sign-in.png` });
  await page.click('#sign-in');
  await page.waitForSelector('#username');
  await page.screenshot({ path: `${shots}/02-provider-login.png` });
  await page.fill('#username', 'alice');
  await page.click('#login');
  await page.waitForURL(deep);
  out.deep_link = page.url();
  out.deep_body = (await page.textContent('body')).trim();
  out.userinfo = await page.evaluate(async () => (await fetch('/oauth2/userinfo')).json());
  out.cookies = (await ctx.cookies()).map((c) => ({ name: c.name, httpOnly: c.httpOnly, sameSite: c.sameSite }));

  // 2. The access token expires; a dashboard fires 30 requests at once. All pass, without a
  //    visible login, and the provider sees one refresh.
  await page.waitForTimeout((ttl + 2) * 1000);
  out.burst = await page.evaluate(async () => Promise.all(
    Array.from({ length: 30 }, (_, i) => fetch(`/api/dash/${i}`).then((r) => r.status)),
  ));
  out.refreshes = (await (await fetch(`${op}/_test/stats`)).json()).refresh;
  out.url_after_burst = page.url();

  // 3. CSRF: a same-origin post passes; one from a page of another origin on the same site
  //    (the provider's port: SameSite=Lax still sends the cookie) must not reach the app.
  out.same_origin_post = await page.evaluate(async () => (await fetch('/api/write', { method: 'POST', body: 'x' })).status);
  await page.goto(`${op}/_test/stats`);
  await page.evaluate(async (target) => {
    await fetch(target, { method: 'POST', mode: 'no-cors', credentials: 'include', body: 'x' }).catch(() => {});
    const f = document.createElement('form');
    f.method = 'POST';
    f.action = target.replace('cross-fetch', 'cross-form');
    document.body.appendChild(f);
    f.submit();
  }, `${app}/api/cross-fetch`);
  await page.waitForURL((u) => u.pathname === '/api/cross-form');
  out.cross_site_form = await page.evaluate(() => document.body.innerText);

  // 4. alice is in admins: /admin opens.
  out.admin_alice = (await page.goto(`${app}/admin/panel`)).status();

  // 5. Sign out: the provider ends its session too; the next visit asks for login.
  await page.goto(`${app}/oauth2/sign_out`);
  await page.waitForURL((u) => u.pathname === '/oauth2/sign_in');
  out.after_sign_out = page.url();
  await page.screenshot({ path: `${shots}/03-after-sign-out.png` });
  await page.goto(`${app}/oauth2/userinfo`);
  out.userinfo_after_sign_out = new URL(page.url()).pathname;

  // 6. bob is not in admins: the forbidden page, with a sign-out link, no login loop.
  const resp = await page.goto(`${app}/admin/panel`);
  check(new URL(page.url()).pathname === '/oauth2/sign_in', `expected sign-in for bob, got ${page.url()} ${resp.status()}`);
  const forbidden = page.waitForResponse((r) => new URL(r.url()).pathname === '/admin/panel');
  await signInAt('bob');
  out.admin_bob = (await forbidden).status();
  await page.waitForSelector('#sign-out');
  out.forbidden_heading = (await page.textContent('h1')).trim();
  out.forbidden_body = (await page.textContent('main')).replace(/\s+/g, ' ').trim();
  await page.screenshot({ path: `${shots}/04-forbidden.png` });
  console.log(JSON.stringify(out));
} catch (e) {
  console.log(JSON.stringify({ ...out, error: String(e && e.stack || e) }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
