// A real OpenID Provider (npm oidc-provider 8.x) for portcullis' interop tests.
// Started by the Rust tests on loopback; prints "READY <issuer>" when it listens.
//
// Environment:
//   PORT       port on 127.0.0.1 (required)
//   KEYS_FILE  where the signing keys persist across restarts (required)
//   ROTATE=1   put a new key first in the JWKS, keep the old ones after it
//   AUDIENCE   the resource server's audience (default api://portcullis-interop)
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
  ],
  jwks: { keys },
  scopes: ['api'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
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

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`READY ${issuer} ${keys[0].kid}`);
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
