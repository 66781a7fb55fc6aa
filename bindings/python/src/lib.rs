//! `soramai._native`: the Python face of the Soramai SDK.
//!
//! Every behaviour lives in the SDK ([`soramai::Session`]); this module only translates. Values
//! cross as JSON (the SDK's own serde shapes, so Python and Node see the same dicts and objects),
//! arguments are validated by the SDK with unknown fields refused, and every call that touches
//! storage or the engine runs with the GIL released. Errors become the exception classes
//! `soramai` exports, one per [`soramai::ErrorKind`], each with a `code`.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use serde::Serialize;
use serde::de::DeserializeOwned;
use soramai::{
    ChatMessage, ErrorKind, GenerationOptions, GenerationStream, NewKey, OpenOptions, PlatformError, ResponseRequest,
    ResponseStream, Retrieval, RunnerCommand, Session, Tier,
};

pyo3::create_exception!(soramai, SoramaiError, PyException, "Base class of every Soramai error; `code` names it.");
pyo3::create_exception!(soramai, AuthenticationError, SoramaiError, "No key, or an unknown, revoked or expired one.");
pyo3::create_exception!(soramai, PermissionDeniedError, SoramaiError, "The key's scopes or the tier do not allow it.");
pyo3::create_exception!(soramai, NotFoundError, SoramaiError, "No such resource for this tenant.");
pyo3::create_exception!(soramai, ConflictError, SoramaiError, "It exists already, or its state refuses the request.");
pyo3::create_exception!(soramai, InvalidRequestError, SoramaiError, "A malformed or out-of-range argument.");
pyo3::create_exception!(soramai, TooLargeError, SoramaiError, "Over a size limit.");
pyo3::create_exception!(soramai, ContextLengthError, SoramaiError, "The prompt does not fit the model's context.");
pyo3::create_exception!(soramai, InsufficientCreditsError, SoramaiError, "The tenant's credits do not cover it.");
pyo3::create_exception!(soramai, RateLimitError, SoramaiError, "A tier limit was reached; try again later.");
pyo3::create_exception!(
    soramai,
    UnavailableError,
    SoramaiError,
    "Stopped before it finished; nothing was committed. Try again."
);
pyo3::create_exception!(
    soramai,
    IntegrityError,
    SoramaiError,
    "Stored data failed its integrity check; it is logged and audited."
);
pyo3::create_exception!(soramai, InternalError, SoramaiError, "A failure inside the platform.");

fn raise(py: Python<'_>, e: &PlatformError) -> PyErr {
    let message = e.to_string();
    let err = match e.kind() {
        ErrorKind::Authentication => AuthenticationError::new_err(message),
        ErrorKind::PermissionDenied => PermissionDeniedError::new_err(message),
        ErrorKind::NotFound => NotFoundError::new_err(message),
        ErrorKind::Conflict => ConflictError::new_err(message),
        ErrorKind::InvalidRequest => InvalidRequestError::new_err(message),
        ErrorKind::TooLarge => TooLargeError::new_err(message),
        ErrorKind::ContextLength => ContextLengthError::new_err(message),
        ErrorKind::InsufficientCredits => InsufficientCreditsError::new_err(message),
        ErrorKind::RateLimited => RateLimitError::new_err(message),
        ErrorKind::Unavailable => UnavailableError::new_err(message),
        ErrorKind::Integrity => IntegrityError::new_err(message),
        _ => InternalError::new_err(message),
    };
    // Best effort: an exception object that refuses attributes still carries its message.
    let _ = err.value(py).setattr("code", e.code());
    err
}

fn invalid(message: impl Into<String>) -> PyErr {
    InvalidRequestError::new_err(message.into())
}

/// Runs `f` with the GIL released and raises its error.
fn call<T: Send>(py: Python<'_>, f: impl FnOnce() -> Result<T, PlatformError> + Send) -> PyResult<T> {
    py.detach(f).map_err(|e| raise(py, &e))
}

/// A serde value as Python objects (dicts, lists, str, int, float, bool, None).
fn to_py<T: Serialize>(py: Python<'_>, value: &T) -> PyResult<Py<PyAny>> {
    let text = serde_json::to_string(value).map_err(|e| InternalError::new_err(e.to_string()))?;
    json_loads(py, text)
}

/// Python objects (JSON-shaped) as a serde value; a shape the SDK refuses is an
/// `InvalidRequestError` naming `what`.
fn from_py<T: DeserializeOwned>(py: Python<'_>, value: &Bound<'_, PyAny>, what: &str) -> PyResult<T> {
    let text: String = py
        .import("json")?
        .call_method1("dumps", (value,))
        .map_err(|_| invalid(format!("{what} holds values JSON cannot hold")))?
        .extract()?;
    serde_json::from_str(&text).map_err(|e| invalid(format!("{what}: {}", soramai::json_error_message(&e))))
}

/// Keyword options (`None` for none) as a serde value.
fn options<T: DeserializeOwned + Default>(py: Python<'_>, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<T> {
    match kwargs {
        Some(k) if !k.is_empty() => from_py(py, k.as_any(), "options"),
        _ => Ok(T::default()),
    }
}

fn tier(name: &str) -> PyResult<Tier> {
    name.parse().map_err(|_| invalid("a tier is free, basic, pro, org or enterprise"))
}

/// A platform on the embedded default (SQLite and encrypted local blobs in `data_dir`).
#[pyclass(module = "soramai._native", frozen, subclass)]
struct Platform {
    inner: Arc<soramai::Platform>,
}

#[pymethods]
impl Platform {
    /// Opens (or creates) a platform. `model` (a GGUF path) is registered as base model
    /// `model_id` when absent; `runner` is the job runner command (the package's own by default).
    #[new]
    // Python's keyword arguments, one parameter each.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (data_dir, *, runner, model=None, model_id=None, workers=None, max_batch=None, database=None, blob_store=None, max_model_bytes=None, prefill_chunk=None, prefix_cache_bytes=None))]
    fn new(
        py: Python<'_>,
        data_dir: std::path::PathBuf,
        runner: Vec<String>,
        model: Option<std::path::PathBuf>,
        model_id: Option<String>,
        workers: Option<usize>,
        max_batch: Option<usize>,
        database: Option<String>,
        blob_store: Option<String>,
        max_model_bytes: Option<u64>,
        prefill_chunk: Option<usize>,
        prefix_cache_bytes: Option<u64>,
    ) -> PyResult<Self> {
        let (program, args) = runner.split_first().ok_or_else(|| invalid("runner names a program"))?;
        let runner = RunnerCommand { args: args.to_vec(), ..RunnerCommand::new(program) };
        let options = OpenOptions {
            model,
            model_id,
            workers,
            max_batch,
            database,
            blob_store,
            max_model_bytes,
            prefill_chunk,
            prefix_cache_bytes,
        };
        let inner = call(py, || soramai::Platform::open_with(&data_dir, &options, Some(runner)))?;
        Ok(Self { inner })
    }

    /// Creates the operator tenant and returns its first admin key, once; `None` afterwards.
    fn bootstrap(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let key = call(py, || self.inner.bootstrap_operator())?;
        Ok(key.map(|k| k.secret().to_owned()))
    }

    /// A session for an API key.
    fn session(&self, py: Python<'_>, api_key: &str) -> PyResult<PySession> {
        Ok(PySession { inner: call(py, || self.inner.session(api_key))? })
    }

    /// Stops the job workers (a running job finishes first).
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.inner.shutdown());
    }
}

/// A generation under way: iterate for events, or `collect()` the rest.
#[pyclass(module = "soramai._native", name = "TokenStream")]
struct PyStream {
    stream: Option<Events>,
    sources: Option<Py<PyAny>>,
}

/// What a stream yields from: a generation's token events, or a response's typed events.
enum Events {
    Generation(GenerationStream),
    Response(ResponseStream),
}

impl Events {
    fn id(&self) -> &str {
        match self {
            Events::Generation(s) => s.id(),
            Events::Response(s) => s.id(),
        }
    }

    /// The next event as JSON text (blocking).
    fn next_json(&mut self) -> Option<Result<String, PlatformError>> {
        fn text<T: Serialize>(v: &T) -> Result<String, PlatformError> {
            serde_json::to_string(v).map_err(|e| PlatformError::Engine(e.to_string()))
        }
        match self {
            Events::Generation(s) => s.next().map(|r| r.and_then(|ev| text(&ev))),
            Events::Response(s) => s.next().map(|r| r.and_then(|ev| text(&ev))),
        }
    }

    /// The rest, as the completion or the response.
    fn collect_json(self) -> Result<String, PlatformError> {
        let text = match self {
            Events::Generation(s) => serde_json::to_string(&s.collect()?),
            Events::Response(s) => serde_json::to_string(&s.collect()?),
        };
        text.map_err(|e| PlatformError::Engine(e.to_string()))
    }
}

impl PyStream {
    fn new(stream: GenerationStream) -> Self {
        Self { stream: Some(Events::Generation(stream)), sources: None }
    }
}

fn json_loads(py: Python<'_>, text: String) -> PyResult<Py<PyAny>> {
    Ok(py.import("json")?.call_method1("loads", (text,))?.unbind())
}

#[pymethods]
impl PyStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let Some(stream) = self.stream.as_mut() else { return Ok(None) };
        match py.detach(|| stream.next_json()) {
            Some(Ok(ev)) => json_loads(py, ev).map(Some),
            Some(Err(e)) => {
                self.stream = None;
                Err(raise(py, &e))
            }
            None => {
                self.stream = None;
                Ok(None)
            }
        }
    }

    /// The request id.
    #[getter]
    fn id(&self) -> Option<String> {
        self.stream.as_ref().map(|s| s.id().to_owned())
    }

    /// A grounded chat's numbered sources (`None` for other generations).
    #[getter]
    fn sources(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.sources.as_ref().map(|s| s.clone_ref(py))
    }

    /// Runs the rest and returns the completion (text, finish_reason, usage), or the response.
    fn collect(&mut self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let stream = self.stream.take().ok_or_else(|| invalid("the stream has ended"))?;
        let text = call(py, || stream.collect_json())?;
        json_loads(py, text)
    }

    /// Stops the generation now (unused credits are refunded).
    fn close(&mut self) {
        self.stream = None;
    }
}

/// One API key's view of the platform.
#[pyclass(module = "soramai._native", name = "Session", frozen)]
struct PySession {
    inner: Session,
}

fn generation(py: Python<'_>, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<GenerationOptions> {
    options(py, kwargs)
}

#[pymethods]
impl PySession {
    /// The key's tenant.
    #[getter]
    fn tenant(&self) -> String {
        self.inner.principal().tenant().as_str().to_owned()
    }

    fn models(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_py(py, &call(py, || self.inner.models())?)
    }

    #[pyo3(signature = (model, messages, *, stream=false, **kwargs))]
    fn chat(
        &self,
        py: Python<'_>,
        model: &str,
        messages: &Bound<'_, PyAny>,
        stream: bool,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let messages: Vec<ChatMessage> = from_py(py, messages, "messages")?;
        let opts = generation(py, kwargs)?;
        let s = call(py, || self.inner.chat(model, messages, &opts))?;
        finish(py, PyStream::new(s), stream)
    }

    #[pyo3(signature = (model, prompt, *, stream=false, **kwargs))]
    fn complete(
        &self,
        py: Python<'_>,
        model: &str,
        prompt: &str,
        stream: bool,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let opts = generation(py, kwargs)?;
        let s = call(py, || self.inner.complete(model, prompt, &opts))?;
        finish(py, PyStream::new(s), stream)
    }

    /// Creates a response (OpenAI's Responses API): `request` as `POST /v1/responses` takes it,
    /// less `stream`. The response, or with `stream=True` a stream of its typed events.
    #[pyo3(signature = (request, *, stream=false))]
    fn create_response(&self, py: Python<'_>, request: &Bound<'_, PyAny>, stream: bool) -> PyResult<Py<PyAny>> {
        let request: ResponseRequest = from_py(py, request, "request")?;
        let s = call(py, || self.inner.create_response(&request))?;
        finish(py, PyStream { stream: Some(Events::Response(s)), sources: None }, stream)
    }

    /// A stored response of the tenant's.
    fn response(&self, py: Python<'_>, id: &str) -> PyResult<Py<PyAny>> {
        to_py(py, &call(py, || self.inner.response(id))?)
    }

    /// A stored response's input items, in the order given.
    fn response_input_items(&self, py: Python<'_>, id: &str) -> PyResult<Py<PyAny>> {
        to_py(py, &call(py, || self.inner.response_input_items(id))?)
    }

    /// Deletes a stored response of the tenant's.
    fn delete_response(&self, py: Python<'_>, id: &str) -> PyResult<()> {
        call(py, || self.inner.delete_response(id))
    }

    fn embed(&self, py: Python<'_>, model: &str, inputs: Vec<String>) -> PyResult<Py<PyAny>> {
        to_py(py, &call(py, || self.inner.embed(model, &inputs))?)
    }

    /// Uploads the tenant's own GGUF model (Pro and up) from a file, streamed: returns the model
    /// (its `id` is what chat and fine-tuning name).
    fn upload_model(&self, py: Python<'_>, name: &str, path: std::path::PathBuf) -> PyResult<Py<PyAny>> {
        to_py(
            py,
            &call(py, || {
                let mut file = std::fs::File::open(&path).map_err(soramai::Error::Io)?;
                self.inner.upload_model(name, &mut file)
            })?,
        )
    }

    fn custom_models(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_py(py, &call(py, || self.inner.custom_models())?)
    }

    fn delete_model(&self, py: Python<'_>, id: &str) -> PyResult<()> {
        call(py, || self.inner.delete_model(id))
    }

    fn upload_dataset(&self, py: Python<'_>, name: &str, data: &[u8]) -> PyResult<Py<PyAny>> {
        to_py(py, &call(py, || self.inner.upload_dataset(name, data))?)
    }

    fn datasets(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_py(py, &call(py, || self.inner.datasets())?)
    }

    fn dataset(&self, py: Python<'_>, id: &str) -> PyResult<Py<PyAny>> {
        to_py(py, &call(py, || self.inner.dataset(id))?)
    }

    fn download_dataset<'py>(&self, py: Python<'py>, id: &str) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = call(py, || self.inner.download_dataset(id))?;
        Ok(PyBytes::new(py, &bytes))
    }

    fn delete_dataset(&self, py: Python<'_>, id: &str) -> PyResult<()> {
        call(py, || self.inner.delete_dataset(id))
    }

    #[pyo3(signature = (training_file, model, *, suffix=None, hyperparameters=None))]
    fn create_fine_tuning_job(
        &self,
        py: Python<'_>,
        training_file: String,
        model: String,
        suffix: Option<String>,
        hyperparameters: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let hyperparameters = options(py, hyperparameters)?;
        let request = soramai::FineTuneRequest { training_file, model, suffix, hyperparameters };
        to_py(py, &call(py, || self.inner.create_fine_tuning_job(request))?)
    }

    fn fine_tuning_jobs(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_py(py, &call(py, || self.inner.fine_tuning_jobs())?)
    }

    fn fine_tuning_job(&self, py: Python<'_>, id: &str) -> PyResult<Py<PyAny>> {
        to_py(py, &call(py, || self.inner.fine_tuning_job(id))?)
    }

    fn fine_tuning_job_events(&self, py: Python<'_>, id: &str) -> PyResult<Py<PyAny>> {
        to_py(py, &call(py, || self.inner.fine_tuning_job_events(id))?)
    }

    fn cancel_fine_tuning_job(&self, py: Python<'_>, id: &str) -> PyResult<Py<PyAny>> {
        to_py(py, &call(py, || self.inner.cancel_fine_tuning_job(id))?)
    }

    #[pyo3(signature = (id, *, timeout=600.0))]
    fn wait_fine_tuning_job(&self, py: Python<'_>, id: &str, timeout: f64) -> PyResult<Py<PyAny>> {
        let timeout = Duration::try_from_secs_f64(timeout).map_err(|_| invalid("timeout is a number of seconds"))?;
        to_py(py, &call(py, || self.inner.wait_fine_tuning_job(id, timeout))?)
    }

    fn create_corpus(&self, py: Python<'_>, id: &str) -> PyResult<()> {
        call(py, || self.inner.create_corpus(id))
    }

    fn corpora(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        call(py, || self.inner.corpora())
    }

    fn delete_corpus(&self, py: Python<'_>, id: &str) -> PyResult<()> {
        call(py, || self.inner.delete_corpus(id))
    }

    fn add_documents(&self, py: Python<'_>, corpus: &str, documents: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let docs = from_py(py, documents, "documents")?;
        to_py(py, &call(py, || self.inner.add_documents(corpus, docs))?)
    }

    fn start_ingestion(&self, py: Python<'_>, corpus: &str, documents: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let docs = from_py(py, documents, "documents")?;
        to_py(py, &call(py, || self.inner.start_ingestion(corpus, docs))?)
    }

    fn ingestion(&self, py: Python<'_>, corpus: &str, id: &str) -> PyResult<Py<PyAny>> {
        to_py(py, &call(py, || self.inner.ingestion(corpus, id))?)
    }

    fn ingestions(&self, py: Python<'_>, corpus: &str) -> PyResult<Py<PyAny>> {
        to_py(py, &call(py, || self.inner.ingestions(corpus))?)
    }

    fn cancel_ingestion(&self, py: Python<'_>, corpus: &str, id: &str) -> PyResult<Py<PyAny>> {
        to_py(py, &call(py, || self.inner.cancel_ingestion(corpus, id))?)
    }

    #[pyo3(signature = (corpus, id, *, timeout=600.0))]
    fn wait_ingestion(&self, py: Python<'_>, corpus: &str, id: &str, timeout: f64) -> PyResult<Py<PyAny>> {
        let timeout = Duration::try_from_secs_f64(timeout).map_err(|_| invalid("timeout is a number of seconds"))?;
        to_py(py, &call(py, || self.inner.wait_ingestion(corpus, id, timeout))?)
    }

    fn documents(&self, py: Python<'_>, corpus: &str) -> PyResult<Vec<String>> {
        call(py, || self.inner.documents(corpus))
    }

    fn delete_document(&self, py: Python<'_>, corpus: &str, id: &str) -> PyResult<()> {
        call(py, || self.inner.delete_document(corpus, id))
    }

    #[pyo3(signature = (corpus, query, **kwargs))]
    fn search(
        &self,
        py: Python<'_>,
        corpus: &str,
        query: &str,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let request = PyDict::new(py);
        if let Some(k) = kwargs {
            request.update(k.as_mapping())?;
        }
        request.set_item("query", query)?;
        let search = from_py(py, request.as_any(), "search")?;
        to_py(py, &call(py, || self.inner.search(corpus, search))?)
    }

    #[pyo3(signature = (model, corpus, question, *, top_k=5, hybrid=false, cite=false, stream=false, **kwargs))]
    #[allow(clippy::too_many_arguments)]
    fn grounded_chat(
        &self,
        py: Python<'_>,
        model: &str,
        corpus: &str,
        question: &str,
        top_k: usize,
        hybrid: bool,
        cite: bool,
        stream: bool,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let opts = generation(py, kwargs)?;
        let retrieval = Retrieval { top_k, hybrid, cite };
        let g = call(py, || self.inner.grounded_chat(model, corpus, question, &retrieval, &opts))?;
        let stream_obj =
            PyStream { stream: Some(Events::Generation(g.stream)), sources: Some(to_py(py, &g.prompt.sources)?) };
        finish(py, stream_obj, stream)
    }

    #[pyo3(signature = (name, scopes, *, tenant=None, expires_in_seconds=None))]
    fn create_api_key(
        &self,
        py: Python<'_>,
        name: String,
        scopes: &Bound<'_, PyAny>,
        tenant: Option<String>,
        expires_in_seconds: Option<u64>,
    ) -> PyResult<Py<PyAny>> {
        let scopes = from_py(py, scopes, "scopes")?;
        let request = soramai::KeyRequest { name, scopes, tenant, expires_in_seconds };
        let key = call(py, || self.inner.create_api_key(request))?;
        to_py(py, &NewKey::from(&key))
    }

    fn api_keys(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_py(py, &call(py, || self.inner.api_keys())?)
    }

    fn revoke_api_key(&self, py: Python<'_>, id: &str) -> PyResult<()> {
        call(py, || self.inner.revoke_api_key(id))
    }

    #[pyo3(signature = (id, *, grace_seconds=0))]
    fn rotate_api_key(&self, py: Python<'_>, id: &str, grace_seconds: u64) -> PyResult<Py<PyAny>> {
        let key = call(py, || self.inner.rotate_api_key(id, Duration::from_secs(grace_seconds)))?;
        to_py(py, &NewKey::from(&key))
    }

    #[pyo3(signature = (id, tier="basic"))]
    fn create_tenant(&self, py: Python<'_>, id: &str, tier: &str) -> PyResult<Py<PyAny>> {
        let tier = self::tier(tier)?;
        to_py(py, &call(py, || self.inner.create_tenant(id, tier))?)
    }

    fn set_tier(&self, py: Python<'_>, id: &str, tier: &str) -> PyResult<Py<PyAny>> {
        let tier = self::tier(tier)?;
        to_py(py, &call(py, || self.inner.set_tier(id, tier))?)
    }

    fn tenants(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_py(py, &call(py, || self.inner.tenants())?)
    }

    fn grant_credits(&self, py: Python<'_>, tenant: &str, amount: i64, reference: &str) -> PyResult<Py<PyAny>> {
        to_py(py, &call(py, || self.inner.grant_credits(tenant, amount, reference))?)
    }

    /// Closes a tenant's account: access ends now, the data goes after `window_days` (1 to 30,
    /// default 30) or now with `immediate`.
    #[pyo3(signature = (id, *, immediate=false, window_days=None))]
    fn close_tenant(&self, py: Python<'_>, id: &str, immediate: bool, window_days: Option<u32>) -> PyResult<Py<PyAny>> {
        to_py(py, &call(py, || self.inner.close_tenant(id, immediate, window_days))?)
    }

    fn reopen_tenant(&self, py: Python<'_>, id: &str) -> PyResult<()> {
        call(py, || self.inner.reopen_tenant(id))
    }

    /// Asks for break-glass access to a tenant (platform admin). The answer carries the grant's
    /// short-lived key once.
    #[pyo3(signature = (tenant, reason, scopes, *, ttl_seconds=None))]
    fn request_access_grant(
        &self,
        py: Python<'_>,
        tenant: &str,
        reason: String,
        scopes: &Bound<'_, PyAny>,
        ttl_seconds: Option<u64>,
    ) -> PyResult<Py<PyAny>> {
        let scopes = from_py(py, scopes, "scopes")?;
        let request = soramai::GrantInput { reason, scopes, ttl_seconds };
        let grant = call(py, || self.inner.request_access_grant(tenant, request))?;
        to_py(py, &soramai::NewGrant::from(&grant))
    }

    fn approve_access_grant(&self, py: Python<'_>, id: &str) -> PyResult<Py<PyAny>> {
        to_py(py, &call(py, || self.inner.approve_access_grant(id))?)
    }

    fn revoke_access_grant(&self, py: Python<'_>, id: &str) -> PyResult<Py<PyAny>> {
        to_py(py, &call(py, || self.inner.revoke_access_grant(id))?)
    }

    fn access_grants(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_py(py, &call(py, || self.inner.access_grants())?)
    }

    fn audit_log(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_py(py, &call(py, || self.inner.audit_log())?)
    }

    fn verify_audit(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_py(py, &call(py, || self.inner.verify_audit())?)
    }

    #[pyo3(signature = (since_ms=0))]
    fn usage(&self, py: Python<'_>, since_ms: i64) -> PyResult<Py<PyAny>> {
        to_py(py, &call(py, || self.inner.usage(since_ms))?)
    }
}

/// A stream object, or (not streaming) the collected completion with the sources of a grounded
/// chat.
fn finish(py: Python<'_>, mut s: PyStream, stream: bool) -> PyResult<Py<PyAny>> {
    if stream {
        return Ok(Py::new(py, s)?.into_any());
    }
    let sources = s.sources.take();
    let completion = s.collect(py)?;
    if let Some(sources) = sources {
        completion.bind(py).set_item("sources", sources)?;
    }
    Ok(completion)
}

/// The job runner's entry point (`python -m soramai job-runner`): runs one job read from stdin
/// and returns the process exit code.
#[pyfunction]
fn job_runner(py: Python<'_>, args: Vec<String>) -> i32 {
    py.detach(|| soramai::job_runner_main(&args))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Platform>()?;
    m.add_class::<PySession>()?;
    m.add_class::<PyStream>()?;
    m.add_function(wrap_pyfunction!(job_runner, m)?)?;
    // Each class's default `code`; an error raised from the SDK sets its own on the instance.
    let classes = [
        ("SoramaiError", py.get_type::<SoramaiError>(), "error"),
        ("AuthenticationError", py.get_type::<AuthenticationError>(), "invalid_api_key"),
        ("PermissionDeniedError", py.get_type::<PermissionDeniedError>(), "permission_denied"),
        ("NotFoundError", py.get_type::<NotFoundError>(), "not_found"),
        ("ConflictError", py.get_type::<ConflictError>(), "already_exists"),
        ("InvalidRequestError", py.get_type::<InvalidRequestError>(), "invalid_request"),
        ("TooLargeError", py.get_type::<TooLargeError>(), "too_large"),
        ("ContextLengthError", py.get_type::<ContextLengthError>(), "context_length_exceeded"),
        ("InsufficientCreditsError", py.get_type::<InsufficientCreditsError>(), "insufficient_quota"),
        ("RateLimitError", py.get_type::<RateLimitError>(), "rate_limit_exceeded"),
        ("UnavailableError", py.get_type::<UnavailableError>(), "unavailable"),
        ("IntegrityError", py.get_type::<IntegrityError>(), "integrity_error"),
        ("InternalError", py.get_type::<InternalError>(), "internal_error"),
    ];
    for (name, class, code) in classes {
        class.setattr("code", code)?;
        m.add(name, class)?;
    }
    m.add("DEFAULT_MODEL_ID", soramai::DEFAULT_MODEL_ID)?;
    Ok(())
}
