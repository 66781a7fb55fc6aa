// A real OpenID provider on loopback for the single sign-on tests: the `oidc-provider` package
// (OpenID Certified), its own login and consent pages, one confidential web client, accounts
// whose email is the login they type (verified). Usage:
//   node provider.mjs <port> <client_id> <client_secret> <redirect_uri>
// Prints `listening on http://localhost:<port>` once it serves.
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [port, clientId, clientSecret, redirect] = process.argv.slice(2);
const dir = path.resolve(process.env.BROWSER_NODE_DIR);
const { default: Provider } = await import(pathToFileURL(path.join(dir, 'node_modules/oidc-provider/lib/index.js')).href);

const issuer = `http://localhost:${port}`;
const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: [redirect],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  claims: { openid: ['sub'], email: ['email', 'email_verified'] },
  findAccount: (_ctx, id) => ({ accountId: id, claims: () => ({ sub: `user-${id}`, email: id, email_verified: true }) }),
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  cookies: { keys: ['soramai-test-only'] },
});
provider.listen(Number(port), '127.0.0.1', () => console.log(`listening on ${issuer}`));
