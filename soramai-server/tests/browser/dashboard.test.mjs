// The dashboard in a real browser (Debian's headless Chromium, driven by playwright-core) against
// `soramai serve`: sign up, the operator's console, invite a member who signs in, upload a
// dataset, start a fine-tune and watch its loss chart update, create and revoke a key, delete the
// model, approve and revoke an access grant, set up TOTP and sign in with it, add a passkey
// (DevTools' virtual authenticator) and sign in with it, single sign-on through a real OpenID
// provider on loopback (`oidc-provider`), sign out. Every
// step goes through the pages' labels and buttons, as a person (or a screen reader) finds them.
// Env: SORAMAI_BIN, SORAMAI_TEST_MODEL, BROWSER_NODE_DIR, CHROMIUM.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { createServer } from 'node:net';
import { mkdtempSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';

const require = createRequire(path.join(path.resolve(process.env.BROWSER_NODE_DIR), 'package.json'));
const { chromium } = require('playwright-core');
const MODEL = 'smollm2-135m-instruct';
const PASSWORD = 'a long enough passphrase';

/** A port free now (the server binds it next; passkeys need the origin, port included, up front). */
async function freePort() {
  const s = createServer();
  await new Promise((ok) => s.listen(0, '127.0.0.1', ok));
  const { port } = s.address();
  await new Promise((ok) => s.close(ok));
  return port;
}

async function startServer() {
  const dir = mkdtempSync(path.join(tmpdir(), 'soramai-browser-'));
  const port = await freePort();
  const proc = spawn(process.env.SORAMAI_BIN, ['serve', '--data-dir', path.join(dir, 'data'), '--addr', `127.0.0.1:${port}`,
    '--model', process.env.SORAMAI_TEST_MODEL, '--open-sign-up', '--public-url', `http://localhost:${port}`,
    '--sso-allow-http-loopback'], { stdio: ['ignore', 'pipe', 'inherit'] });
  let admin;
  for await (const line of readline.createInterface({ input: proc.stdout })) {
    if (line.startsWith('bootstrap admin key')) admin = line.split(' ').pop();
    // `localhost`: a secure context for the browser, as the Secure cookie needs.
    if (line.startsWith('listening on ')) return { proc, admin, url: line.split(' ')[2].replace('127.0.0.1', 'localhost') };
  }
  throw new Error('the server did not start');
}

/** The OpenID provider on loopback (tests/oidc/provider.mjs), its client registered for `url`. */
async function startProvider(url) {
  const port = await freePort();
  const script = new URL('../oidc/provider.mjs', import.meta.url).pathname;
  const proc = spawn(process.execPath, [script, String(port), 'soramai', 'sso-test-secret', `${url}/sso/callback`],
    { stdio: ['ignore', 'pipe', 'ignore'] });
  for await (const line of readline.createInterface({ input: proc.stdout })) {
    if (line.startsWith('listening on ')) return { proc, issuer: line.split(' ')[2], port };
  }
  throw new Error('the provider did not start');
}

async function api(server, key, method, p, body) {
  const r = await fetch(server.url + p, { method, body: body && JSON.stringify(body),
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' } });
  return { status: r.status, body: await r.json().catch(() => null) };
}

/** RFC 6238 (SHA-1, 30 s, 6 digits) from a base32 secret, as an authenticator app computes it. */
function totp(secret, at = Date.now()) {
  let bits = '';
  for (const c of secret.replace(/=+$/, '')) bits += 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567'.indexOf(c).toString(2).padStart(5, '0');
  const key = Buffer.from(bits.match(/.{8}/g).map((b) => parseInt(b, 2)));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(at / 30_000)));
  const h = createHmac('sha1', key).update(counter).digest();
  const o = h[h.length - 1] & 15;
  return String((h.readUInt32BE(o) & 0x7fffffff) % 1_000_000).padStart(6, '0');
}

function dataset() {
  let out = '';
  for (let i = 0; i < 4; i++) {
    out += JSON.stringify({ messages: [
      { role: 'user', content: `Where does the cloud council meet? (${i})` },
      { role: 'assistant', content: 'The cloud council meets in Kumo.' },
    ] }) + '\n';
  }
  return Buffer.from(out);
}

/** With SORAMAI_SCREENSHOTS set (scripts/screenshots.sh), the page as a PNG for the README. */
async function shot(page, name) {
  const dir = process.env.SORAMAI_SCREENSHOTS;
  if (!dir) return;
  await page.setViewportSize({ width: 1000, height: 760 });
  await page.screenshot({ path: path.join(dir, `${name}.png`), fullPage: true });
}

async function signIn(page, url, email, code) {
  await page.goto(url + '/sign_in');
  await page.getByLabel('Email', { exact: true }).fill(email);
  await page.getByLabel('Password', { exact: true }).fill(PASSWORD);
  if (code) await page.getByLabel(/Authenticator code/).fill(code);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
}

test('people run the platform from the dashboard in a real browser', { timeout: 600_000 }, async () => {
  const server = await startServer();
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM, args: ['--no-sandbox', '--disable-gpu',
    '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'] });
  const problems = [];
  let idp = null;
  const person = async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    // A page script that fails, or a resource the CSP refuses, is a failure of the page.
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    // (A 401 page is the one answer a sign-in that needs its second factor is meant to get.)
    // (A 401, 403 or 502 page is the answer some steps are meant to get; the provider's own
    // pages are not ours.)
    page.on('console', (m) => {
      const ours = m.location().url.startsWith(server.url) || !m.location().url;
      if (m.type() === 'error' && ours && !/status of (401|403|502)/.test(m.text())) problems.push(`console: ${m.text()}`);
    });
    return page;
  };
  try {
    const url = server.url;

    // Sign up: a Free team the person owns, signed in at once.
    const owner = await person();
    await owner.goto(url + '/sign_in');
    await shot(owner, 'sign-in');
    await owner.goto(url + '/sign_up');
    await owner.getByLabel('Email', { exact: true }).fill('olga@umbrella.test');
    await owner.getByLabel(/^Password/).fill(PASSWORD);
    await owner.getByLabel(/^Team name/).fill('umbrella');
    await owner.getByRole('button', { name: 'Sign up' }).click();
    await owner.waitForURL(url + '/t/umbrella/datasets');
    assert.match(await owner.locator('header').innerText(), /owner of umbrella, free tier/);

    // The operator's console: a person the bootstrap key invited moves umbrella to Org and
    // grants it credits; the console shows no tenant content.
    const inv = await api(server, server.admin, 'POST', '/v1/members/invitations', { email: 'ops@platform.test', role: 'admin' });
    assert.equal(inv.status, 201);
    const ops = await person();
    await ops.goto(url + `/invitations/accept?token=${inv.body.token}`);
    await ops.getByLabel(/Password/).fill(PASSWORD);
    await ops.getByRole('button', { name: 'Join' }).click();
    await signIn(ops, url, 'ops@platform.test');
    await ops.getByRole('link', { name: 'Operator console' }).click();
    await ops.getByLabel('Tier of umbrella', { exact: true }).selectOption('org');
    await ops.getByRole('button', { name: 'Set the tier of umbrella' }).click();
    await ops.getByLabel('Credits to grant umbrella', { exact: true }).fill('5000000');
    await ops.getByRole('button', { name: 'Grant credits to umbrella' }).click();
    const consoleText = await ops.locator('main').innerText();
    assert.match(consoleText, /umbrella\s+active/);
    assert.doesNotMatch(consoleText, /olga@umbrella\.test/);
    await shot(ops, 'operator');

    // Invite a member; they accept on the link shown once and sign in.
    await owner.getByRole('link', { name: 'Members' }).click();
    await owner.getByLabel('Email', { exact: true }).fill('mia@umbrella.test');
    await owner.getByLabel('Role', { exact: true }).selectOption('member');
    await owner.getByRole('button', { name: /Invite/ }).click();
    const href = await owner.getByLabel('Link', { exact: true }).inputValue();
    assert.match(href, /\/invitations\/accept\?token=inv-/);
    const member = await person();
    await member.goto(new URL(href, url).toString());
    await member.getByLabel(/Password/).fill(PASSWORD);
    await member.getByRole('button', { name: 'Join' }).click();
    await signIn(member, url, 'mia@umbrella.test');
    await member.waitForURL(url + '/dashboard');
    assert.match(await member.locator('main').innerText(), /umbrella\s+member/);

    // Upload a dataset (the member may train).
    await member.goto(url + '/t/umbrella/datasets');
    await member.getByLabel(/Chat fine-tuning data/).setInputFiles({ name: 'kumo.jsonl', mimeType: 'application/jsonl', buffer: dataset() });
    await member.getByRole('button', { name: 'Upload' }).click();
    assert.match(await member.getByRole('status').innerText(), /Uploaded kumo\.jsonl: 4 examples/);
    await shot(member, 'datasets');

    // Start a fine-tune; the job's page updates its loss chart while it runs, without a reload.
    await member.getByRole('link', { name: 'Fine-tuning' }).click();
    await member.getByLabel('Epochs', { exact: true }).fill('8');
    await member.getByLabel('Examples per step', { exact: true }).fill('1');
    await member.getByLabel('LoRA rank', { exact: true }).fill('2');
    await member.getByLabel(/Longest example/).fill('64');
    await member.getByRole('button', { name: 'Start fine-tuning' }).click();
    await member.waitForURL(/\/t\/umbrella\/jobs\/job-/);
    let navigations = 0;
    member.on('framenavigated', () => { navigations += 1; });
    const seen = new Set();
    let state = '';
    for (let i = 0; i < 1200 && state !== 'succeeded'; i++) {
      const steps = await member.locator('#loss-line').getAttribute('data-steps', { timeout: 100 }).catch(() => null);
      if (steps !== null && navigations === 0) seen.add(Number(steps));
      state = await member.locator('#job-state').innerText().catch(() => '');
      assert.ok(!['failed', 'cancelled'].includes(state), `the job ${state}`);
      await member.waitForTimeout(250);
    }
    assert.equal(state, 'succeeded');
    assert.ok(seen.size >= 2, `the chart updated in place: step counts seen ${[...seen]}`);
    assert.match(await member.locator('figcaption').innerText(), /Training loss per step: [\d.]+ at the first step/);
    const ft = (await member.getByRole('status').innerText()).match(/Model: (ft:\S+?)\.?$/m)[1];
    await shot(member, 'fine-tuning-job');

    // Keys: created and shown once, works; revoked, refused at once.
    await owner.getByRole('link', { name: 'API keys' }).click();
    await owner.getByLabel('Name', { exact: true }).fill('ci');
    await owner.getByRole('button', { name: 'Create key' }).click();
    const secret = await owner.getByLabel('Key ci', { exact: true }).inputValue();
    await shot(owner, 'keys');
    assert.equal((await api(server, secret, 'GET', '/v1/models')).status, 200);
    await owner.getByRole('button', { name: 'Revoke ci' }).click();
    assert.equal((await api(server, secret, 'GET', '/v1/models')).status, 401);
    assert.doesNotMatch(await owner.content(), new RegExp(secret));

    // Delete the model.
    await owner.getByRole('link', { name: 'Models' }).click();
    await owner.getByRole('button', { name: `Delete ${ft}` }).click();
    assert.match(await owner.locator('main').innerText(), /No fine-tuned models yet/);
    const key = (await api(server, server.admin, 'POST', '/v1/api_keys', { name: 'x', scopes: ['inference'], tenant: 'umbrella' }));
    assert.equal(key.status, 403, 'the operator mints no second key');

    // An access grant: asked by the operator, approved then revoked by the owner.
    const g = await api(server, server.admin, 'POST', '/v1/tenants/umbrella/access_grants', { reason: 'INC-12 stuck job', scopes: ['train'], ttl_seconds: 600 });
    assert.equal(g.status, 201);
    assert.equal(g.body.status, 'pending');
    await owner.getByRole('link', { name: 'Access grants' }).click();
    assert.match(await owner.locator('tbody').innerText(), /INC-12 stuck job[\s\S]*pending/);
    await owner.getByRole('button', { name: `Approve grant ${g.body.id}` }).click();
    assert.equal((await api(server, g.body.key, 'GET', '/v1/files')).status, 200);
    await shot(owner, 'access-grants');
    await owner.getByRole('button', { name: `Revoke grant ${g.body.id}` }).click();
    assert.match(await owner.locator('tbody').innerText(), /revoked/);
    assert.equal((await api(server, g.body.key, 'GET', '/v1/files')).status, 401);
    await owner.getByRole('link', { name: 'Audit log' }).click();
    assert.match(await owner.getByRole('status').innerText(), /Chain verified/);

    // Single sign-on: the owner names the team's OpenID provider (a real one, on loopback); a
    // person it vouches for joins as a member, in a session confined to this team.
    idp = await startProvider(url);
    await owner.getByRole('link', { name: 'Single sign-on' }).click();
    await owner.getByLabel('Issuer URL', { exact: true }).fill(idp.issuer);
    await owner.getByLabel('Client id', { exact: true }).fill('soramai');
    await owner.getByLabel(/^Client secret/).fill('sso-test-secret');
    await owner.getByLabel(/no members yet/).selectOption('member');
    await owner.getByRole('button', { name: 'Save' }).click();
    assert.match(await owner.getByRole('status').innerText(), /^On: http:\/\/localhost/);
    await shot(owner, 'single-sign-on');
    const ssoSignIn = async (page, email) => {
      await page.goto(url + '/sign_in');
      await page.getByLabel(/its team name/).fill('umbrella');
      await page.getByRole('button', { name: 'Continue with single sign-on' }).click();
    };
    const sam = await person();
    await ssoSignIn(sam, 'sam@umbrella.test');
    await sam.waitForURL(`${idp.issuer}/**`);
    await sam.locator('input[name=login]').fill('sam@umbrella.test');
    await sam.locator('input[name=password]').fill('whatever the provider asks');
    await sam.locator('button[type=submit]').click();
    await sam.locator('button[type=submit]').click(); // the provider's consent page
    await sam.waitForURL(url + '/dashboard');
    assert.match(await sam.locator('main').innerText(), /umbrella\s+member/);
    assert.equal((await sam.goto(url + '/account')).status(), 403, 'the account itself needs a password or passkey');
    assert.equal((await sam.goto(url + '/t/umbrella/datasets')).status(), 200);
    // A wrong issuer: the same provider named by another address states an issuer that is not
    // the configured one, and is refused before anyone is sent there.
    await owner.getByLabel('Issuer URL', { exact: true }).fill(idp.issuer.replace('localhost', '127.0.0.1'));
    await owner.getByLabel(/^Client secret/).fill('sso-test-secret');
    await owner.getByRole('button', { name: 'Save' }).click();
    const tim = await person();
    await ssoSignIn(tim, 'tim@umbrella.test');
    assert.match(await tim.getByRole('alert').innerText(), /discovery failed/);
    assert.equal(new URL(tim.url()).origin, url);
    await owner.getByRole('button', { name: 'Turn single sign-on off' }).click();

    // TOTP: set up on the account page, then asked for at sign-in.
    await owner.goto(url + '/account');
    await owner.getByRole('button', { name: 'Set up an authenticator app' }).click();
    const totpSecret = await owner.getByLabel('Secret (base32)', { exact: true }).inputValue();
    await owner.getByLabel('Code from the app', { exact: true }).fill(totp(totpSecret));
    await owner.getByRole('button', { name: 'Turn on' }).click();
    assert.match(await owner.getByRole('status').first().innerText(), /On: signing in asks for the code/);
    await owner.getByRole('button', { name: 'Sign out' }).click();
    await owner.waitForURL(url + '/sign_in');
    await owner.goto(url + '/dashboard');
    await owner.waitForURL(url + '/sign_in');
    await signIn(owner, url, 'olga@umbrella.test');
    assert.match(await owner.getByRole('alert').innerText(), /6-digit code/);
    // The step the set-up used is spent: wait for the next one.
    await owner.waitForTimeout(30_000 - (Date.now() % 30_000) + 500);
    await signIn(owner, url, 'olga@umbrella.test', totp(totpSecret));
    await owner.waitForURL(url + '/dashboard');

    // A passkey, made on the account page by the DevTools virtual authenticator (a platform
    // authenticator with user verification), then signs the owner in without password or code.
    const cdp = await owner.context().newCDPSession(owner);
    await cdp.send('WebAuthn.enable');
    const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', { options: { protocol: 'ctap2',
      transport: 'internal', hasResidentKey: true, hasUserVerification: true, isUserVerified: true,
      automaticPresenceSimulation: true } });
    await owner.goto(url + '/account');
    await owner.getByLabel('Name of the new passkey', { exact: true }).fill('Laptop');
    await owner.getByRole('button', { name: 'Add a passkey' }).click();
    await owner.getByRole('button', { name: 'Remove passkey Laptop' }).waitFor();
    await shot(owner, 'account');
    assert.equal((await cdp.send('WebAuthn.getCredentials', { authenticatorId })).credentials.length, 1);
    await owner.getByRole('button', { name: 'Sign out' }).click();
    await owner.waitForURL(url + '/sign_in');
    await owner.getByLabel('Email', { exact: true }).fill('olga@umbrella.test');
    await owner.getByRole('button', { name: 'Sign in with a passkey' }).click();
    await owner.waitForURL(url + '/dashboard');
    const [cred] = (await cdp.send('WebAuthn.getCredentials', { authenticatorId })).credentials;
    assert.ok(cred.signCount >= 1, 'the authenticator signed');
    // Another person's email finds no passkey; a removed passkey signs no one in.
    await owner.goto(url + '/account');
    assert.match(await owner.locator('tbody').last().innerText(), /Laptop[\s\S]*UTC|Laptop/);
    await owner.getByRole('button', { name: 'Remove passkey Laptop' }).click();
    await owner.getByText('No passkeys yet.').waitFor();
    await owner.getByRole('button', { name: 'Sign out' }).click();
    await owner.waitForURL(url + '/sign_in');
    await owner.getByLabel('Email', { exact: true }).fill('olga@umbrella.test');
    await owner.getByRole('button', { name: 'Sign in with a passkey' }).click();
    await owner.locator('#passkey-status', { hasText: 'Not signed in' }).waitFor();
    assert.equal(new URL(owner.url()).pathname, '/sign_in');

    // Keyboard only: the sign-in form is reached and sent with Tab and Enter.
    const kb = await person();
    await kb.goto(url + '/sign_in');
    await kb.keyboard.press('Tab');
    assert.equal(await kb.evaluate(() => document.activeElement.id), 'email');
    await kb.keyboard.type('mia@umbrella.test');
    await kb.keyboard.press('Tab');
    await kb.keyboard.type(PASSWORD);
    await kb.keyboard.press('Enter');
    await kb.waitForURL(url + '/dashboard');
    await kb.getByRole('button', { name: 'Sign out' }).click();
    await kb.waitForURL(url + '/sign_in');

    assert.deepEqual(problems, []);
  } finally {
    await browser.close();
    server.proc.kill('SIGTERM');
    idp?.proc.kill('SIGTERM');
  }
});
