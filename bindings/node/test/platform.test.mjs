// The tenant / dataset / fine-tune / chat / RAG flow through the Node bindings, with the hostile
// cases: wrong keys, missing scopes, another tenant's resources, malformed arguments.
import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'

const require = createRequire(import.meta.url)
const soramai = require('../index.js')

const here = path.dirname(fileURLToPath(import.meta.url))
const repo = path.resolve(here, '..', '..', '..')
const DATASET = fs.readFileSync(path.join(repo, 'soramai-server', 'assets', 'quickstart.jsonl'))
const CANARY = 'CANARY-91c2-node-binding-never-on-disk'
const MODEL = soramai.DEFAULT_MODEL_ID

const modelPath = process.env.SORAMAI_TEST_MODEL ?? ''
const haveModel = modelPath !== '' && fs.existsSync(modelPath)
if (!haveModel && process.env.SORAMAI_REQUIRE_MODEL === '1') {
  throw new Error('SORAMAI_TEST_MODEL does not name the reference model')
}

function* filesUnder(dir) {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name)
    if (entry.isDirectory()) yield* filesUnder(p)
    else if (entry.isFile()) yield p
  }
}

describe('soramai through napi', { skip: haveModel ? false : 'the reference model is not here' }, () => {
  let data, platform, admin
  const t = {}
  let tuned

  before(async () => {
    data = fs.mkdtempSync(path.join(os.tmpdir(), 'soramai-node-'))
    platform = await soramai.Platform.open(data, { model: modelPath, workers: 1 })
    const adminKey = await platform.bootstrap()
    assert.match(adminKey, /^sk-/)
    assert.equal(await platform.bootstrap(), null, 'the bootstrap key is shown once')
    admin = await platform.session(adminKey)
    for (const [tenant, tier] of [['acme', 'basic'], ['globex', 'basic'], ['tiny', 'free']]) {
      await admin.createTenant(tenant, tier)
      await admin.grantCredits(tenant, 2_000_000, `${tenant}-trial`)
      const key = await admin.createApiKey('app', ['inference', 'train', 'rag', 'admin'], { tenant })
      assert.equal(key.tenant, tenant)
      t[tenant] = await platform.session(key.key)
    }
  })

  after(async () => {
    await platform?.close()
    if (data) fs.rmSync(data, { recursive: true, force: true })
  })

  test('a fine-tuning job trains the tenant its own model', async () => {
    const ds = await t.acme.uploadDataset('support.jsonl', DATASET)
    assert.equal(ds.name, 'support.jsonl')
    const job = await t.acme.createFineTuningJob(ds.id, MODEL, {
      suffix: 'support',
      hyperparameters: { n_epochs: 3, batch_size: 2, learning_rate_multiplier: 10, rank: 4, max_seq: 96 },
    })
    assert.equal(job.state, 'queued')
    const done = await t.acme.waitFineTuningJob(job.id, { timeout: 600 })
    assert.equal(done.state, 'succeeded', done.error ?? '')
    const kinds = new Set((await t.acme.fineTuningJobEvents(job.id)).map((e) => e.kind))
    assert.ok(kinds.has('progress') || kinds.has('metric'), [...kinds].join(','))
    tuned = done.result.fine_tuned_model
    assert.match(tuned, /^ft:/)
    assert.ok((await t.acme.models()).some((m) => m.id === tuned))
    assert.ok(!(await t.globex.models()).some((m) => m.id === tuned))
    await assert.rejects(t.globex.chat(tuned, [{ role: 'user', content: 'hi' }], { max_tokens: 4 }), (e) => {
      assert.ok(e instanceof soramai.NotFoundError)
      assert.equal(e.code, 'model_not_found')
      return true
    })
  })

  test('chat: plain and streaming agree', async () => {
    const messages = [{ role: 'user', content: 'How do I rotate an API key?' }]
    const opts = { max_tokens: 24, seed: 11, temperature: 0.7 }
    const whole = await t.acme.chat(tuned, messages, opts)
    assert.ok(whole.text.length > 0 && whole.usage.completion_tokens <= 24)
    const stream = await t.acme.chat(tuned, messages, { ...opts, stream: true })
    assert.ok(stream instanceof soramai.TokenStream)
    assert.match(stream.id, /^chatcmpl-/)
    const events = []
    for await (const ev of stream) events.push(ev)
    assert.equal(events.at(-1).type, 'done')
    const { prompt_tokens_details: cached, ...counts } = events.at(-1).usage
    const { prompt_tokens_details: _, ...wholeCounts } = whole.usage
    assert.deepEqual(counts, wholeCounts)
    // The same prompt again starts from the tenant's prefix cache: all but its last token.
    assert.equal(cached.cached_tokens, counts.prompt_tokens - 1)
    assert.equal(events.filter((e) => e.type === 'delta').map((e) => e.text).join(''), whole.text)
    assert.equal(await stream.next(), null, 'an ended stream stays ended')
  })

  test('leaving a stream early stops it and refunds', async () => {
    const before = (await t.acme.usage()).balance
    const stream = await t.acme.complete(MODEL, 'Count: one, two,', { max_tokens: 200, temperature: 0, stream: true })
    for await (const ev of stream) {
      assert.equal(ev.type, 'delta')
      break
    }
    const spent = before - (await t.acme.usage()).balance
    assert.ok(spent < 200, `spent ${spent} credits on a stream left after one token`)
  })

  test('completions with logprobs, and embeddings', async () => {
    const c = await t.acme.complete(MODEL, 'The capital of France is', { max_tokens: 3, temperature: 0, logprobs: 2 })
    assert.equal(c.logprobs.length, c.usage.completion_tokens)
    assert.ok(c.logprobs.every((lp) => lp.top_logprobs.length === 2))
    const e = await t.acme.embed(MODEL, ['a cat', 'a kitten'])
    assert.equal(e.vectors.length, 2)
    assert.ok(Math.abs(e.vectors[0].reduce((s, x) => s + x * x, 0) - 1) < 1e-3)
  })

  test('sampling penalties and logit bias cross the binding; out-of-range ones are refused', async () => {
    const bias = Object.fromEntries(Array.from({ length: 1024 }, (_, i) => [String(i), -100]))
    const c = await t.acme.complete(MODEL, 'The', {
      max_tokens: 2, temperature: 0, presence_penalty: 1, frequency_penalty: 0.5, logit_bias: bias,
    })
    assert.ok(c.usage.completion_tokens >= 1)
    for (const bad of [{ presence_penalty: 3 }, { logit_bias: { 1: 101 } }, { logit_bias: { 99999999: 1 } }]) {
      await assert.rejects(t.acme.complete(MODEL, 'The', { max_tokens: 1, ...bad }), soramai.InvalidRequestError)
    }
  })

  test('n choices share the prompt, each with its own seed', async () => {
    const c = await t.acme.complete(MODEL, 'Once upon a time', { max_tokens: 6, temperature: 1, seed: 3, n: 3 })
    assert.deepEqual(c.choices.map((ch) => ch.index), [0, 1, 2])
    assert.equal(c.text, c.choices[0].text)
    assert.ok(new Set(c.choices.map((ch) => ch.text)).size > 1)
    for (const bad of [0, 17]) {
      await assert.rejects(t.acme.complete(MODEL, 'The', { max_tokens: 1, n: bad }), soramai.InvalidRequestError)
    }
  })

  test('response_format holds the output to a schema or a pattern', async () => {
    const year = await t.acme.complete(MODEL, 'The year is', {
      max_tokens: 8, temperature: 1, seed: 2, response_format: { type: 'regex', pattern: ' [12][0-9]{3}' },
    })
    assert.match(year.text, /^ [12][0-9]{3}$/)
    const schema = { type: 'object', properties: { ok: { type: 'boolean' } }, required: ['ok'], additionalProperties: false }
    const c = await t.acme.chat(MODEL, [{ role: 'user', content: 'Are you ok?' }], {
      max_tokens: 16, response_format: { type: 'json_schema', json_schema: { name: 'ok', schema } },
    })
    assert.equal(typeof JSON.parse(c.text).ok, 'boolean')
  })

  test('responses are stored, streamed, chained and the tenant\'s own', async () => {
    const r = await t.acme.createResponse({ model: MODEL, input: 'Say hi.', max_output_tokens: 6, temperature: 0 })
    assert.equal(r.object, 'response')
    const text = r.output[0].content[0].text
    let streamed = ''; let last = null
    for await (const ev of await t.acme.createResponse({ model: MODEL, input: 'Say hi.', max_output_tokens: 6,
      temperature: 0, stream: true })) {
      if (ev.type === 'response.output_text.delta') streamed += ev.delta
      last = ev
    }
    assert.equal(streamed, text)
    assert.ok(['response.completed', 'response.incomplete'].includes(last.type))
    assert.deepEqual((await t.acme.response(r.id)).output, r.output)
    assert.deepEqual((await t.acme.responseInputItems(r.id)).map((i) => i.content[0].text), ['Say hi.'])
    await assert.rejects(t.globex.response(r.id), soramai.NotFoundError)
    await assert.rejects(t.acme.createResponse({ model: MODEL, input: 'x', background: true }), soramai.InvalidRequestError)
    await t.acme.deleteResponse(r.id)
    await assert.rejects(t.acme.response(r.id), soramai.NotFoundError)
  })

  test('the event loop runs while the engine works', async () => {
    let ticks = 0
    const timer = setInterval(() => ticks++, 1)
    const started = Date.now()
    await t.acme.complete(MODEL, 'Once upon a time', { max_tokens: 24, temperature: 0 })
    clearInterval(timer)
    const elapsed = Date.now() - started
    assert.ok(ticks >= Math.min(10, elapsed / 20), `${ticks} ticks in ${elapsed} ms`)
  })

  test('RAG and grounded chat', async () => {
    await t.acme.createCorpus('handbook')
    const report = await t.acme.addDocuments('handbook', [
      { id: 'keys', title: 'API keys', text: 'Rotate an API key with rotate; the old key works for the grace period.' },
      { id: 'billing', title: 'Billing', text: 'Credits are charged per token, prompt and completion alike.', format: 'markdown' },
    ])
    assert.equal(report.documents, 2)
    assert.deepEqual((await t.acme.documents('handbook')).sort(), ['billing', 'keys'])
    // The same as a job: queued at once, embedded and indexed by a worker's child process.
    const job = await t.acme.startIngestion('handbook', [{ id: 'leave', text: 'Everyone gets thirty days of paid leave.' }])
    assert.equal(job.spec.kind, 'ingest')
    const done = await t.acme.waitIngestion('handbook', job.id, { timeout: 300 })
    assert.equal(done.state, 'succeeded', JSON.stringify(done))
    assert.deepEqual((await t.acme.ingestions('handbook')).map((j) => j.id), [job.id])
    await assert.rejects(t.globex.ingestion('handbook', job.id), (e) => e instanceof soramai.NotFoundError)
    await assert.rejects(t.acme.cancelIngestion('handbook', job.id), (e) => e instanceof soramai.ConflictError)
    assert.deepEqual((await t.acme.documents('handbook')).sort(), ['billing', 'keys', 'leave'])
    const hits = await t.acme.search('handbook', 'rotate key', { top_k: 2 })
    assert.equal(hits[0].doc_id, 'keys')
    const answer = await t.acme.groundedChat(MODEL, 'handbook', 'How do I rotate a key?', { max_tokens: 16, seed: 1 })
    assert.ok(answer.text.length > 0 && answer.sources.length > 0)
    const stream = await t.acme.groundedChat(MODEL, 'handbook', 'How are credits charged?', { max_tokens: 8, stream: true, top_k: 1 })
    assert.equal(stream.sources.length, 1)
    let last
    for await (const ev of stream) last = ev
    assert.equal(last.type, 'done')
    await assert.rejects(t.globex.search('handbook', 'rotate'), soramai.NotFoundError)
    assert.deepEqual(await t.globex.corpora(), [])
    await assert.rejects(t.tiny.createCorpus('notes'), soramai.PermissionDeniedError)
  })

  test('keys, scopes and isolation', async () => {
    const reader = await t.acme.createApiKey('reader', ['inference'])
    const limited = await platform.session(reader.key)
    await assert.rejects(limited.uploadDataset('x.jsonl', DATASET), (e) => e instanceof soramai.PermissionDeniedError && e.code === 'permission_denied')
    await assert.rejects(t.acme.createTenant('intruder'), soramai.PermissionDeniedError)
    const ds = await t.acme.uploadDataset('private.jsonl', DATASET)
    await assert.rejects(t.globex.downloadDataset(ds.id), soramai.NotFoundError)
    assert.deepEqual(await t.acme.downloadDataset(ds.id), DATASET)
    await t.acme.revokeApiKey(reader.id)
    await assert.rejects(platform.session(reader.key), soramai.AuthenticationError)
    await assert.rejects(platform.session('sk-not-a-key'), soramai.AuthenticationError)
    const temp = await t.acme.createApiKey('temp', ['inference'])
    const rotated = await t.acme.rotateApiKey(temp.id)
    assert.equal((await platform.session(rotated.key)).tenant, 'acme')
    assert.ok((await t.acme.apiKeys()).every((k) => !('key' in k)), 'listed keys never hold secrets')
  })

  test('the operator reads nothing without a grant', async () => {
    const ds = await t.acme.uploadDataset('ops.jsonl', DATASET)
    await assert.rejects(admin.createApiKey('peek', ['train'], { tenant: 'acme' }), soramai.PermissionDeniedError)
    await assert.rejects(admin.downloadDataset(ds.id), soramai.NotFoundError)
    await assert.rejects(admin.requestAccessGrant('acme', { reason: '', scopes: ['train'] }), soramai.InvalidRequestError)
    await assert.rejects(
      admin.requestAccessGrant('acme', { reason: 'INC-1', scopes: ['train'], ttl_seconds: 3601 }),
      soramai.InvalidRequestError,
    )
    await assert.rejects(
      admin.requestAccessGrant('acme', { reason: 'INC-1', scopes: ['train'], extra: 1 }),
      soramai.InvalidRequestError,
    )
    const grant = await admin.requestAccessGrant('acme', { reason: 'INC-4 sync bug', scopes: ['train'], ttl_seconds: 300 })
    assert.equal(grant.status, 'active')
    const peek = await platform.session(grant.key)
    assert.deepEqual(await peek.downloadDataset(ds.id), DATASET)
    const listed = await t.acme.accessGrants()
    assert.equal(listed[0].id, grant.id)
    assert.equal(listed[0].reason, 'INC-4 sync bug')
    assert.equal((await t.acme.revokeAccessGrant(grant.id)).status, 'revoked')
    await assert.rejects(peek.downloadDataset(ds.id), soramai.AuthenticationError)
  })

  test('accounts close', async () => {
    await admin.createTenant('leaving', 'basic')
    const key = (await admin.createApiKey('app', ['admin'], { tenant: 'leaving' })).key
    const leaving = await platform.session(key)
    await assert.rejects(leaving.closeTenant('leaving', { window_days: 31 }), soramai.InvalidRequestError)
    const closure = await leaving.closeTenant('leaving', { window_days: 3 })
    assert.equal(closure.purge_at - closure.requested_at, 3 * 86_400_000)
    await assert.rejects(platform.session(key), soramai.AuthenticationError)
    await admin.reopenTenant('leaving')
    assert.equal((await admin.closeTenant('leaving', { immediate: true })).purged, true)
    assert.ok(!(await admin.tenants()).some((x) => x.id === 'leaving'))
  })

  test('malformed arguments are typed errors and change nothing', async () => {
    const before = (await t.acme.usage()).balance
    const hi = [{ role: 'user', content: 'hi' }]
    const bad = [
      () => t.acme.chat(MODEL, [{ role: 'wizard', content: 'hi' }]),
      () => t.acme.chat(MODEL, [{ content: 'no role' }]),
      () => t.acme.chat(MODEL, 'not a list'),
      () => t.acme.chat(MODEL, [], { max_tokens: 4 }),
      () => t.acme.chat(MODEL, hi, { temperature: 9 }),
      () => t.acme.chat(MODEL, hi, { bogus: 1 }),
      () => t.acme.chat(MODEL, hi, { max_tokens: -1 }),
      () => t.acme.chat(42, hi),
      () => t.acme.complete(MODEL, 'x'.repeat(50_000)),
      () => t.acme.createFineTuningJob('ds-unknown', MODEL, { hyperparameters: { rank: 0 } }),
      () => t.acme.createFineTuningJob('../../etc/passwd', MODEL),
      () => t.acme.addDocuments('handbook', [{ id: 'x' }]),
      () => t.acme.uploadDataset('bad.jsonl', Buffer.from([0xff, 0xfe, 0x20])),
      () => t.acme.uploadDataset('bad.jsonl', 12),
      () => t.acme.createTenant('x', 'platinum'),
      () => t.acme.search('handbook', 'q', { top_k: 'many' }),
    ]
    for (const call of bad) {
      await assert.rejects(call(), (e) => {
        assert.ok(e instanceof soramai.SoramaiError, String(e))
        assert.ok(!(e instanceof soramai.InternalError), e.message)
        assert.ok(e.code && e.message)
        return true
      })
    }
    assert.equal((await t.acme.usage()).balance, before, 'a refused request costs nothing')
  })

  test('bad storage URLs are typed errors', async () => {
    for (const options of [
      { database: 'mysql://root@localhost/db' },
      { blob_store: 'ftp://example.invalid/bucket' },
      { blob_store: 'file://relative/path' },
    ]) {
      await assert.rejects(soramai.Platform.open(path.join(data, 'refused'), options), soramai.InvalidRequestError)
    }
  })

  test('a canary prompt never reaches disk', async () => {
    await t.acme.chat(MODEL, [{ role: 'user', content: `Remember ${CANARY}` }], { max_tokens: 4 })
    await t.acme.complete(MODEL, `${CANARY} says`, { max_tokens: 4 })
    await t.acme.createResponse({ model: MODEL, input: `Remember ${CANARY}`, max_output_tokens: 4 })
    const needle = Buffer.from(CANARY)
    for (const file of filesUnder(data)) {
      assert.ok(!fs.readFileSync(file).includes(needle), `the canary is in ${file}`)
    }
  })

  test('usage and audit', async () => {
    assert.ok((await t.acme.usage()).balance < 2_000_000)
    assert.ok((await t.acme.verifyAudit()).records > 0)
    // Below Org the log shows the operator's access only (its changes, its grants and their use).
    const view = await t.acme.auditLog()
    for (const a of ['tenant.created', 'access_grant.requested', 'access_grant.request']) {
      assert.ok(view.some((r) => r.action === a), a)
    }
    assert.ok(view.every((r) => r.actor.startsWith('operator') || r.action.startsWith('access_grant.')))
    await admin.setTier('acme', 'org')
    const actions = new Set((await t.acme.auditLog()).map((r) => r.action))
    for (const a of ['dataset.uploaded', 'api_key.created', 'job.finished', 'corpus.created']) assert.ok(actions.has(a), a)
  })
})
