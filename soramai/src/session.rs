//! A [`Session`]: one API key's view of a [`Platform`], the surface the Python and Node bindings
//! expose (and a convenient one for Rust callers too).
//!
//! Every method checks the key's scopes and tenant through the platform and core, exactly as the
//! server's routes do; inference calls are admitted within the tenant's tier limits (requests per
//! minute, concurrent requests) and hold their place until their stream ends or is dropped.
//! Arguments that come from a host language (chat messages, options, documents, key specs)
//! deserialize from JSON with unknown fields refused, so every binding validates alike.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use soramai_core::{
    AccessGrant, ApiKeyId, AuditRecord, AuditReport, AuditVerification, CloseOptions, Closure, DatasetInfo,
    FineTuneSpec, GrantRequest, IssuedGrant, IssuedKey, Job, JobEvent, KeyOptions, ModelId, Principal, Receipt, Scope,
    Tenant, Tier,
};
use soramai_rag::{CorpusId, Document, Format, GroundedPrompt, Hit, IngestReport, SearchRequest};
use zeroize::Zeroizing;

use crate::platform::{ChatMessage, Embeddings, GenerationOptions, GenerationStream, ModelInfo, Platform, Prompt};
use crate::{PlatformError, Retrieval};

/// A fine-tuning job as a caller asks for it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FineTuneRequest {
    /// One of the tenant's datasets (chat JSONL).
    pub training_file: String,
    /// A base model id.
    pub model: String,
    /// Part of the new model's id.
    #[serde(default)]
    pub suffix: Option<String>,
    /// Training settings: OpenAI's three a value or `"auto"` (the default: chosen from the
    /// dataset's size), Soramai's LoRA settings with defaults for what is left out.
    #[serde(default)]
    pub hyperparameters: crate::finetune::HyperparametersRequest,
}

/// A new API key as a caller asks for it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    /// A label for people.
    pub name: String,
    /// `inference`, `train`, `rag`, `admin`.
    pub scopes: Vec<Scope>,
    /// The tenant (default: the caller's; another tenant's only for the platform admin).
    #[serde(default)]
    pub tenant: Option<String>,
    /// Lifetime in seconds; none for no expiry.
    #[serde(default)]
    pub expires_in_seconds: Option<u64>,
}

/// A break-glass access grant as a platform admin asks for it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GrantInput {
    /// Why (an incident, a ticket): required.
    pub reason: String,
    /// The grant key's scopes: all held by the asking key.
    pub scopes: Vec<Scope>,
    /// Lifetime once active, 1 to 3600 seconds (default 900).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

/// A grant just created: the grant and its short-lived key, shown this once.
#[derive(Serialize)]
pub struct NewGrant<'a> {
    /// The grant.
    #[serde(flatten)]
    pub grant: &'a AccessGrant,
    /// `sk-…`: the grant's key (reads nothing while the grant is pending).
    pub key: &'a str,
}

impl<'a> From<&'a IssuedGrant> for NewGrant<'a> {
    fn from(g: &'a IssuedGrant) -> Self {
        NewGrant { grant: &g.grant, key: g.key.secret() }
    }
}

impl std::fmt::Debug for NewGrant<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewGrant").field("grant", &self.grant).field("key", &"<redacted>").finish()
    }
}

/// A document to index, as a caller sends it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DocumentInput {
    /// The caller's id; adding the same id again replaces the document.
    pub id: String,
    /// A title (searched).
    #[serde(default)]
    pub title: String,
    /// The body.
    pub text: String,
    /// `text` (default), `markdown` or `html`.
    #[serde(default)]
    pub format: Option<Format>,
    /// Metadata to filter searches on.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl From<DocumentInput> for Document {
    fn from(d: DocumentInput) -> Self {
        Document {
            id: d.id,
            title: d.title,
            body: d.text,
            format: d.format.unwrap_or(Format::Text),
            metadata: d.metadata,
        }
    }
}

/// A search as a caller asks for it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SearchInput {
    /// The query text.
    pub query: String,
    /// Hits wanted, 1..=100 (default 5).
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// Metadata filters, all of which must match.
    #[serde(default)]
    pub filters: BTreeMap<String, String>,
    /// Rerank by embedding similarity.
    #[serde(default)]
    pub hybrid: bool,
}

fn default_top_k() -> usize {
    5
}

/// A key just issued: its metadata and the secret, shown this once.
#[derive(Serialize)]
pub struct NewKey<'a> {
    /// The key's metadata.
    #[serde(flatten)]
    pub info: &'a soramai_core::ApiKeyInfo,
    /// `sk-…`: hand it over and forget it.
    pub key: &'a str,
}

impl<'a> From<&'a IssuedKey> for NewKey<'a> {
    fn from(k: &'a IssuedKey) -> Self {
        NewKey { info: &k.info, key: k.secret() }
    }
}

impl std::fmt::Debug for NewKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey").field("info", &self.info).field("key", &"<redacted>").finish()
    }
}

/// Token usage and credits of a tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UsageReport {
    /// Totals since the time asked for.
    #[serde(flatten)]
    pub summary: soramai_core::metering::UsageSummary,
    /// Credits left.
    pub balance: i64,
}

/// A grounded chat under way: the answer's stream and the sources its `[n]` citations name.
#[derive(Debug)]
pub struct GroundedChat {
    /// The answer.
    pub stream: GenerationStream,
    /// The prompt, with its numbered sources.
    pub prompt: GroundedPrompt,
}

/// One API key's view of a platform.
#[derive(Clone)]
pub struct Session {
    platform: Arc<Platform>,
    principal: Principal,
    /// Whoever made the session already recorded its one request in the audit logs (a server's
    /// middleware does, for a call under a break-glass grant).
    recorded: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("tenant", self.principal.tenant()).finish()
    }
}

fn not_found(kind: &'static str) -> PlatformError {
    soramai_core::Error::NotFound { kind }.into()
}

fn corpus_id(id: &str) -> Result<CorpusId, PlatformError> {
    CorpusId::new(id).map_err(|_| soramai_rag::Error::CorpusNotFound.into())
}

impl Platform {
    /// Opens a session for an API key (`sk-…`).
    pub fn session(self: &Arc<Self>, api_key: &str) -> Result<Session, PlatformError> {
        Ok(Session::new(self.clone(), self.authenticate(api_key)?))
    }
}

impl Session {
    /// A session for a caller already authenticated (a server's middleware checked the key).
    pub fn new(platform: Arc<Platform>, principal: Principal) -> Self {
        Self { platform, principal, recorded: false }
    }

    /// A session for one request that a server has already admitted and recorded (a call under
    /// a break-glass grant is in both audit logs once, by the server's middleware, which also
    /// refuses it once the grant has ended): its calls don't record it again.
    pub fn for_request(platform: Arc<Platform>, principal: Principal) -> Self {
        Self { platform, principal, recorded: true }
    }

    /// The key's principal: tenant, key id, scopes.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The platform.
    pub fn platform(&self) -> &Arc<Platform> {
        &self.platform
    }

    /// Records a call made under a break-glass grant in both audit logs, and fails once the
    /// grant has ended (so a session stops with its grant); nothing for other keys.
    pub(crate) fn acting(&self, operation: &str) -> Result<(), PlatformError> {
        if !self.recorded && self.principal.grant().is_some() {
            self.platform.record_request(&self.principal, &format!("session.{operation}"))?;
        }
        Ok(())
    }

    // ---- models and inference ----

    /// The base models and the tenant's fine-tuned ones.
    pub fn models(&self) -> Result<Vec<ModelInfo>, PlatformError> {
        self.acting("models")?;
        self.platform.list_models(&self.principal)
    }

    /// Starts a chat (streaming); collect it for the whole answer.
    pub fn chat(
        &self,
        model: &str,
        messages: Vec<ChatMessage>,
        options: &GenerationOptions,
    ) -> Result<GenerationStream, PlatformError> {
        self.acting("chat")?;
        let permit = self.platform.admit(&self.principal)?;
        Ok(self.platform.generate(&self.principal, model, &Prompt::Chat(messages), options)?.hold(permit))
    }

    /// Starts a raw-text completion (streaming).
    pub fn complete(
        &self,
        model: &str,
        prompt: &str,
        options: &GenerationOptions,
    ) -> Result<GenerationStream, PlatformError> {
        self.acting("complete")?;
        let permit = self.platform.admit(&self.principal)?;
        Ok(self.platform.generate(&self.principal, model, &Prompt::Text(prompt.to_owned()), options)?.hold(permit))
    }

    /// Starts a response (OpenAI's Responses API: see [`crate::responses`]); collect it for the
    /// whole response. Stored when it ends unless the request says `store: false`.
    pub fn create_response(&self, request: &crate::ResponseRequest) -> Result<crate::ResponseStream, PlatformError> {
        self.acting("create_response")?;
        let permit = self.platform.admit(&self.principal)?;
        Ok(self.platform.create_response(&self.principal, request)?.hold(permit))
    }

    /// A stored response of the tenant's.
    pub fn response(&self, id: &str) -> Result<crate::Response, PlatformError> {
        self.acting("response")?;
        self.platform.response(&self.principal, id)
    }

    /// A stored response's input items, in the order given.
    pub fn response_input_items(&self, id: &str) -> Result<Vec<serde_json::Value>, PlatformError> {
        self.acting("response_input_items")?;
        self.platform.response_input_items(&self.principal, id)
    }

    /// Deletes a stored response of the tenant's.
    pub fn delete_response(&self, id: &str) -> Result<(), PlatformError> {
        self.acting("delete_response")?;
        self.platform.delete_response(&self.principal, id)
    }

    /// Embeds texts.
    pub fn embed(&self, model: &str, inputs: &[String]) -> Result<Embeddings, PlatformError> {
        self.acting("embed")?;
        let _permit = self.platform.admit(&self.principal)?;
        self.platform.embed(&self.principal, model, inputs)
    }

    /// Uploads the tenant's own GGUF model (Pro and up), streamed from `source` (a file, a
    /// socket): sealed piece by piece, checked by the engine, served under its `gguf:` id.
    pub fn upload_model(
        &self,
        name: &str,
        source: &mut dyn std::io::Read,
    ) -> Result<crate::CustomModel, PlatformError> {
        self.acting("upload_model")?;
        self.platform.upload_model(&self.principal, name, source)
    }

    /// The tenant's own GGUF models.
    pub fn custom_models(&self) -> Result<Vec<crate::CustomModel>, PlatformError> {
        self.acting("custom_models")?;
        self.platform.custom_models(&self.principal)
    }

    /// Deletes one of the tenant's models: a fine-tuned `ft:` one or an own `gguf:` one.
    pub fn delete_model(&self, id: &str) -> Result<(), PlatformError> {
        self.acting("delete_model")?;
        self.platform.delete_model(&self.principal, id)
    }

    // ---- datasets ----

    /// Uploads a dataset (encrypted under the tenant's key).
    pub fn upload_dataset(&self, name: &str, bytes: &[u8]) -> Result<DatasetInfo, PlatformError> {
        self.acting("upload_dataset")?;
        Ok(self.platform.core.upload_dataset(&self.principal, name, bytes)?)
    }

    /// The tenant's datasets.
    pub fn datasets(&self) -> Result<Vec<DatasetInfo>, PlatformError> {
        self.acting("datasets")?;
        Ok(self.platform.core.list_datasets(&self.principal)?)
    }

    /// One dataset's metadata.
    pub fn dataset(&self, id: &str) -> Result<DatasetInfo, PlatformError> {
        self.acting("dataset")?;
        Ok(self.platform.core.dataset(&self.principal, &Platform::dataset_id(id)?)?)
    }

    /// A dataset's bytes (zeroized when dropped).
    pub fn download_dataset(&self, id: &str) -> Result<Zeroizing<Vec<u8>>, PlatformError> {
        self.acting("download_dataset")?;
        Ok(self.platform.core.download_dataset(&self.principal, &Platform::dataset_id(id)?)?)
    }

    /// Deletes a dataset (its key is destroyed: the bytes are unreadable from then on).
    pub fn delete_dataset(&self, id: &str) -> Result<(), PlatformError> {
        self.acting("delete_dataset")?;
        Ok(self.platform.core.delete_dataset(&self.principal, &Platform::dataset_id(id)?)?)
    }

    // ---- fine-tuning ----

    /// Submits a fine-tuning job.
    pub fn create_fine_tuning_job(&self, request: FineTuneRequest) -> Result<Job, PlatformError> {
        self.acting("create_fine_tuning_job")?;
        let dataset = Platform::dataset_id(&request.training_file)?;
        let examples = self.platform.core.dataset(&self.principal, &dataset)?.examples;
        let spec = FineTuneSpec {
            dataset,
            base_model: ModelId::new(&request.model).map_err(|_| not_found("model"))?,
            suffix: request.suffix,
            hyperparameters: request.hyperparameters.resolve(examples),
        };
        self.platform.create_fine_tuning_job(&self.principal, spec)
    }

    /// The tenant's fine-tuning jobs, newest first.
    pub fn fine_tuning_jobs(&self) -> Result<Vec<Job>, PlatformError> {
        self.acting("fine_tuning_jobs")?;
        self.platform.list_fine_tuning_jobs(&self.principal)
    }

    /// One fine-tuning job.
    pub fn fine_tuning_job(&self, id: &str) -> Result<Job, PlatformError> {
        self.acting("fine_tuning_job")?;
        self.platform.fine_tuning_job(&self.principal, id)
    }

    /// A job's events (progress, metrics, states), oldest first.
    pub fn fine_tuning_job_events(&self, id: &str) -> Result<Vec<JobEvent>, PlatformError> {
        self.acting("fine_tuning_job_events")?;
        Ok(self.platform.fine_tuning_job_events(&self.principal, id)?.1)
    }

    /// Cancels a job.
    pub fn cancel_fine_tuning_job(&self, id: &str) -> Result<Job, PlatformError> {
        self.acting("cancel_fine_tuning_job")?;
        self.platform.cancel_fine_tuning_job(&self.principal, id)
    }

    /// Waits until a job ends (succeeded, failed or cancelled) or `timeout` passes, and returns it
    /// as it then stands.
    pub fn wait_fine_tuning_job(&self, id: &str, timeout: Duration) -> Result<Job, PlatformError> {
        let deadline = Instant::now() + timeout;
        loop {
            let job = self.fine_tuning_job(id)?;
            if job.state.is_terminal() || Instant::now() >= deadline {
                return Ok(job);
            }
            std::thread::sleep(Duration::from_millis(200).min(deadline.saturating_duration_since(Instant::now())));
        }
    }

    // ---- retrieval ----

    /// Creates a corpus (a tier with RAG).
    pub fn create_corpus(&self, id: &str) -> Result<(), PlatformError> {
        self.acting("create_corpus")?;
        Ok(self.platform.rag()?.create_corpus(&self.principal, &CorpusId::new(id)?)?)
    }

    /// The tenant's corpora.
    pub fn corpora(&self) -> Result<Vec<String>, PlatformError> {
        self.acting("corpora")?;
        Ok(self.platform.rag()?.list_corpora(&self.principal)?.into_iter().map(|c| c.as_str().to_owned()).collect())
    }

    /// Deletes a corpus and its index.
    pub fn delete_corpus(&self, id: &str) -> Result<(), PlatformError> {
        self.acting("delete_corpus")?;
        Ok(self.platform.rag()?.delete_corpus(&self.principal, &corpus_id(id)?)?)
    }

    /// Adds (or replaces) documents.
    pub fn add_documents(&self, corpus: &str, documents: Vec<DocumentInput>) -> Result<IngestReport, PlatformError> {
        self.add_documents_until(corpus, documents, &|| false)
    }

    /// [`Session::add_documents`], stopped (committing nothing) when `cancelled` says so or the
    /// platform begins shutting down; bounded by the tenant's tier (bytes and chunks per request,
    /// ingestions at once).
    pub fn add_documents_until(
        &self,
        corpus: &str,
        documents: Vec<DocumentInput>,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<IngestReport, PlatformError> {
        self.acting("add_documents")?;
        let docs: Vec<Document> = documents.into_iter().map(Document::from).collect();
        let stop = || cancelled() || self.platform.stopping();
        Ok(self.platform.rag()?.add_documents_until(&self.principal, &corpus_id(corpus)?, &docs, &stop)?)
    }

    /// Queues an ingestion of `documents` into `corpus` and returns its job at once (see
    /// [`Platform::start_ingestion`]); [`Session::wait_ingestion`] waits for it.
    pub fn start_ingestion(&self, corpus: &str, documents: Vec<DocumentInput>) -> Result<Job, PlatformError> {
        self.acting("start_ingestion")?;
        let docs: Vec<Document> = documents.into_iter().map(Document::from).collect();
        self.platform.start_ingestion(&self.principal, corpus, &docs)
    }

    /// One of the corpus's ingestions.
    pub fn ingestion(&self, corpus: &str, id: &str) -> Result<Job, PlatformError> {
        self.acting("ingestion")?;
        self.platform.ingestion(&self.principal, corpus, id)
    }

    /// The corpus's ingestions, newest first.
    pub fn ingestions(&self, corpus: &str) -> Result<Vec<Job>, PlatformError> {
        self.acting("ingestions")?;
        self.platform.ingestions(&self.principal, corpus)
    }

    /// Cancels an ingestion; nothing of it is committed.
    pub fn cancel_ingestion(&self, corpus: &str, id: &str) -> Result<Job, PlatformError> {
        self.acting("cancel_ingestion")?;
        self.platform.cancel_ingestion(&self.principal, corpus, id)
    }

    /// Waits until an ingestion ends or `timeout` passes, and returns it as it then stands.
    pub fn wait_ingestion(&self, corpus: &str, id: &str, timeout: Duration) -> Result<Job, PlatformError> {
        let deadline = Instant::now() + timeout;
        loop {
            let job = self.ingestion(corpus, id)?;
            if job.state.is_terminal() || Instant::now() >= deadline {
                return Ok(job);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The ids of a corpus's documents.
    pub fn documents(&self, corpus: &str) -> Result<Vec<String>, PlatformError> {
        self.acting("documents")?;
        Ok(self.platform.rag()?.list_documents(&self.principal, &corpus_id(corpus)?)?)
    }

    /// Deletes a document.
    pub fn delete_document(&self, corpus: &str, id: &str) -> Result<(), PlatformError> {
        self.acting("delete_document")?;
        Ok(self.platform.rag()?.delete_documents(&self.principal, &corpus_id(corpus)?, &[id.to_owned()])?)
    }

    /// Searches a corpus.
    pub fn search(&self, corpus: &str, search: SearchInput) -> Result<Vec<Hit>, PlatformError> {
        self.acting("search")?;
        let mut request = SearchRequest::new(search.query, search.top_k);
        request.filters = search.filters.into_iter().collect();
        request.hybrid = search.hybrid;
        Ok(self.platform.rag()?.search(&self.principal, &corpus_id(corpus)?, &request)?)
    }

    /// Answers a question from a corpus, citing its sources.
    pub fn grounded_chat(
        &self,
        model: &str,
        corpus: &str,
        question: &str,
        retrieval: &Retrieval,
        options: &GenerationOptions,
    ) -> Result<GroundedChat, PlatformError> {
        self.acting("grounded_chat")?;
        let permit = self.platform.admit(&self.principal)?;
        let (stream, prompt) =
            self.platform.grounded_chat(&self.principal, model, corpus, question, retrieval, options)?;
        Ok(GroundedChat { stream: stream.hold(permit), prompt })
    }

    // ---- keys, tenants, credits ----

    /// Issues a key (admin scope); the secret is in the result this once.
    pub fn create_api_key(&self, request: KeyRequest) -> Result<IssuedKey, PlatformError> {
        self.acting("create_api_key")?;
        let mut options = KeyOptions::new(request.name, &request.scopes);
        options.expires_in = request.expires_in_seconds.map(Duration::from_secs);
        let tenant = request.tenant.unwrap_or_else(|| self.principal.tenant().as_str().to_owned());
        self.platform.create_api_key(&self.principal, &tenant, options)
    }

    /// The tenant's keys (never their secrets).
    pub fn api_keys(&self) -> Result<Vec<soramai_core::ApiKeyInfo>, PlatformError> {
        self.acting("api_keys")?;
        Ok(self.platform.core.list_api_keys(&self.principal)?)
    }

    /// Revokes a key at once.
    pub fn revoke_api_key(&self, id: &str) -> Result<(), PlatformError> {
        self.acting("revoke_api_key")?;
        Ok(self.platform.core.revoke_api_key(&self.principal, &key_id(id)?)?)
    }

    /// Replaces a key; the old one keeps working for `grace`.
    pub fn rotate_api_key(&self, id: &str, grace: Duration) -> Result<IssuedKey, PlatformError> {
        self.acting("rotate_api_key")?;
        Ok(self.platform.core.rotate_api_key(&self.principal, &key_id(id)?, grace)?)
    }

    /// Creates a tenant (platform admin).
    pub fn create_tenant(&self, id: &str, tier: Tier) -> Result<Tenant, PlatformError> {
        self.acting("create_tenant")?;
        self.platform.create_tenant(&self.principal, id, tier)
    }

    /// Moves a tenant to another tier (platform admin).
    pub fn set_tier(&self, id: &str, tier: Tier) -> Result<Tenant, PlatformError> {
        self.acting("set_tier")?;
        self.platform.set_tier(&self.principal, id, tier)
    }

    /// Every tenant (platform admin).
    pub fn tenants(&self) -> Result<Vec<Tenant>, PlatformError> {
        self.acting("tenants")?;
        self.platform.tenants(&self.principal)
    }

    /// Grants credits (platform admin).
    pub fn grant_credits(&self, tenant: &str, amount: i64, reference: &str) -> Result<Receipt, PlatformError> {
        self.acting("grant_credits")?;
        self.platform.grant_credits(&self.principal, tenant, amount, reference)
    }

    /// Closes a tenant's account (its own admin, or a platform admin): access ends now, the data
    /// goes after `window_days` (1 to 30, default 30) or now with `immediate`.
    pub fn close_tenant(&self, id: &str, immediate: bool, window_days: Option<u32>) -> Result<Closure, PlatformError> {
        self.acting("close_tenant")?;
        let window =
            window_days.map_or(soramai_core::closing::CLOSE_WINDOW, |d| Duration::from_secs(u64::from(d) * 86_400));
        self.platform.close_tenant(&self.principal, id, CloseOptions { window, immediate })
    }

    /// Takes back a close within its window (platform admin).
    pub fn reopen_tenant(&self, id: &str) -> Result<(), PlatformError> {
        self.acting("reopen_tenant")?;
        self.platform.reopen_tenant(&self.principal, id)
    }

    // ---- break-glass access ----

    /// Asks for break-glass access to a tenant (platform admin); the key is in the result once.
    pub fn request_access_grant(&self, tenant: &str, request: GrantInput) -> Result<IssuedGrant, PlatformError> {
        self.acting("request_access_grant")?;
        let request = GrantRequest {
            reason: request.reason,
            scopes: request.scopes,
            ttl: request.ttl_seconds.map(Duration::from_secs),
        };
        self.platform.request_access_grant(&self.principal, tenant, request)
    }

    /// Approves a pending grant on this tenant (the tenant's admin).
    pub fn approve_access_grant(&self, id: &str) -> Result<AccessGrant, PlatformError> {
        self.acting("approve_access_grant")?;
        self.platform.approve_access_grant(&self.principal, id)
    }

    /// Ends a grant at once (the tenant's admin, or the operator's).
    pub fn revoke_access_grant(&self, id: &str) -> Result<AccessGrant, PlatformError> {
        self.acting("revoke_access_grant")?;
        self.platform.revoke_access_grant(&self.principal, id)
    }

    /// The grants on this tenant, or those this (operator's) tenant asked for.
    pub fn access_grants(&self) -> Result<Vec<AccessGrant>, PlatformError> {
        self.acting("access_grants")?;
        self.platform.access_grants(&self.principal)
    }

    // ---- audit and usage ----

    /// The tenant's audit log (admin scope).
    pub fn audit_log(&self) -> Result<Vec<AuditRecord>, PlatformError> {
        self.acting("audit_log")?;
        Ok(self.platform.core.audit_log(&self.principal)?)
    }

    /// Verifies the tenant's audit chain (admin scope). A broken chain is an integrity error
    /// naming the first bad record; see [`Session::audit_verification`] for the whole report.
    pub fn verify_audit(&self) -> Result<AuditReport, PlatformError> {
        let check = self.audit_verification()?;
        match check.first_bad_record {
            None => Ok(AuditReport { records: check.records }),
            Some(seq) => Err(soramai_core::Error::AuditChainBroken { seq }.into()),
        }
    }

    /// Verifies the tenant's audit chain (admin scope) and reports how far it holds: the first
    /// record that does not verify and why. A broken chain is logged and recorded as an integrity
    /// failure in the tenant's audit log.
    pub fn audit_verification(&self) -> Result<AuditVerification, PlatformError> {
        self.acting("verify_audit")?;
        self.principal.require(Scope::Admin)?;
        Ok(self.platform.core.check_audit(self.principal.tenant())?)
    }

    /// Token usage since `since_ms` (Unix ms) and the credits left.
    pub fn usage(&self, since_ms: i64) -> Result<UsageReport, PlatformError> {
        self.acting("usage")?;
        let summary = self.platform.core.usage_summary(&self.principal, since_ms)?;
        Ok(UsageReport { summary, balance: self.platform.core.balance(self.principal.tenant())? })
    }
}

fn key_id(id: &str) -> Result<ApiKeyId, PlatformError> {
    ApiKeyId::new(id).map_err(|_| not_found("api key"))
}
