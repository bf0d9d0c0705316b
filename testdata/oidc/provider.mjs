// The OpenID provider that certflow is tested against (oidc-provider 9, a
// certified implementation), on 127.0.0.1 only. Used by certflow-auth's token
// tests, the server's e2e tests (agents, console login, console in chromium)
// and scripts/dev-idp.sh. DEVELOPMENT ONLY: its login page is oidc-provider's
// devInteractions, its cookie key, client secrets and passwords are fixed.
//
// Environment (all optional):
//   OP_PORT                  port (4000)
//   OP_KEYS_OUT              file the signing keys are written to (PKCS#8,
//                            base64) so tests can mint tokens "from" this issuer
//   CONSOLE_REDIRECT_URI     the console client's redirect URI
//                            (http://127.0.0.1:8080/console/callback)
//   CONSOLE_POST_LOGOUT_URI  its post-logout redirect URI (http://127.0.0.1:8080/console/)
//   OP_ACCESS_TOKEN_ALG      signature of the JWT access tokens for the API (ES256)
//   OP_TOKEN_TTL             lifetime in seconds of ID, access and client-credentials tokens (300)
//   OP_USERS                 JSON {"login": {"groups": [...], "password": "..."}}
//                            replacing the test users below; a user with a
//                            password must give it, any other password is accepted
// Clients: `console` (authorization code + PKCE, secret `console-secret`),
// client-credentials `agent-1`/`agent-secret`, `automation-1`/`automation-secret`
// (API scopes) and `stranger`/`stranger-secret` (no role in certflow).
// Logs `READY <issuer>` once listening and one line per request (`REQ <method> <path>`).
import { generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import * as querystring from 'node:querystring';
import Provider, { errors } from 'oidc-provider';

const PORT = Number(process.env.OP_PORT || 4000);
const ISSUER = `http://127.0.0.1:${PORT}`;
const API = 'urn:certflow:api';
const REDIRECT = process.env.CONSOLE_REDIRECT_URI || 'http://127.0.0.1:8080/console/callback';
const POST_LOGOUT = process.env.CONSOLE_POST_LOGOUT_URI || 'http://127.0.0.1:8080/console/';
const ACCESS_TOKEN_ALG = process.env.OP_ACCESS_TOKEN_ALG || 'ES256';
const TTL = Number(process.env.OP_TOKEN_TTL || 300);

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

// People and their groups: the login name is the subject. The tests' people
// sign in with any password; a login not listed here is refused.
const USERS = process.env.OP_USERS ? JSON.parse(process.env.OP_USERS) : {
  alice: { groups: ['certflow-admins', 'team-payments'] },
  bob: { groups: ['certflow-operators', 'team-payments', 'team-search', 'unrelated'] },
  // A viewer (the console browser test: no actions shown, posting them is refused).
  carol: { groups: ['certflow-viewers', 'team-payments'] },
};
const groups = (sub) => (Object.hasOwn(USERS, sub) && USERS[sub].groups) || [];

const provider = new Provider(ISSUER, {
  clients: [
    {
      client_id: 'console', client_secret: 'console-secret',
      grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'],
      redirect_uris: [REDIRECT], post_logout_redirect_uris: [POST_LOGOUT],
    },
    {
      client_id: 'agent-1', client_secret: 'agent-secret', grant_types: ['client_credentials'],
      response_types: [], redirect_uris: [], scope: 'certs:read certs:write',
    },
    {
      client_id: 'automation-1', client_secret: 'automation-secret', grant_types: ['client_credentials'],
      response_types: [], redirect_uris: [], scope: 'certs:read certs:write',
    },
    {
      client_id: 'stranger', client_secret: 'stranger-secret', grant_types: ['client_credentials'],
      response_types: [], redirect_uris: [], scope: 'certs:read',
    },
  ],
  jwks: { keys },
  cookies: { keys: ['test-only'] },
  ttl: { ClientCredentials: TTL, AccessToken: TTL, IdToken: TTL, AuthorizationCode: 60 },
  pkce: { required: () => true },
  scopes: ['openid', 'offline_access', 'groups', 'certs:read', 'certs:write'],
  claims: { openid: ['sub'], groups: ['groups'], profile: ['name'] },
  // Put scope-granted claims (groups) in the ID token of the code flow too.
  conformIdTokenClaims: false,
  findAccount: async (ctx, sub) => ({
    accountId: sub,
    claims: async () => ({ sub, name: sub, groups: groups(sub) }),
  }),
  extraTokenClaims: async (ctx, token) => (
    token.accountId ? { groups: groups(token.accountId) } : undefined),
  features: {
    devInteractions: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => API,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resource) => {
        if (resource !== API) throw new errors.InvalidTarget();
        return {
          scope: 'certs:read certs:write', audience: API, accessTokenTTL: TTL,
          accessTokenFormat: 'jwt', jwt: { sign: { alg: ACCESS_TOKEN_ALG } },
        };
      },
    },
  },
});

provider.use(async (ctx, next) => {
  console.log(`REQ ${ctx.method} ${ctx.path}`);
  await next();
});

// devInteractions takes any login and password: check them here, before it
// reads the form (it accepts a body parsed upstream as `req.body`).
provider.use(async (ctx, next) => {
  if (ctx.method === 'POST' && ctx.path.startsWith('/interaction/') && ctx.is('application/x-www-form-urlencoded')) {
    const chunks = [];
    for await (const chunk of ctx.req) chunks.push(chunk);
    const form = querystring.parse(Buffer.concat(chunks).toString());
    ctx.req.body = form;
    if (form.prompt === 'login') {
      const user = Object.hasOwn(USERS, form.login) ? USERS[form.login] : undefined;
      if (!user || (user.password !== undefined && user.password !== form.password)) {
        ctx.status = 403;
        ctx.type = 'html';
        ctx.body = `<!DOCTYPE html><title>Sign-in refused</title><p>Unknown login or wrong password: sign in as one of
          the people this provider was started with (scripts/dev-idp.sh printed them).
          <a href="${encodeURI(ctx.path)}">Try again</a></p>`;
        return;
      }
    }
  }
  await next();
});

provider.listen(PORT, '127.0.0.1', () => console.log(`READY ${ISSUER}`));
