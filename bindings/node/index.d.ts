// Types of the `soramai` Node package. Results are the SDK's JSON shapes (snake_case fields).

export declare const DEFAULT_MODEL_ID: string

export type Scope = 'inference' | 'train' | 'rag' | 'admin'
export type Tier = 'free' | 'basic' | 'pro' | 'org' | 'enterprise'
export type FinishReason = 'stop' | 'length' | 'tool_calls'

export interface ChatMessage {
  role: 'system' | 'developer' | 'user' | 'assistant' | 'tool'
  content?: string
  /** An assistant turn's calls. */
  tool_calls?: ToolCall[]
  /** The call a tool message answers. */
  tool_call_id?: string
}

export interface GenerationOptions {
  max_tokens?: number
  temperature?: number
  top_p?: number
  seed?: number
  stop?: string[]
  /** Report each token's log-probability and this many alternatives (0..=20). */
  logprobs?: number
  /** Subtracted once from the logit of every token already generated (-2 to 2). */
  presence_penalty?: number
  /** Subtracted from a token's logit once per time it was generated (-2 to 2). */
  frequency_penalty?: number
  /** Token ids (as strings) mapped to biases added to their logits (-100 to 100). */
  logit_bias?: Record<string, number>
  /** Independent continuations of the prompt (1 to 16), prefilled once. */
  n?: number
  /** What the output must be, held token by token by a mask over the vocabulary. */
  response_format?: ResponseFormat
  /** Functions the model may call (chat only). */
  tools?: Tool[]
  tool_choice?: 'none' | 'auto' | 'required' | { type: 'function'; function: { name: string } }
  parallel_tool_calls?: boolean
}

export interface Tool {
  type: 'function'
  function: { name: string; description?: string; parameters?: object; strict?: boolean }
}

export interface ToolCall {
  id: string
  type: 'function'
  /** `arguments` is a JSON object, as text. */
  function: { name: string; arguments: string }
}

export type ResponseFormat =
  | { type: 'text' }
  | { type: 'json_object' }
  | { type: 'json_schema'; json_schema: { name: string; description?: string; schema?: object; strict?: boolean } }
  /** Extensions: text matching a regular expression (Rust regex syntax) or a Lark grammar. */
  | { type: 'regex'; pattern: string }
  | { type: 'lark'; grammar: string }

export interface Usage {
  prompt_tokens: number
  completion_tokens: number
  total_tokens: number
  /** `cached_tokens`: prompt tokens reused from the tenant's own prefix cache. */
  prompt_tokens_details: { cached_tokens: number }
}

export interface TopLogprob {
  token: string
  bytes: number[]
  logprob: number
}

export interface TokenLogprob extends TopLogprob {
  top_logprobs: TopLogprob[]
}

export interface DeltaEvent {
  type: 'delta'
  /** The choice this text belongs to (0 unless `n` > 1). */
  index: number
  text: string
  logprob: TokenLogprob | null
}

export interface DoneEvent {
  type: 'done'
  /** The first choice's. */
  finish_reason: FinishReason
  /** Every choice's, in choice order. */
  finish_reasons: FinishReason[]
  usage: Usage
}

export interface ToolCallsEvent {
  type: 'tool_calls'
  index: number
  calls: ToolCall[]
}

export type StreamEvent = DeltaEvent | ToolCallsEvent | DoneEvent

export interface Source {
  /** What the answer's `[n]` citations name. */
  number: number
  chunk_id: string
  doc_id: string
  title: string
}

export interface Choice {
  index: number
  text: string
  finish_reason: FinishReason
  logprobs: TokenLogprob[] | null
  tool_calls: ToolCall[]
}

export interface Completion {
  id: string
  model: string
  /** The first choice's text (and below, its finish reason and log-probabilities). */
  text: string
  finish_reason: FinishReason
  usage: Usage
  logprobs: TokenLogprob[] | null
  /** Every choice, the first included. */
  choices: Choice[]
  created: number
  /** A grounded chat's numbered sources. */
  sources?: Source[]
}

export interface Model {
  id: string
  created: number
  owned_by: string
}

export interface Embeddings {
  vectors: number[][]
  prompt_tokens: number
}

export interface CustomModel {
  id: string
  tenant: string
  name: string
  bytes: number
  sha256: string
  architecture: string
  created_at: number
}

export interface Dataset {
  id: string
  name: string
  bytes: number
  examples: number
  created_at: number
}

/** OpenAI's three are a number or `'auto'` (left out: `'auto'`, chosen from the dataset's size). */
export interface Hyperparameters {
  n_epochs?: number | 'auto'
  batch_size?: number | 'auto'
  learning_rate_multiplier?: number | 'auto'
  rank?: number
  alpha?: number
  target_modules?: string[]
  max_seq?: number
  seed?: number
  checkpoint_every?: number
}

export interface Job {
  id: string
  tenant: string
  spec: Record<string, unknown>
  pool: string
  state: 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled'
  progress: number
  attempts: number
  max_attempts: number
  cancel_requested: boolean
  result: ({ fine_tuned_model?: string } & Record<string, unknown>) | null
  error: string | null
  created_at: number
  finished_at: number | null
}

export interface JobEvent {
  seq: number
  at: number
  kind: string
  data: Record<string, unknown>
}

export interface Document {
  id: string
  title?: string
  text: string
  format?: 'text' | 'markdown' | 'html'
  metadata?: Record<string, string>
}

export interface Ingestion {
  documents: number
  chunks: number
}

export interface SearchOptions {
  top_k?: number
  filters?: Record<string, string>
  hybrid?: boolean
}

export interface Hit {
  chunk_id: string
  doc_id: string
  title: string
  heading: string
  text: string
  snippet: string
  score: number
  similarity: number | null
}

export interface ApiKey {
  id: string
  tenant: string
  name: string
  scopes: Scope[]
  pool: string | null
  created_at: number
  expires_at: number | null
  revoked_at: number | null
  replaced_by: string | null
  /** The break-glass access grant this key belongs to (an operator's short-lived key). */
  grant: string | null
}

export interface NewApiKey extends ApiKey {
  /** The secret, shown this once. */
  key: string
}

export interface AccessGrant {
  id: string
  tenant: string
  operator_tenant: string
  operator_key: string
  key_id: string
  reason: string
  scopes: Scope[]
  ttl_seconds: number
  status: 'pending' | 'active' | 'revoked' | 'expired'
  requested_at: number
  approved_at: number | null
  expires_at: number
  ended_at: number | null
  ended_by: string | null
}

export interface NewAccessGrant extends AccessGrant {
  /** The grant's short-lived key, shown this once. */
  key: string
}

export interface Tenant {
  id: string
  tier: Tier
  status: string
  store: string
  key_custody: string
  created_at: number
}

export interface UsageReport {
  requests: number
  input_tokens: number
  output_tokens: number
  balance: number
}

export declare class SoramaiError extends Error {
  readonly code: string
}
export declare class AuthenticationError extends SoramaiError {}
export declare class PermissionDeniedError extends SoramaiError {}
export declare class NotFoundError extends SoramaiError {}
export declare class ConflictError extends SoramaiError {}
export declare class InvalidRequestError extends SoramaiError {}
export declare class TooLargeError extends SoramaiError {}
export declare class ContextLengthError extends SoramaiError {}
export declare class InsufficientCreditsError extends SoramaiError {}
export declare class RateLimitError extends SoramaiError {}
export declare class UnavailableError extends SoramaiError {}
export declare class IntegrityError extends SoramaiError {}
export declare class InternalError extends SoramaiError {}

/** A request of OpenAI's Responses API, as `POST /v1/responses` takes it (see `soramai::responses`). */
export interface ResponseRequest {
  model: string
  /** A user message, or input items: messages, `function_call` and `function_call_output` items. */
  input: string | Record<string, unknown>[]
  instructions?: string
  previous_response_id?: string
  /** Keep it for retrieval and continuation (default true). */
  store?: boolean
  tools?: { type: 'function'; name: string; description?: string; parameters?: Record<string, unknown>; strict?: boolean }[]
  tool_choice?: 'none' | 'auto' | 'required' | { type: 'function'; name: string }
  parallel_tool_calls?: boolean
  text?: { format: { type: 'text' } | { type: 'json_object' } | { type: 'json_schema'; name: string; schema: Record<string, unknown>; strict?: boolean; description?: string } }
  max_output_tokens?: number
  temperature?: number
  top_p?: number
  metadata?: Record<string, string>
  truncation?: 'disabled'
}

/** A response, in OpenAI's shape (`output` holds a message or function calls). */
export interface ResponseObject {
  id: string
  object: 'response'
  status: 'in_progress' | 'completed' | 'incomplete'
  output: Record<string, unknown>[]
  usage: { input_tokens: number; output_tokens: number; total_tokens: number } | null
  [field: string]: unknown
}

/** A generation under way: `for await` its events, or `collect()` the rest. */
export declare class TokenStream implements AsyncIterable<StreamEvent> {
  readonly id: string
  /** A grounded chat's numbered sources; `null` for other generations. */
  readonly sources: Source[] | null
  next(): Promise<StreamEvent | null>
  [Symbol.asyncIterator](): AsyncGenerator<StreamEvent, void, undefined>
  /** The completion, or the response (`createResponse`). */
  collect(): Promise<Completion>
  close(): Promise<void>
}

type Streamed<O> = O & { stream: true }

/** One API key's view of the platform. */
export declare class Session {
  readonly tenant: string
  models(): Promise<Model[]>
  chat(model: string, messages: ChatMessage[], options: Streamed<GenerationOptions>): Promise<TokenStream>
  chat(model: string, messages: ChatMessage[], options?: GenerationOptions & { stream?: false }): Promise<Completion>
  complete(model: string, prompt: string, options: Streamed<GenerationOptions>): Promise<TokenStream>
  complete(model: string, prompt: string, options?: GenerationOptions & { stream?: false }): Promise<Completion>
  /** OpenAI's Responses API; with `stream: true`, a stream of its typed events. */
  createResponse(request: ResponseRequest & { stream: true }): Promise<TokenStream>
  createResponse(request: ResponseRequest & { stream?: false }): Promise<ResponseObject>
  response(id: string): Promise<ResponseObject>
  /** A stored response's input items, in the order given. */
  responseInputItems(id: string): Promise<Record<string, unknown>[]>
  deleteResponse(id: string): Promise<void>
  embed(model: string, inputs: string[]): Promise<Embeddings>
  /** Uploads the tenant's own GGUF (Pro and up) from a file, streamed. */
  uploadModel(name: string, path: string): Promise<CustomModel>
  customModels(): Promise<CustomModel[]>
  deleteModel(id: string): Promise<void>
  uploadDataset(name: string, data: Buffer | Uint8Array | string): Promise<Dataset>
  datasets(): Promise<Dataset[]>
  dataset(id: string): Promise<Dataset>
  downloadDataset(id: string): Promise<Buffer>
  deleteDataset(id: string): Promise<void>
  createFineTuningJob(
    trainingFile: string,
    model: string,
    options?: { suffix?: string; hyperparameters?: Hyperparameters },
  ): Promise<Job>
  fineTuningJobs(): Promise<Job[]>
  fineTuningJob(id: string): Promise<Job>
  fineTuningJobEvents(id: string): Promise<JobEvent[]>
  cancelFineTuningJob(id: string): Promise<Job>
  /** Resolves when the job ends or `timeout` seconds (default 600) pass. */
  waitFineTuningJob(id: string, options?: { timeout?: number }): Promise<Job>
  createCorpus(id: string): Promise<void>
  corpora(): Promise<string[]>
  deleteCorpus(id: string): Promise<void>
  addDocuments(corpus: string, documents: Document[]): Promise<Ingestion>
  /** Queues the documents as an ingestion job and returns it at once. */
  startIngestion(corpus: string, documents: Document[]): Promise<Job>
  ingestion(corpus: string, id: string): Promise<Job>
  ingestions(corpus: string): Promise<Job[]>
  cancelIngestion(corpus: string, id: string): Promise<Job>
  waitIngestion(corpus: string, id: string, options?: { timeout?: number }): Promise<Job>
  documents(corpus: string): Promise<string[]>
  deleteDocument(corpus: string, id: string): Promise<void>
  search(corpus: string, query: string, options?: SearchOptions): Promise<Hit[]>
  groundedChat(
    model: string,
    corpus: string,
    question: string,
    options: Streamed<GenerationOptions & { top_k?: number; hybrid?: boolean; cite?: boolean }>,
  ): Promise<TokenStream>
  groundedChat(
    model: string,
    corpus: string,
    question: string,
    options?: GenerationOptions & { top_k?: number; hybrid?: boolean; cite?: boolean; stream?: false },
  ): Promise<Completion>
  createApiKey(
    name: string,
    scopes: Scope[],
    options?: { tenant?: string; expires_in_seconds?: number },
  ): Promise<NewApiKey>
  apiKeys(): Promise<ApiKey[]>
  revokeApiKey(id: string): Promise<void>
  rotateApiKey(id: string, options?: { grace_seconds?: number }): Promise<NewApiKey>
  createTenant(id: string, tier?: Tier): Promise<Tenant>
  setTier(id: string, tier: Tier): Promise<Tenant>
  tenants(): Promise<Tenant[]>
  grantCredits(tenant: string, amount: number, reference: string): Promise<Record<string, unknown>>
  /** Access ends now; the data goes after `window_days` (1-30, default 30), or now with `immediate`. */
  closeTenant(id: string, options?: { immediate?: boolean; window_days?: number }): Promise<Record<string, unknown>>
  reopenTenant(id: string): Promise<void>
  /** Break-glass access to a tenant (platform admin); the answer carries the grant's key once. */
  requestAccessGrant(
    tenant: string,
    request: { reason: string; scopes: Scope[]; ttl_seconds?: number },
  ): Promise<NewAccessGrant>
  approveAccessGrant(id: string): Promise<AccessGrant>
  revokeAccessGrant(id: string): Promise<AccessGrant>
  accessGrants(): Promise<AccessGrant[]>
  auditLog(): Promise<Record<string, unknown>[]>
  verifyAudit(): Promise<{ records: number } & Record<string, unknown>>
  usage(options?: { since_ms?: number }): Promise<UsageReport>
}

export interface OpenOptions {
  /** A GGUF file registered as base model `model_id` when absent. */
  model?: string
  model_id?: string
  /** Job worker threads (default 1). */
  workers?: number
  /** Most requests in one forward pass (default 32). */
  max_batch?: number
  /** The metadata database: `sqlite` (default, in the data directory) or
   *  `postgres://user:password@host:5432/db` (shared by several nodes). */
  database?: string
  /** The blob store shared by several nodes: `file:///mnt/shared` or `s3://bucket`. */
  blob_store?: string
  /** Largest customer GGUF upload in bytes (default 16 GiB). */
  max_model_bytes?: number
  /** Most prompt tokens one forward pass prefills (default 128): long prompts run in chunks. */
  prefill_chunk?: number
  /** Bytes of each base model's per-tenant prefix cache (default 256 MiB; 0: off). */
  prefix_cache_bytes?: number
  /** The job runner command (default: this Node running the package's `runner.js`). */
  runner?: string[]
}

/** A platform on the embedded default: SQLite and encrypted local blobs in a data directory. */
export declare class Platform {
  static open(dataDir: string, options?: OpenOptions): Promise<Platform>
  /** The operator's first admin key, once; `null` afterwards. */
  bootstrap(): Promise<string | null>
  session(apiKey: string): Promise<Session>
  close(): Promise<void>
}

export declare function defaultRunner(): string[]
