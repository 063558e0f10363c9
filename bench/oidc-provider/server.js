// node-oidc-provider set up as the baseline of `bench/run tokens`: one static client that
// uses the client credentials grant with client_secret_basic, and ES256-signed JWT access
// tokens, the same kind of token that Valet issues.
//
// Usage: node server.js PORT
// The client is `bench-client`; its secret is read from OIDC_BENCH_CLIENT_SECRET. The server
// listens on 127.0.0.1:PORT only and stops on SIGTERM or SIGINT.

import { generateKeyPairSync } from 'node:crypto';
import process from 'node:process';

import Provider, { errors } from 'oidc-provider';

// CLIENT_ID, RESOURCE and TOKEN_TTL_SECONDS must match OIDC_CLIENT_ID, AUDIENCE and
// TOKEN_LIFETIME_SECONDS in bench/src/bin/tokens.rs, which gives Valet's client the same
// audience and token lifetime.
const CLIENT_ID = 'bench-client';
const SCOPES = 'orders:read orders:write';
// A resource indicator (RFC 8707) is an absolute URI. This one names the benchmark's API
// and is never contacted.
const RESOURCE = 'urn:valet:bench:orders';
const TOKEN_TTL_SECONDS = 3600;

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port < 1 || port > 65535) {
  console.error(`invalid port ${JSON.stringify(process.argv[2])}\nusage: node server.js PORT`);
  process.exit(2);
}
const clientSecret = process.env.OIDC_BENCH_CLIENT_SECRET;
if (!clientSecret) {
  console.error('missing OIDC_BENCH_CLIENT_SECRET: set it to the secret of the bench client');
  process.exit(2);
}

// A new P-256 signing key on every start, like the benchmark's fresh Valet store.
const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const signingKey = {
  ...privateKey.export({ format: 'jwk' }), kid: 'bench-es256', alg: 'ES256', use: 'sig',
};

// No adapter is configured, so oidc-provider warns that it uses its in-memory one. JWT access
// tokens are not stored, so this benchmark's requests never reach the adapter.
const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [{
    client_id: CLIENT_ID,
    client_secret: clientSecret,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
    // The client asks for no ID tokens, but its metadata must name an algorithm that the
    // key set can sign with, and the default is RS256.
    id_token_signed_response_alg: 'ES256',
    scope: SCOPES,
  }],
  jwks: { keys: [signingKey] },
  scopes: SCOPES.split(' '),
  ttl: { ClientCredentials: TOKEN_TTL_SECONDS },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    // With resource indicators on, every token is issued for a resource server, and the
    // resource server's settings choose the token format: here a JWT signed with ES256.
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      getResourceServerInfo: (ctx, resourceIndicator) => {
        if (resourceIndicator !== RESOURCE) {
          throw new errors.InvalidTarget();
        }
        return {
          scope: SCOPES,
          audience: RESOURCE,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
});

// oidc-provider returns a generic 500 for a fault, so the cause is logged here, once.
provider.on('server_error', (ctx, error) => {
  console.error(`server error on ${ctx.method} ${ctx.path}: ${error.stack}`);
});

const server = provider.listen(port, '127.0.0.1', () => {
  console.error(`oidc-provider listening on http://127.0.0.1:${port}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
