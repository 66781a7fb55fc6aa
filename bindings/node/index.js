'use strict'
/**
 * Soramai for Node: a private fine-tune-and-serve platform, embedded.
 *
 * Every method returns a Promise (the work runs off the JavaScript thread); token streams are
 * async iterators. Results are plain objects in the SDK's shapes (snake_case fields, as OpenAI's
 * API), the same the Python bindings return. Failures reject with a `SoramaiError` subclass whose
 * `code` names the case.
 */
const path = require('node:path')

const native = require(path.join(__dirname, 'soramai.node'))

const DEFAULT_MODEL_ID = 'smollm2'

class SoramaiError extends Error {
  constructor(message, code) {
    super(message)
    this.name = new.target.name
    this.code = code
  }
}
class AuthenticationError extends SoramaiError {}
class PermissionDeniedError extends SoramaiError {}
class NotFoundError extends SoramaiError {}
class ConflictError extends SoramaiError {}
class InvalidRequestError extends SoramaiError {}
class TooLargeError extends SoramaiError {}
class ContextLengthError extends SoramaiError {}
class InsufficientCreditsError extends SoramaiError {}
class RateLimitError extends SoramaiError {}
class UnavailableError extends SoramaiError {}
class IntegrityError extends SoramaiError {}
class InternalError extends SoramaiError {}

const errorClasses = {
  AuthenticationError,
  PermissionDeniedError,
  NotFoundError,
  ConflictError,
  InvalidRequestError,
  TooLargeError,
  ContextLengthError,
  InsufficientCreditsError,
  RateLimitError,
  UnavailableError,
  IntegrityError,
  InternalError,
}

/** The addon rejects with a JSON body; an argument of the wrong type fails in napi's own words. */
function translate(err) {
  if (err instanceof SoramaiError || !(err instanceof Error)) return err
  let body
  try {
    body = JSON.parse(err.message)
  } catch {
    return new InvalidRequestError(err.message, 'invalid_request')
  }
  if (!body || typeof body.kind !== 'string') return new InvalidRequestError(err.message, 'invalid_request')
  const Class = errorClasses[body.kind] || InternalError
  return new Class(body.message, body.code)
}

async function call(fn) {
  try {
    return await fn()
  } catch (err) {
    throw translate(err)
  }
}

function split(options, keys) {
  const picked = {}
  const rest = {}
  for (const [k, v] of Object.entries(options ?? {})) {
    if (v === undefined) continue
    if (keys.includes(k)) picked[k] = v
    else rest[k] = v
  }
  return [picked, rest]
}

/** A generation under way: `for await` its events, or `collect()` the rest. */
class TokenStream {
  #native
  #done = false

  constructor(nativeStream) {
    this.#native = nativeStream
  }

  /** The request id. */
  get id() {
    return this.#native.id
  }

  /** A grounded chat's numbered sources; `null` for other generations. */
  get sources() {
    return this.#native.sources ?? null
  }

  /** The next event, or `null` after the end. */
  async next() {
    const ev = await call(() => this.#native.next())
    if (ev === null) this.#done = true
    return ev
  }

  async *[Symbol.asyncIterator]() {
    try {
      for (;;) {
        const ev = await this.next()
        if (ev === null) return
        yield ev
      }
    } finally {
      // Leaving the loop early stops the generation and refunds the unused credits.
      if (!this.#done) await this.close()
    }
  }

  /** Runs the rest of the generation; the completion. */
  async collect() {
    this.#done = true
    const completion = await call(() => this.#native.collect())
    if (this.sources !== null) completion.sources = this.sources
    return completion
  }

  /** Stops the generation now. */
  async close() {
    this.#done = true
    await call(() => this.#native.close())
  }
}

async function generation(streamPromise, stream) {
  const s = new TokenStream(await call(() => streamPromise()))
  return stream ? s : s.collect()
}

/** One API key's view of the platform. */
class Session {
  #native

  constructor(nativeSession) {
    this.#native = nativeSession
  }

  /** The key's tenant. */
  get tenant() {
    return this.#native.tenant
  }

  models() {
    return call(() => this.#native.models())
  }

  chat(model, messages, options = {}) {
    const [{ stream = false }, rest] = split(options, ['stream'])
    return generation(() => this.#native.chat(model, messages, rest), stream)
  }

  complete(model, prompt, options = {}) {
    const [{ stream = false }, rest] = split(options, ['stream'])
    return generation(() => this.#native.complete(model, prompt, rest), stream)
  }

  /** OpenAI's Responses API: `request` as `POST /v1/responses` takes it; the response, or with
   * `stream: true` a stream of its typed events. */
  createResponse(request) {
    const [{ stream = false }, rest] = split(request, ['stream'])
    return generation(() => this.#native.createResponse(rest), stream)
  }

  /** A stored response of the tenant's. */
  response(id) {
    return call(() => this.#native.response(id))
  }

  /** A stored response's input items, in the order given. */
  responseInputItems(id) {
    return call(() => this.#native.responseInputItems(id))
  }

  /** Deletes a stored response of the tenant's. */
  deleteResponse(id) {
    return call(() => this.#native.deleteResponse(id))
  }

  embed(model, inputs) {
    return call(() => this.#native.embed(model, inputs))
  }

  uploadModel(name, path) {
    return call(() => this.#native.uploadModel(name, path))
  }

  customModels() {
    return call(() => this.#native.customModels())
  }

  deleteModel(id) {
    return call(() => this.#native.deleteModel(id))
  }

  uploadDataset(name, data) {
    const bytes = typeof data === 'string' ? Buffer.from(data) : data
    return call(() => this.#native.uploadDataset(name, bytes))
  }

  datasets() {
    return call(() => this.#native.datasets())
  }

  dataset(id) {
    return call(() => this.#native.dataset(id))
  }

  downloadDataset(id) {
    return call(() => this.#native.downloadDataset(id))
  }

  deleteDataset(id) {
    return call(() => this.#native.deleteDataset(id))
  }

  createFineTuningJob(trainingFile, model, options = {}) {
    return call(() => this.#native.createFineTuningJob({ training_file: trainingFile, model, ...options }))
  }

  fineTuningJobs() {
    return call(() => this.#native.fineTuningJobs())
  }

  fineTuningJob(id) {
    return call(() => this.#native.fineTuningJob(id))
  }

  fineTuningJobEvents(id) {
    return call(() => this.#native.fineTuningJobEvents(id))
  }

  cancelFineTuningJob(id) {
    return call(() => this.#native.cancelFineTuningJob(id))
  }

  waitFineTuningJob(id, { timeout = 600 } = {}) {
    return call(() => this.#native.waitFineTuningJob(id, timeout))
  }

  createCorpus(id) {
    return call(() => this.#native.createCorpus(id))
  }

  corpora() {
    return call(() => this.#native.corpora())
  }

  deleteCorpus(id) {
    return call(() => this.#native.deleteCorpus(id))
  }

  addDocuments(corpus, documents) {
    return call(() => this.#native.addDocuments(corpus, documents))
  }

  startIngestion(corpus, documents) {
    return call(() => this.#native.startIngestion(corpus, documents))
  }

  ingestion(corpus, id) {
    return call(() => this.#native.ingestion(corpus, id))
  }

  ingestions(corpus) {
    return call(() => this.#native.ingestions(corpus))
  }

  cancelIngestion(corpus, id) {
    return call(() => this.#native.cancelIngestion(corpus, id))
  }

  waitIngestion(corpus, id, { timeout = 600 } = {}) {
    return call(() => this.#native.waitIngestion(corpus, id, timeout))
  }

  documents(corpus) {
    return call(() => this.#native.documents(corpus))
  }

  deleteDocument(corpus, id) {
    return call(() => this.#native.deleteDocument(corpus, id))
  }

  search(corpus, query, options = {}) {
    return call(() => this.#native.search(corpus, { ...options, query }))
  }

  groundedChat(model, corpus, question, options = {}) {
    const [{ stream = false, ...retrieval }, rest] = split(options, ['stream', 'top_k', 'hybrid', 'cite'])
    return generation(() => this.#native.groundedChat(model, corpus, question, retrieval, rest), stream)
  }

  createApiKey(name, scopes, options = {}) {
    return call(() => this.#native.createApiKey({ ...options, name, scopes }))
  }

  apiKeys() {
    return call(() => this.#native.apiKeys())
  }

  revokeApiKey(id) {
    return call(() => this.#native.revokeApiKey(id))
  }

  rotateApiKey(id, { grace_seconds: grace = 0 } = {}) {
    return call(() => this.#native.rotateApiKey(id, grace))
  }

  createTenant(id, tier = 'basic') {
    return call(() => this.#native.createTenant(id, tier))
  }

  setTier(id, tier) {
    return call(() => this.#native.setTier(id, tier))
  }

  tenants() {
    return call(() => this.#native.tenants())
  }

  grantCredits(tenant, amount, reference) {
    return call(() => this.#native.grantCredits(tenant, amount, reference))
  }

  closeTenant(id, options = {}) {
    return call(() => this.#native.closeTenant(id, options.immediate ?? false, options.window_days))
  }

  reopenTenant(id) {
    return call(() => this.#native.reopenTenant(id))
  }

  requestAccessGrant(tenant, request) {
    return call(() => this.#native.requestAccessGrant(tenant, request))
  }

  approveAccessGrant(id) {
    return call(() => this.#native.approveAccessGrant(id))
  }

  revokeAccessGrant(id) {
    return call(() => this.#native.revokeAccessGrant(id))
  }

  accessGrants() {
    return call(() => this.#native.accessGrants())
  }

  auditLog() {
    return call(() => this.#native.auditLog())
  }

  verifyAudit() {
    return call(() => this.#native.verifyAudit())
  }

  usage({ since_ms: since = 0 } = {}) {
    return call(() => this.#native.usage(since))
  }
}

/** The job runner command: this Node running the package's own `runner.js`. */
function defaultRunner() {
  return [process.execPath, path.join(__dirname, 'runner.js'), 'job-runner']
}

/** A platform on the embedded default: SQLite and encrypted local blobs in a data directory. */
class Platform {
  #native

  constructor(nativePlatform) {
    this.#native = nativePlatform
  }

  /**
   * Opens (or creates) a platform. `model` (a GGUF path) is registered as base model `model_id`
   * (default `smollm2`) when absent; `workers` job workers run fine-tuning jobs in child
   * processes started with `runner` (by default this Node running `runner.js`).
   */
  static async open(dataDir, options = {}) {
    const [{ runner = defaultRunner() }, rest] = split(options, ['runner'])
    return new Platform(await call(() => native.open(dataDir, rest, runner)))
  }

  /** The operator's first admin key, once; `null` afterwards. */
  bootstrap() {
    return call(() => this.#native.bootstrap())
  }

  /** A session for an API key. */
  async session(apiKey) {
    return new Session(await call(() => this.#native.session(apiKey)))
  }

  /** Stops the job workers (a running job finishes first). */
  close() {
    return call(() => this.#native.close())
  }
}

module.exports = {
  DEFAULT_MODEL_ID,
  Platform,
  Session,
  TokenStream,
  SoramaiError,
  defaultRunner,
  ...errorClasses,
}
