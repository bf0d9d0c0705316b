// OpenID provider for the console login e2e test (oidc-provider 9, loopback only).
// Reuses the package certflow-auth's fixture installed (crates/auth/tests/oidc):
// OIDC_PROVIDER_MODULE is the path of its lib/index.js. That fixture registers a
// fixed redirect URI; this one takes the console's from the environment:
// OP_PORT, CONSOLE_REDIRECT_URI, CONSOLE_POST_LOGOUT_URI.
import { generateKeyPairSync } from 'node:crypto';
import { pathToFileURL } from 'node:url';

const { default: Provider, errors } = await import(pathToFileURL(process.env.OIDC_PROVIDER_MODULE).href);
const API = 'urn:certflow:api';

const PORT = Number(process.env.OP_PORT);
const ISSUER = `http://127.0.0.1:${PORT}`;
const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;

// People and their groups: the login name is the subject.
const GROUPS = {
  alice: ['certflow-admins', 'team-payments'],
  bob: ['certflow-operators', 'team-payments', 'team-search', 'unrelated'],
  // A viewer (the console browser test: no actions shown, posting them is refused).
  carol: ['certflow-viewers', 'team-payments'],
};

const provider = new Provider(ISSUER, {
  clients: [{
    client_id: 'console', client_secret: 'console-secret',
    grant_types: ['authorization_code'], response_types: ['code'],
    redirect_uris: [process.env.CONSOLE_REDIRECT_URI],
    post_logout_redirect_uris: [process.env.CONSOLE_POST_LOGOUT_URI],
  }, {
    // Automation with client-credentials JWT access tokens for the certflow API.
    client_id: 'automation-1', client_secret: 'automation-secret', grant_types: ['client_credentials'],
    response_types: [], redirect_uris: [], scope: 'certs:read certs:write',
  }, {
    client_id: 'stranger', client_secret: 'stranger-secret', grant_types: ['client_credentials'],
    response_types: [], redirect_uris: [], scope: 'certs:read',
  }],
  jwks: { keys: [{ ...rsa.export({ format: 'jwk' }), kid: 'rsa-1', use: 'sig', alg: 'RS256' }] },
  cookies: { keys: ['test-only'] },
  ttl: { IdToken: 300, AccessToken: 300, AuthorizationCode: 60 },
  pkce: { required: () => true },
  claims: { openid: ['sub'], groups: ['groups'] },
  // Scope-granted claims (groups) in the ID token of the code flow too.
  conformIdTokenClaims: false,
  findAccount: async (ctx, sub) => ({
    accountId: sub,
    claims: async () => ({ sub, groups: GROUPS[sub] || [] }),
  }),
  scopes: ['openid', 'groups', 'certs:read', 'certs:write'],
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
        return { scope: 'certs:read certs:write', audience: API, accessTokenTTL: 300, accessTokenFormat: 'jwt' };
      },
    },
  },
});

provider.listen(PORT, '127.0.0.1', () => console.log(`READY ${ISSUER}`));
