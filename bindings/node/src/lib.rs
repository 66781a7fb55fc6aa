//! The native half of the `soramai` Node package (napi-rs).
//!
//! Every behaviour lives in the SDK ([`soramai::Session`]); this addon only translates. Values
//! cross as JSON (the SDK's own serde shapes, the same the Python bindings return), arguments are
//! validated by the SDK with unknown fields refused, and every call runs off the JavaScript thread:
//! storage and engine work on tokio's blocking pool, token streams awaited on its runtime. A
//! failure rejects with an `Error` whose message is a JSON object (`kind`, `code`, `message`)
//! that `index.js` turns into the matching `SoramaiError` subclass.
// The FFI glue `#[napi]` generates is unsafe (and allows itself); code written here is not.
#![deny(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use napi::bindgen_prelude::Buffer;
use napi::tokio::sync::Mutex;
use napi_derive::napi;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use soramai::{
    GenerationOptions, GenerationStream, NewKey, OpenOptions, PlatformError, ResponseRequest, ResponseStream,
    RunnerCommand, Session,
};

fn reject(kind: &str, code: &str, message: &str) -> napi::Error {
    let body = serde_json::json!({"kind": kind, "code": code, "message": message});
    napi::Error::from_reason(body.to_string())
}

fn platform_error(e: &PlatformError) -> napi::Error {
    reject(e.kind().exception_name(), &e.code(), &e.to_string())
}

fn invalid(message: &str) -> napi::Error {
    reject("InvalidRequestError", "invalid_request", message)
}

fn to_json<T: Serialize>(value: &T) -> napi::Result<Value> {
    serde_json::to_value(value).map_err(|e| reject("InternalError", "internal_error", &e.to_string()))
}

/// A JavaScript value (as JSON) in the SDK's shape; `what` names it in the error.
fn parse<T: DeserializeOwned>(value: Value, what: &str) -> napi::Result<T> {
    serde_json::from_value(value).map_err(|e| invalid(&format!("{what}: {}", soramai::json_error_message(&e))))
}

/// Options that may be left out (`undefined` or `null`).
fn parse_options<T: DeserializeOwned + Default>(value: Option<Value>, what: &str) -> napi::Result<T> {
    match value {
        None | Some(Value::Null) => Ok(T::default()),
        Some(v) => parse(v, what),
    }
}

/// Runs SDK work on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, PlatformError> + Send + 'static) -> napi::Result<T> {
    match napi::tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| platform_error(&e)),
        Err(e) => Err(reject("InternalError", "internal_error", &e.to_string())),
    }
}

/// Runs SDK work on the blocking pool and returns its result as JSON.
async fn json<T: Serialize + Send + 'static>(
    f: impl FnOnce() -> Result<T, PlatformError> + Send + 'static,
) -> napi::Result<Value> {
    to_json(&blocking(f).await?)
}

/// A platform on the embedded default.
#[napi]
#[derive(Debug)]
pub struct NativePlatform {
    inner: Arc<soramai::Platform>,
}

/// Opens (or creates) a platform in `data_dir`; `options` as `OpenOptions` (`model`, `model_id`,
/// `workers`, `max_batch`); `runner` is the job runner command.
#[napi]
pub async fn open(data_dir: String, options: Option<Value>, runner: Vec<String>) -> napi::Result<NativePlatform> {
    let options: OpenOptions = parse_options(options, "options")?;
    let (program, args) = runner.split_first().ok_or_else(|| invalid("runner names a program"))?;
    let runner = RunnerCommand { args: args.to_vec(), ..RunnerCommand::new(program) };
    let inner = blocking(move || soramai::Platform::open_with(&data_dir, &options, Some(runner))).await?;
    Ok(NativePlatform { inner })
}

#[napi]
impl NativePlatform {
    /// The operator's first admin key, once; `null` afterwards.
    #[napi]
    pub async fn bootstrap(&self) -> napi::Result<Option<String>> {
        let p = self.inner.clone();
        let key = blocking(move || p.bootstrap_operator()).await?;
        Ok(key.map(|k| k.secret().to_owned()))
    }

    /// A session for an API key.
    #[napi]
    pub async fn session(&self, api_key: String) -> napi::Result<NativeSession> {
        let p = self.inner.clone();
        Ok(NativeSession { inner: blocking(move || p.session(&api_key)).await? })
    }

    /// Stops the job workers (a running job finishes first).
    #[napi]
    pub async fn close(&self) -> napi::Result<()> {
        let p = self.inner.clone();
        blocking(move || {
            p.shutdown();
            Ok(())
        })
        .await
    }
}

/// A generation under way.
#[napi]
#[derive(Debug)]
pub struct NativeStream {
    id: String,
    sources: Option<Value>,
    stream: Arc<Mutex<Option<Events>>>,
}

/// What a stream yields from: a generation's token events, or a response's typed events.
#[derive(Debug)]
enum Events {
    Generation(GenerationStream),
    Response(ResponseStream),
}

impl Events {
    async fn next(&mut self) -> Option<Result<Value, napi::Error>> {
        let ev = match self {
            Events::Generation(s) => s.next_event().await.map(|r| r.map(|e| to_json(&e))),
            Events::Response(s) => s.next_event().await.map(|r| r.map(|e| to_json(&e))),
        };
        ev.map(|r| r.map_err(|e| platform_error(&e)).and_then(|v| v))
    }

    /// The rest, as the completion or the response (blocking).
    fn collect(self) -> Result<Value, PlatformError> {
        let v = match self {
            Events::Generation(s) => serde_json::to_value(s.collect()?),
            Events::Response(s) => serde_json::to_value(s.collect()?),
        };
        v.map_err(|e| PlatformError::Engine(e.to_string()))
    }
}

impl NativeStream {
    fn new(stream: GenerationStream, sources: Option<Value>) -> Self {
        Self { id: stream.id().to_owned(), sources, stream: Arc::new(Mutex::new(Some(Events::Generation(stream)))) }
    }
}

#[napi]
impl NativeStream {
    /// The request id.
    #[napi(getter)]
    pub fn id(&self) -> String {
        self.id.clone()
    }

    /// A grounded chat's numbered sources; `null` for other generations.
    #[napi(getter)]
    pub fn sources(&self) -> Option<Value> {
        self.sources.clone()
    }

    /// The next event (`{type: "delta", text, logprob}` or `{type: "done", finish_reason,
    /// usage}`), or `null` after the end.
    #[napi]
    pub async fn next(&self) -> napi::Result<Option<Value>> {
        let mut slot = self.stream.lock().await;
        let Some(stream) = slot.as_mut() else { return Ok(None) };
        match stream.next().await {
            Some(Ok(ev)) => Ok(Some(ev)),
            Some(Err(e)) => {
                *slot = None;
                Err(e)
            }
            None => {
                *slot = None;
                Ok(None)
            }
        }
    }

    /// Runs the rest and returns the completion (`id`, `model`, `text`, `finish_reason`,
    /// `usage`, `logprobs`, `created`), or the response.
    #[napi]
    pub async fn collect(&self) -> napi::Result<Value> {
        let stream = self.stream.lock().await.take().ok_or_else(|| invalid("the stream has ended"))?;
        blocking(move || stream.collect()).await
    }

    /// Stops the generation now (unused credits are refunded).
    #[napi]
    pub async fn close(&self) -> napi::Result<()> {
        let stream = self.stream.lock().await.take();
        blocking(move || {
            drop(stream);
            Ok(())
        })
        .await
    }
}

/// One API key's view of the platform.
#[napi]
#[derive(Debug)]
pub struct NativeSession {
    inner: Session,
}

#[napi]
impl NativeSession {
    fn session(&self) -> Session {
        self.inner.clone()
    }

    /// The key's tenant.
    #[napi(getter)]
    pub fn tenant(&self) -> String {
        self.inner.principal().tenant().as_str().to_owned()
    }

    #[napi]
    pub async fn models(&self) -> napi::Result<Value> {
        let s = self.session();
        json(move || s.models()).await
    }

    #[napi]
    pub async fn chat(&self, model: String, messages: Value, options: Option<Value>) -> napi::Result<NativeStream> {
        let messages = parse(messages, "messages")?;
        let options: GenerationOptions = parse_options(options, "options")?;
        let s = self.session();
        Ok(NativeStream::new(blocking(move || s.chat(&model, messages, &options)).await?, None))
    }

    #[napi]
    pub async fn complete(&self, model: String, prompt: String, options: Option<Value>) -> napi::Result<NativeStream> {
        let options: GenerationOptions = parse_options(options, "options")?;
        let s = self.session();
        Ok(NativeStream::new(blocking(move || s.complete(&model, &prompt, &options)).await?, None))
    }

    /// Creates a response (OpenAI's Responses API): `request` as `POST /v1/responses` takes it,
    /// less `stream`; a stream of its typed events.
    #[napi]
    pub async fn create_response(&self, request: Value) -> napi::Result<NativeStream> {
        let request: ResponseRequest = parse(request, "request")?;
        let s = self.session();
        let stream = blocking(move || s.create_response(&request)).await?;
        let id = stream.id().to_owned();
        Ok(NativeStream { id, sources: None, stream: Arc::new(Mutex::new(Some(Events::Response(stream)))) })
    }

    /// A stored response of the tenant's.
    #[napi]
    pub async fn response(&self, id: String) -> napi::Result<Value> {
        let s = self.session();
        json(move || s.response(&id)).await
    }

    /// A stored response's input items, in the order given.
    #[napi]
    pub async fn response_input_items(&self, id: String) -> napi::Result<Value> {
        let s = self.session();
        json(move || s.response_input_items(&id)).await
    }

    /// Deletes a stored response of the tenant's.
    #[napi]
    pub async fn delete_response(&self, id: String) -> napi::Result<()> {
        let s = self.session();
        blocking(move || s.delete_response(&id)).await
    }

    #[napi]
    pub async fn embed(&self, model: String, inputs: Vec<String>) -> napi::Result<Value> {
        let s = self.session();
        json(move || s.embed(&model, &inputs)).await
    }

    /// Uploads the tenant's own GGUF model (Pro and up) from a file, streamed.
    #[napi]
    pub async fn upload_model(&self, name: String, path: String) -> napi::Result<Value> {
        let s = self.session();
        json(move || {
            let mut file = std::fs::File::open(&path).map_err(soramai::Error::Io)?;
            s.upload_model(&name, &mut file)
        })
        .await
    }

    #[napi]
    pub async fn custom_models(&self) -> napi::Result<Value> {
        let s = self.session();
        json(move || s.custom_models()).await
    }

    #[napi]
    pub async fn delete_model(&self, id: String) -> napi::Result<()> {
        let s = self.session();
        blocking(move || s.delete_model(&id)).await
    }

    #[napi]
    pub async fn upload_dataset(&self, name: String, data: Buffer) -> napi::Result<Value> {
        let bytes = data.to_vec();
        let s = self.session();
        json(move || s.upload_dataset(&name, &bytes)).await
    }

    #[napi]
    pub async fn datasets(&self) -> napi::Result<Value> {
        let s = self.session();
        json(move || s.datasets()).await
    }

    #[napi]
    pub async fn dataset(&self, id: String) -> napi::Result<Value> {
        let s = self.session();
        json(move || s.dataset(&id)).await
    }

    #[napi]
    pub async fn download_dataset(&self, id: String) -> napi::Result<Buffer> {
        let s = self.session();
        let bytes = blocking(move || s.download_dataset(&id)).await?;
        Ok(Buffer::from(bytes.as_slice()))
    }

    #[napi]
    pub async fn delete_dataset(&self, id: String) -> napi::Result<()> {
        let s = self.session();
        blocking(move || s.delete_dataset(&id)).await
    }

    #[napi]
    pub async fn create_fine_tuning_job(&self, request: Value) -> napi::Result<Value> {
        let request = parse(request, "request")?;
        let s = self.session();
        json(move || s.create_fine_tuning_job(request)).await
    }

    #[napi]
    pub async fn fine_tuning_jobs(&self) -> napi::Result<Value> {
        let s = self.session();
        json(move || s.fine_tuning_jobs()).await
    }

    #[napi]
    pub async fn fine_tuning_job(&self, id: String) -> napi::Result<Value> {
        let s = self.session();
        json(move || s.fine_tuning_job(&id)).await
    }

    #[napi]
    pub async fn fine_tuning_job_events(&self, id: String) -> napi::Result<Value> {
        let s = self.session();
        json(move || s.fine_tuning_job_events(&id)).await
    }

    #[napi]
    pub async fn cancel_fine_tuning_job(&self, id: String) -> napi::Result<Value> {
        let s = self.session();
        json(move || s.cancel_fine_tuning_job(&id)).await
    }

    #[napi]
    pub async fn wait_fine_tuning_job(&self, id: String, timeout_seconds: Option<f64>) -> napi::Result<Value> {
        let timeout = Duration::try_from_secs_f64(timeout_seconds.unwrap_or(600.0))
            .map_err(|_| invalid("timeout is a number of seconds"))?;
        let s = self.session();
        json(move || s.wait_fine_tuning_job(&id, timeout)).await
    }

    #[napi]
    pub async fn create_corpus(&self, id: String) -> napi::Result<()> {
        let s = self.session();
        blocking(move || s.create_corpus(&id)).await
    }

    #[napi]
    pub async fn corpora(&self) -> napi::Result<Value> {
        let s = self.session();
        json(move || s.corpora()).await
    }

    #[napi]
    pub async fn delete_corpus(&self, id: String) -> napi::Result<()> {
        let s = self.session();
        blocking(move || s.delete_corpus(&id)).await
    }

    #[napi]
    pub async fn add_documents(&self, corpus: String, documents: Value) -> napi::Result<Value> {
        let documents = parse(documents, "documents")?;
        let s = self.session();
        json(move || s.add_documents(&corpus, documents)).await
    }

    #[napi]
    pub async fn start_ingestion(&self, corpus: String, documents: Value) -> napi::Result<Value> {
        let documents = parse(documents, "documents")?;
        let s = self.session();
        json(move || s.start_ingestion(&corpus, documents)).await
    }

    #[napi]
    pub async fn ingestion(&self, corpus: String, id: String) -> napi::Result<Value> {
        let s = self.session();
        json(move || s.ingestion(&corpus, &id)).await
    }

    #[napi]
    pub async fn ingestions(&self, corpus: String) -> napi::Result<Value> {
        let s = self.session();
        json(move || s.ingestions(&corpus)).await
    }

    #[napi]
    pub async fn cancel_ingestion(&self, corpus: String, id: String) -> napi::Result<Value> {
        let s = self.session();
        json(move || s.cancel_ingestion(&corpus, &id)).await
    }

    #[napi]
    pub async fn wait_ingestion(
        &self,
        corpus: String,
        id: String,
        timeout_seconds: Option<f64>,
    ) -> napi::Result<Value> {
        let timeout = Duration::try_from_secs_f64(timeout_seconds.unwrap_or(600.0))
            .map_err(|_| invalid("timeout is a number of seconds"))?;
        let s = self.session();
        json(move || s.wait_ingestion(&corpus, &id, timeout)).await
    }

    #[napi]
    pub async fn documents(&self, corpus: String) -> napi::Result<Value> {
        let s = self.session();
        json(move || s.documents(&corpus)).await
    }

    #[napi]
    pub async fn delete_document(&self, corpus: String, id: String) -> napi::Result<()> {
        let s = self.session();
        blocking(move || s.delete_document(&corpus, &id)).await
    }

    #[napi]
    pub async fn search(&self, corpus: String, request: Value) -> napi::Result<Value> {
        let request = parse(request, "search")?;
        let s = self.session();
        json(move || s.search(&corpus, request)).await
    }

    #[napi]
    pub async fn grounded_chat(
        &self,
        model: String,
        corpus: String,
        question: String,
        retrieval: Option<Value>,
        options: Option<Value>,
    ) -> napi::Result<NativeStream> {
        let retrieval: soramai::Retrieval = parse_options(retrieval, "retrieval")?;
        let options: GenerationOptions = parse_options(options, "options")?;
        let s = self.session();
        let g = blocking(move || s.grounded_chat(&model, &corpus, &question, &retrieval, &options)).await?;
        let sources = to_json(&g.prompt.sources)?;
        Ok(NativeStream::new(g.stream, Some(sources)))
    }

    #[napi]
    pub async fn create_api_key(&self, request: Value) -> napi::Result<Value> {
        let request = parse(request, "request")?;
        let s = self.session();
        let key = blocking(move || s.create_api_key(request)).await?;
        to_json(&NewKey::from(&key))
    }

    #[napi]
    pub async fn api_keys(&self) -> napi::Result<Value> {
        let s = self.session();
        json(move || s.api_keys()).await
    }

    #[napi]
    pub async fn revoke_api_key(&self, id: String) -> napi::Result<()> {
        let s = self.session();
        blocking(move || s.revoke_api_key(&id)).await
    }

    #[napi]
    pub async fn rotate_api_key(&self, id: String, grace_seconds: Option<u32>) -> napi::Result<Value> {
        let s = self.session();
        let grace = Duration::from_secs(u64::from(grace_seconds.unwrap_or(0)));
        let key = blocking(move || s.rotate_api_key(&id, grace)).await?;
        to_json(&NewKey::from(&key))
    }

    #[napi]
    pub async fn create_tenant(&self, id: String, tier: String) -> napi::Result<Value> {
        let tier = parse_tier(&tier)?;
        let s = self.session();
        json(move || s.create_tenant(&id, tier)).await
    }

    #[napi]
    pub async fn set_tier(&self, id: String, tier: String) -> napi::Result<Value> {
        let tier = parse_tier(&tier)?;
        let s = self.session();
        json(move || s.set_tier(&id, tier)).await
    }

    #[napi]
    pub async fn tenants(&self) -> napi::Result<Value> {
        let s = self.session();
        json(move || s.tenants()).await
    }

    #[napi]
    pub async fn grant_credits(&self, tenant: String, amount: i64, reference: String) -> napi::Result<Value> {
        let s = self.session();
        json(move || s.grant_credits(&tenant, amount, &reference)).await
    }

    /// Closes a tenant's account: access ends now, the data goes after `window_days` (1 to 30,
    /// default 30) or now with `immediate`.
    #[napi]
    pub async fn close_tenant(
        &self,
        id: String,
        immediate: Option<bool>,
        window_days: Option<u32>,
    ) -> napi::Result<Value> {
        let s = self.session();
        json(move || s.close_tenant(&id, immediate.unwrap_or(false), window_days)).await
    }

    #[napi]
    pub async fn reopen_tenant(&self, id: String) -> napi::Result<()> {
        let s = self.session();
        blocking(move || s.reopen_tenant(&id)).await
    }

    /// `{ reason, scopes, ttl_seconds? }`: break-glass access to a tenant (platform admin); the
    /// answer carries the grant's short-lived key once.
    #[napi]
    pub async fn request_access_grant(&self, tenant: String, request: Value) -> napi::Result<Value> {
        let request = parse(request, "request")?;
        let s = self.session();
        let grant = blocking(move || s.request_access_grant(&tenant, request)).await?;
        to_json(&soramai::NewGrant::from(&grant))
    }

    #[napi]
    pub async fn approve_access_grant(&self, id: String) -> napi::Result<Value> {
        let s = self.session();
        json(move || s.approve_access_grant(&id)).await
    }

    #[napi]
    pub async fn revoke_access_grant(&self, id: String) -> napi::Result<Value> {
        let s = self.session();
        json(move || s.revoke_access_grant(&id)).await
    }

    #[napi]
    pub async fn access_grants(&self) -> napi::Result<Value> {
        let s = self.session();
        json(move || s.access_grants()).await
    }

    #[napi]
    pub async fn audit_log(&self) -> napi::Result<Value> {
        let s = self.session();
        json(move || s.audit_log()).await
    }

    #[napi]
    pub async fn verify_audit(&self) -> napi::Result<Value> {
        let s = self.session();
        json(move || s.verify_audit()).await
    }

    #[napi]
    pub async fn usage(&self, since_ms: Option<i64>) -> napi::Result<Value> {
        let s = self.session();
        json(move || s.usage(since_ms.unwrap_or(0))).await
    }
}

fn parse_tier(name: &str) -> napi::Result<soramai::Tier> {
    name.parse().map_err(|_| invalid("a tier is free, basic, pro, org or enterprise"))
}

/// The job runner's entry point (`runner.js`): runs one job read from stdin and returns the
/// process exit code.
#[napi]
pub fn job_runner(args: Vec<String>) -> i32 {
    soramai::job_runner_main(&args)
}
