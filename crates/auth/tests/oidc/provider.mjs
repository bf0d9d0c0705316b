// OpenID provider for certflow-auth's tests (oidc-provider 9, loopback only).
// OP_PORT: port. OP_KEYS_OUT: file the signing keys are written to (PKCS#8,
// base64) so tests can mint tokens "from" this issuer with chosen claims.
// Logs one line per request (`REQ <method> <path>`) to stdout.
import { generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import Provider, { errors } from 'oidc-provider';

const PORT = Number(process.env.OP_PORT || 4000);
const ISSUER = `http://127.0.0.1:${PORT}`;
const API = 'urn:certflow:api';

const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
const keys = [
  { ...rsa.export({ format: 'jwk' }), kid: 'rsa-1', use: 'sig', alg: 'RS256' },
  { ...ec.export({ format: 'jwk' }), kid: 'ec-1', use: 'sig', alg: 'ES256' },
];
if (process.env.OP_KEYS_OUT) {
  writeFileSync(process.env.OP_KEYS_OUT, JSON.stringify({
    rsa: { kid: 'rsa-1', pkcs8: rsa.export({ format: 'der', type: 'pkcs8' }).toString('base64') },
    ec: { kid: 'ec-1', pkcs8: ec.export({ format: 'der', type: 'pkcs8' }).toString('base64') },
  }));
}

// People and their groups: the login name is the subject.
const GROUPS = {
  alice: ['certflow-admins', 'team-payments'],
  bob: ['certflow-operators', 'team-payments', 'team-search', 'unrelated'],
};

const provider = new Provider(ISSUER, {
  clients: [
    {
      client_id: 'console', client_secret: 'console-secret',
      grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'],
      redirect_uris: ['http://127.0.0.1:8080/console/callback'],
    },
    {
      client_id: 'agent-1', client_secret: 'agent-secret', grant_types: ['client_credentials'],
      response_types: [], redirect_uris: [], scope: 'certs:read certs:write',
    },
    {
      client_id: 'stranger', client_secret: 'stranger-secret', grant_types: ['client_credentials'],
      response_types: [], redirect_uris: [], scope: 'certs:read',
    },
  ],
  jwks: { keys },
  cookies: { keys: ['test-only'] },
  ttl: { ClientCredentials: 300, AccessToken: 300, IdToken: 300 },
  pkce: { required: () => true },
  scopes: ['openid', 'offline_access', 'groups', 'certs:read', 'certs:write'],
  claims: { openid: ['sub'], groups: ['groups'], profile: ['name'] },
  // Put scope-granted claims (groups) in the ID token of the code flow too.
  conformIdTokenClaims: false,
  findAccount: async (ctx, sub) => ({
    accountId: sub,
    claims: async () => ({ sub, name: sub, groups: GROUPS[sub] || [] }),
  }),
  extraTokenClaims: async (ctx, token) => (
    token.accountId ? { groups: GROUPS[token.accountId] || [] } : undefined),
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => API,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resource) => {
        if (resource !== API) throw new errors.InvalidTarget();
        return {
          scope: 'certs:read certs:write', audience: API, accessTokenTTL: 300,
          accessTokenFormat: 'jwt', jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
});

provider.use(async (ctx, next) => {
  console.log(`REQ ${ctx.method} ${ctx.path}`);
  await next();
});

provider.listen(PORT, '127.0.0.1', () => console.log(`READY ${ISSUER}`));
