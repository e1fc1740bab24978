// A real OpenID Provider (npm oidc-provider 8.x) for portcullis' interop tests.
// Started by the Rust tests on loopback; prints "READY <issuer>" when it listens.
//
// Environment:
//   PORT       port on 127.0.0.1 (required)
//   KEYS_FILE  where the signing keys persist across restarts (required)
//   ROTATE=1   put a new key first in the JWKS, keep the old ones after it
//   AUDIENCE   the resource server's audience (default api://portcullis-interop)
//   REDIRECT_URI  portcullis' callback, registered for the browser-login client `portcullis-web`
//   POST_LOGOUT_URI  where the provider sends the browser after RP-initiated logout
//   ACCESS_TTL  seconds an access token of the browser-login client lives (default 3600)
//
// The browser-login client gets its own login page (/interaction/:uid, no web fonts, no outside
// requests) for the users alice (groups admins, staff) and bob (staff); consent is automatic.
// Refresh tokens rotate. GET /_test/stats tells how many refresh-token grants succeeded.
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const keysFile = process.env.KEYS_FILE;
const audience = process.env.AUDIENCE || 'api://portcullis-interop';
if (!port || !keysFile) {
  console.error('PORT and KEYS_FILE are required');
  process.exit(2);
}

function newKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: `op-${randomUUID()}`, use: 'sig', alg: 'RS256' };
}

let keys = existsSync(keysFile) ? JSON.parse(readFileSync(keysFile, 'utf8')) : [];
if (keys.length === 0 || process.env.ROTATE === '1') keys.unshift(newKey());
writeFileSync(keysFile, JSON.stringify(keys));

const issuer = `http://127.0.0.1:${port}`;
const redirectUri = process.env.REDIRECT_URI;
const postLogoutUri = process.env.POST_LOGOUT_URI;
const accessTtl = Number(process.env.ACCESS_TTL || 3600);
const USERS = {
  alice: { groups: ['admins', 'staff'], name: 'Alice Admin' },
  bob: { groups: ['staff'], name: 'Bob Builder' },
};
const stats = { refresh: 0, code: 0 };
const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'interop-service',
      client_secret: 'interop-secret-not-for-production',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_post',
    },
    ...(redirectUri ? [{
      client_id: 'portcullis-web',
      client_secret: 'web-secret-not-for-production',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: [redirectUri],
      post_logout_redirect_uris: postLogoutUri ? [postLogoutUri] : [],
      token_endpoint_auth_method: 'client_secret_basic',
    }] : []),
  ],
  findAccount: (ctx, id) => (USERS[id] ? {
    accountId: id,
    claims: () => ({
      sub: id,
      email: `${id}@example.com`,
      email_verified: true,
      preferred_username: id,
      name: USERS[id].name,
      groups: USERS[id].groups,
    }),
  } : undefined),
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['preferred_username', 'name'],
    groups: ['groups'],
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  rotateRefreshToken: true,
  ttl: {
    AccessToken: (ctx, token, client) => (client && client.clientId === 'portcullis-web' ? accessTtl : 600),
    IdToken: 3600,
    RefreshToken: 86400,
    Interaction: 600,
    Session: 86400,
    Grant: 86400,
  },
  jwks: { keys },
  scopes: ['api', 'openid', 'email', 'profile', 'groups', 'offline_access'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      // no confirmation click and no web fonts: submit the logout form at once
      logoutSource: async (ctx, form) => {
        ctx.body = `<!doctype html><html><head><title>Signing out</title></head><body>${form}
          <script>document.forms[0].insertAdjacentHTML('beforeend','<input type="hidden" name="logout" value="yes">');document.forms[0].submit();</script></body></html>`;
      },
      postLogoutSuccessSource: async (ctx) => { ctx.body = '<!doctype html><title>Signed out</title><p>Signed out at the provider.</p>'; },
    },
    resourceIndicators: {
      enabled: true,
      // the browser-login client's tokens are for UserInfo, the service's for the API
      defaultResource: (ctx, client) => (client && client.clientId === 'portcullis-web' ? undefined : audience),
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resourceIndicator) => ({
        scope: 'api',
        audience: resourceIndicator,
        accessTokenTTL: 600,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  extraTokenClaims: () => ({
    email: 'robot@example.com',
    groups: ['robots', 'readers'],
    preferred_username: 'interop robot',
  }),
  cookies: { keys: ['interop-cookie-key-not-for-production'] },
});
provider.proxy = false;

provider.on('grant.success', (ctx) => {
  const gt = ctx.oidc.params && ctx.oidc.params.grant_type;
  if (gt === 'refresh_token') stats.refresh += 1;
  if (gt === 'authorization_code') stats.code += 1;
});

// Our own login page and automatic consent, served before the provider's routes.
const page = (body) => `<!doctype html><html><head><meta charset="utf-8"><title>Test provider</title>
  <style>body{font:16px system-ui,sans-serif;max-width:22rem;margin:3rem auto}input,button{font:inherit;padding:.4rem;width:100%;margin:.3rem 0}</style>
  </head><body>${body}</body></html>`;
// A token endpoint slowed on request (GET /_test/slow?ms=N): a refresh that outlasts a lock's lease.
let slowMs = 0;
provider.use(async (ctx, next) => {
  if (ctx.path === '/_test/stats') {
    ctx.body = stats;
    return;
  }
  if (ctx.path === '/_test/slow') {
    slowMs = Number(ctx.query.ms || 0);
    ctx.body = { slowMs };
    return;
  }
  if (ctx.path === '/token' && ctx.method === 'POST' && slowMs > 0) {
    await new Promise((resolve) => { setTimeout(resolve, slowMs); });
  }
  const m = ctx.path.match(/^\/interaction\/([^/]+)(\/login)?$/);
  if (!m) return next();
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  const { prompt, params, session } = details;
  if (ctx.method === 'POST' && m[2]) {
    const form = await new Promise((resolve) => {
      let data = '';
      ctx.req.on('data', (c) => { data += c; });
      ctx.req.on('end', () => resolve(new URLSearchParams(data)));
    });
    const user = form.get('username');
    if (!USERS[user]) {
      ctx.body = page(`<p id="error">Unknown user</p><a href="/interaction/${m[1]}">back</a>`);
      return;
    }
    await provider.interactionFinished(ctx.req, ctx.res, { login: { accountId: user } }, { mergeWithLastSubmission: false });
    return;
  }
  if (prompt.name === 'login') {
    ctx.body = page(`<h1>Test provider</h1><form method="post" action="/interaction/${m[1]}/login">
      <label>User <input id="username" name="username" autofocus></label>
      <button id="login" type="submit">Sign in</button></form>`);
    return;
  }
  // consent: grant whatever was asked
  let grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  const d = prompt.details;
  if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
  if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
  if (d.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(d.missingResourceScopes)) grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  await provider.interactionFinished(ctx.req, ctx.res, { consent: { grantId } }, { mergeWithLastSubmission: true });
});

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`READY ${issuer} ${keys[0].kid}`);
});
// A port taken since the test chose it: said plainly, so the test picks another.
server.on('error', (e) => {
  if (e.code === 'EADDRINUSE') {
    console.log('EADDRINUSE');
    process.exit(3);
  }
  throw e;
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
