//! Models: the base models an operator registers (public GGUF files, not tenant data) and the
//! fine-tuned models that `fine_tune` jobs produce.
//!
//! A fine-tuned model is a LoRA adapter in PEFT layout, stored as two objects encrypted under its
//! tenant's key, and registered under a model id `ft:<base>:<tenant>:<suffix>:<hex>` that only its
//! own tenant can resolve: another tenant asking for it gets the same `NotFound` as for an id that
//! never existed.
//!
//! A customer's own GGUF (Pro and up) is a base model of one tenant: streamed in through a
//! [`CustomModelUpload`] that seals it chunk by chunk under the tenant's key on the tenant's store
//! (never held whole in memory, never on disk in the clear), committed only after its header has
//! passed the engine's checks, and registered as `gguf:<tenant>:<name>:<hex>`, an id that only
//! its tenant resolves, to serve or to fine-tune on.

use std::path::{Path, PathBuf};

use crate::params;
use crate::store::{Db, OptionalExt as _};
use serde::Serialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::audit::vocabulary::{Action, Actor};
use crate::auth::{Principal, Scope};
use crate::clock::Millis;
use crate::core::{Core, ObjectReader, ObjectWriter};
use crate::error::{Error, Result};
use crate::ids::{JobId, ModelId, ObjectPath, TenantId, random_hex};

/// The adapter's files, as PEFT names them.
pub const ADAPTER_FILES: [&str; 2] = ["adapter_config.json", "adapter_model.safetensors"];

/// A registered base model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BaseModel {
    /// Its id (`smollm2-135m-instruct`).
    pub id: ModelId,
    /// The GGUF file.
    pub path: PathBuf,
}

/// A fine-tuned model of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FineTunedModel {
    /// `ft:<base>:<tenant>:<suffix>:<hex>`.
    pub id: ModelId,
    /// Owner.
    pub tenant: TenantId,
    /// The base model it adapts.
    pub base: ModelId,
    /// The job that trained it.
    pub job: JobId,
    /// Tokens that carried loss over the whole run.
    pub trained_tokens: u64,
    /// Registered, Unix ms.
    pub created_at: Millis,
}

/// A fine-tuned model's adapter, decrypted (zeroed when dropped).
#[derive(Debug)]
pub struct AdapterFiles {
    /// The model record.
    pub model: FineTunedModel,
    /// `adapter_config.json`.
    pub config: Zeroizing<Vec<u8>>,
    /// `adapter_model.safetensors`.
    pub weights: Zeroizing<Vec<u8>>,
}

fn object_path(id: &ModelId, file: &str) -> Result<ObjectPath> {
    // Object paths allow no ':'; the id's random tail names the folder.
    let tail = id.as_str().rsplit(':').next().unwrap_or_default();
    ObjectPath::new(format!("models/ft-{tail}/{file}"))
}

/// Checks a suffix: up to 40 characters of `a-z0-9-_`.
pub(crate) fn check_suffix(s: &str) -> Result<()> {
    check_label(s, "suffix")
}

/// A model suffix or name: 1 to 40 characters of `a-z0-9-_`.
fn check_label(s: &str, what: &str) -> Result<()> {
    if s.is_empty()
        || s.len() > 40
        || !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b))
    {
        return Err(Error::InvalidArgument(format!("a model {what} is 1 to 40 characters of a-z, 0-9, '-' and '_'")));
    }
    Ok(())
}

/// The prefix of a customer GGUF's model id.
pub const CUSTOM_MODEL_PREFIX: &str = "gguf:";

/// Whether a model id names a customer's own GGUF (`gguf:…`).
pub fn is_custom_model(id: &ModelId) -> bool {
    id.as_str().starts_with(CUSTOM_MODEL_PREFIX)
}

/// A customer's own GGUF base model (Pro and up).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CustomModel {
    /// `gguf:<tenant>:<name>:<hex>`.
    pub id: ModelId,
    /// Owner.
    pub tenant: TenantId,
    /// The name given at upload.
    pub name: String,
    /// Size of the GGUF file.
    pub bytes: u64,
    /// SHA-256 of the GGUF file, hex (for the customer to match against their copy).
    pub sha256: String,
    /// `general.architecture` (`llama`, `qwen2`…).
    pub architecture: String,
    /// Registered, Unix ms.
    pub created_at: Millis,
}

/// A customer GGUF upload in progress: each piece is sealed under the tenant key straight into a
/// new blob on the tenant's store as it arrives (memory holds one chunk), hashed, and counted
/// against the size limit. Nothing is visible until [`Core::commit_custom_model`]; dropping the
/// upload discards it.
pub struct CustomModelUpload {
    id: ModelId,
    name: String,
    writer: ObjectWriter,
    hasher: Sha256,
    len: u64,
    limit: u64,
}

impl std::fmt::Debug for CustomModelUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomModelUpload").field("id", &self.id).field("len", &self.len).finish_non_exhaustive()
    }
}

impl CustomModelUpload {
    /// Seals the next bytes of the file. Past the size limit: [`Error::TooLarge`], and the upload
    /// is to be dropped.
    pub fn append(&mut self, data: &[u8]) -> Result<()> {
        let len = self.len.saturating_add(data.len() as u64);
        if len > self.limit {
            return Err(Error::TooLarge { what: "model", limit: self.limit });
        }
        std::io::Write::write_all(&mut self.writer, data)?;
        self.hasher.update(data);
        self.len = len;
        Ok(())
    }

    /// Bytes received so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing has arrived yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The id the model gets once committed.
    pub fn id(&self) -> &ModelId {
        &self.id
    }
}

fn custom_model_path(id: &ModelId) -> Result<ObjectPath> {
    let tail = id.as_str().rsplit(':').next().unwrap_or_default();
    ObjectPath::new(format!("models/gguf-{tail}/model.gguf"))
}

impl Core {
    /// Registers (or re-points) a base model that fine-tuning jobs may train on (operator).
    pub fn register_base_model(&self, id: &ModelId, path: &Path) -> Result<BaseModel> {
        if id.as_str().starts_with("ft:") || is_custom_model(id) {
            return Err(Error::InvalidArgument("a base model id cannot start with \"ft:\" or \"gguf:\"".into()));
        }
        let path = path.canonicalize()?;
        if !path.is_file() {
            return Err(Error::InvalidArgument("a base model is a GGUF file".into()));
        }
        let text = path.to_str().ok_or_else(|| Error::InvalidArgument("the model path is not UTF-8".into()))?;
        let now = self.now();
        self.write(|tx| {
            tx.execute(
                "INSERT INTO base_models (id, path, registered_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET path = excluded.path, registered_at = excluded.registered_at",
                params![id.as_str(), text, now],
            )?;
            Ok(())
        })?;
        Ok(BaseModel { id: id.clone(), path })
    }

    /// A registered base model.
    pub fn base_model(&self, id: &ModelId) -> Result<BaseModel> {
        let path: Option<String> = self.read(|c| {
            c.query_row("SELECT path FROM base_models WHERE id = ?1", [id.as_str()], |r| r.get(0)).optional()
        })?;
        let path = path.ok_or(Error::NotFound { kind: "base model" })?;
        Ok(BaseModel { id: id.clone(), path: PathBuf::from(path) })
    }

    /// Every registered base model.
    pub fn base_models(&self) -> Result<Vec<BaseModel>> {
        self.read(|c| {
            let rows = c.query_map("SELECT id, path FROM base_models ORDER BY id", (), |r| {
                Ok((r.get::<String>(0)?, r.get::<String>(1)?))
            })?;
            rows.into_iter()
                .map(|(id, path)| Ok(BaseModel { id: ModelId::new(id)?, path: PathBuf::from(path) }))
                .collect()
        })
    }

    /// Stores a finished job's adapter encrypted under the tenant key and registers its model id,
    /// all or nothing: the model row commits with the second file, and a failure removes the first.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn register_fine_tuned(
        &self,
        tenant: &TenantId,
        base: &ModelId,
        suffix: Option<&str>,
        job: &JobId,
        trained_tokens: u64,
        files: &[(String, Zeroizing<Vec<u8>>)],
        extra: impl FnOnce(&Db<'_>) -> Result<()>,
    ) -> Result<FineTunedModel> {
        let file = |name: &str| {
            files
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, b)| b)
                .ok_or_else(|| Error::Runner(format!("the job produced no {name}")))
        };
        let config = file(ADAPTER_FILES[0])?;
        let weights = file(ADAPTER_FILES[1])?;
        let id = ModelId::new(format!(
            "ft:{}:{}:{}:{}",
            base.as_str(),
            tenant.as_str(),
            suffix.unwrap_or("adapter"),
            random_hex(6)
        ))?;
        let now = self.now();
        let first = object_path(&id, ADAPTER_FILES[0])?;
        self.put_object(tenant, &first, config)?;
        let second = object_path(&id, ADAPTER_FILES[1])?;
        let registered = self.put_object_with(tenant, &second, weights, |tx| {
            extra(tx)?;
            tx.execute(
                "INSERT INTO fine_tuned_models (id, tenant_id, base, job_id, trained_tokens, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![id.as_str(), tenant.as_str(), base.as_str(), job.as_str(), trained_tokens, now],
            )?;
            self.audit_tx(tx, tenant, &Actor::System, Action::ModelCreated, id.as_str(), serde_json::json!({"job": job.as_str(), "base": base.as_str()}))
        });
        if let Err(e) = registered {
            let _ = self.delete_object(tenant, &first);
            return Err(e);
        }
        Ok(FineTunedModel {
            id,
            tenant: tenant.clone(),
            base: base.clone(),
            job: job.clone(),
            trained_tokens,
            created_at: now,
        })
    }

    fn fine_tuned_row(&self, tenant: &TenantId, id: &ModelId) -> Result<FineTunedModel> {
        let row: Option<(String, String, u64, Millis)> = self.read(|c| {
            c.query_row(
                "SELECT base, job_id, trained_tokens, created_at FROM fine_tuned_models WHERE id = ?1 AND tenant_id = ?2",
                params![id.as_str(), tenant.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
        })?;
        let (base, job, trained_tokens, created_at) = row.ok_or(Error::NotFound { kind: "model" })?;
        Ok(FineTunedModel {
            id: id.clone(),
            tenant: tenant.clone(),
            base: ModelId::new(base)?,
            job: JobId::new(job)?,
            trained_tokens,
            created_at,
        })
    }

    /// One of the principal's tenant's fine-tuned models (inference or train scope).
    pub fn fine_tuned_model(&self, principal: &Principal, id: &ModelId) -> Result<FineTunedModel> {
        if principal.require(Scope::Inference).is_err() {
            principal.require(Scope::Train)?;
        }
        self.fine_tuned_row(principal.tenant(), id)
    }

    /// The principal's tenant's fine-tuned models, newest first.
    pub fn list_fine_tuned_models(&self, principal: &Principal) -> Result<Vec<FineTunedModel>> {
        if principal.require(Scope::Inference).is_err() {
            principal.require(Scope::Train)?;
        }
        let ids: Vec<String> = self.read(|c| {
            let rows = c.query_map(
                "SELECT id FROM fine_tuned_models WHERE tenant_id = ?1 ORDER BY created_at DESC, id",
                [principal.tenant().as_str()],
                |r| r.get(0),
            )?;
            Ok(rows)
        })?;
        ids.into_iter().map(|id| self.fine_tuned_row(principal.tenant(), &ModelId::new(id)?)).collect()
    }

    /// A fine-tuned model's adapter files (`adapter_config.json`, `adapter_model.safetensors`),
    /// decrypted, for loading into the engine (inference scope). Audited.
    pub fn fine_tuned_adapter(&self, principal: &Principal, id: &ModelId) -> Result<AdapterFiles> {
        principal.require(Scope::Inference)?;
        let model = self.fine_tuned_row(principal.tenant(), id)?;
        let config = self.get_object(principal.tenant(), &object_path(id, ADAPTER_FILES[0])?)?;
        let weights = self.get_object(principal.tenant(), &object_path(id, ADAPTER_FILES[1])?)?;
        self.audit(principal.tenant(), principal.actor(), Action::ModelAccessed, id.as_str(), serde_json::json!({}))?;
        Ok(AdapterFiles { model, config, weights })
    }

    /// Deletes a fine-tuned model and its adapter (train scope).
    pub fn delete_fine_tuned_model(&self, principal: &Principal, id: &ModelId) -> Result<()> {
        principal.require(Scope::Train)?;
        let tenant = principal.tenant();
        self.fine_tuned_row(tenant, id)?;
        self.delete_object(tenant, &object_path(id, ADAPTER_FILES[0])?)?;
        self.delete_object_with(tenant, &object_path(id, ADAPTER_FILES[1])?, |tx| {
            tx.execute(
                "DELETE FROM fine_tuned_models WHERE id = ?1 AND tenant_id = ?2",
                params![id.as_str(), tenant.as_str()],
            )?;
            self.audit_tx(tx, tenant, principal.actor(), Action::ModelDeleted, id.as_str(), serde_json::json!({}))
        })
    }

    // ---- customer GGUF (Pro and up) -----------------------------------------------------------

    /// Starts a customer GGUF upload (train scope, a tier with custom GGUF upload: Pro and up).
    /// The caller streams the file through [`CustomModelUpload::append`], checks its header, then
    /// commits it with [`Core::commit_custom_model`].
    pub fn begin_custom_model(&self, principal: &Principal, name: &str) -> Result<CustomModelUpload> {
        principal.require(Scope::Train)?;
        let tenant = self.tenant(principal.tenant())?;
        if !tenant.tier.policy().custom_gguf_upload {
            return Err(Error::NotAllowed { tier: tenant.tier, what: "uploading your own GGUF model (Pro and up)" });
        }
        check_label(name, "name")?;
        let id = ModelId::new(format!("{CUSTOM_MODEL_PREFIX}{}:{name}:{}", tenant.id.as_str(), random_hex(6)))?;
        let writer = self.object_writer(&tenant.id, &custom_model_path(&id)?)?;
        Ok(CustomModelUpload {
            id,
            name: name.to_owned(),
            writer,
            hasher: Sha256::new(),
            len: 0,
            limit: self.limits().max_custom_model_bytes,
        })
    }

    /// Commits an upload whose header the engine has checked: seals its last chunk, then records
    /// the model and its audit record in one transaction. On failure nothing stays.
    pub fn commit_custom_model(&self, upload: CustomModelUpload, architecture: &str) -> Result<CustomModel> {
        if architecture.is_empty() || architecture.len() > 64 || !architecture.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::InvalidArgument("the architecture is 1 to 64 printable characters".into()));
        }
        let CustomModelUpload { id, name, writer, hasher, len, .. } = upload;
        let tenant = writer.tenant().clone();
        let path = custom_model_path(&id)?;
        let sha256 = hex::encode(hasher.finalize());
        let now = self.now();
        let staged = self.seal_writer(writer)?;
        self.commit_staged(&tenant, &path, &staged, |tx| {
            tx.execute(
                "INSERT INTO custom_models (id, tenant_id, name, bytes, sha256, architecture, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![id.as_str(), tenant.as_str(), name, len, sha256, architecture, now],
            )?;
            self.audit_tx(tx, &tenant, &Actor::System, Action::ModelCreated, id.as_str(), serde_json::json!({"kind": "gguf", "bytes": len, "sha256": sha256}))
        })?;
        Ok(CustomModel { id, tenant, name, bytes: len, sha256, architecture: architecture.to_owned(), created_at: now })
    }

    fn custom_model_row(&self, tenant: &TenantId, id: &ModelId) -> Result<CustomModel> {
        let row: Option<(String, u64, String, String, Millis)> = self.read(|c| {
            c.query_row(
                "SELECT name, bytes, sha256, architecture, created_at FROM custom_models WHERE id = ?1 AND tenant_id = ?2",
                params![id.as_str(), tenant.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()
        })?;
        let (name, bytes, sha256, architecture, created_at) = row.ok_or(Error::NotFound { kind: "model" })?;
        Ok(CustomModel { id: id.clone(), tenant: tenant.clone(), name, bytes, sha256, architecture, created_at })
    }

    /// One of the principal's tenant's own GGUF models (inference or train scope); another
    /// tenant's is not found.
    pub fn custom_model(&self, principal: &Principal, id: &ModelId) -> Result<CustomModel> {
        if principal.require(Scope::Inference).is_err() {
            principal.require(Scope::Train)?;
        }
        self.custom_model_row(principal.tenant(), id)
    }

    /// The principal's tenant's own GGUF models, newest first.
    pub fn list_custom_models(&self, principal: &Principal) -> Result<Vec<CustomModel>> {
        if principal.require(Scope::Inference).is_err() {
            principal.require(Scope::Train)?;
        }
        let ids: Vec<String> = self.read(|c| {
            c.query_map(
                "SELECT id FROM custom_models WHERE tenant_id = ?1 ORDER BY created_at DESC, id",
                [principal.tenant().as_str()],
                |r| r.get(0),
            )
        })?;
        ids.into_iter().map(|id| self.custom_model_row(principal.tenant(), &ModelId::new(id)?)).collect()
    }

    /// Opens one of the principal's tenant's own GGUF models for decryption into memory
    /// (inference scope). Audited.
    pub fn open_custom_model(&self, principal: &Principal, id: &ModelId) -> Result<(CustomModel, ObjectReader)> {
        principal.require(Scope::Inference)?;
        let model = self.custom_model_row(principal.tenant(), id)?;
        let reader = self.open_object(principal.tenant(), &custom_model_path(id)?)?;
        self.audit(
            principal.tenant(),
            principal.actor(),
            Action::ModelAccessed,
            id.as_str(),
            serde_json::json!({"kind": "gguf"}),
        )?;
        Ok((model, reader))
    }

    /// A job's view of its tenant's GGUF model (the worker streams it to the job's process).
    pub(crate) fn custom_model_reader(&self, tenant: &TenantId, id: &ModelId) -> Result<ObjectReader> {
        self.custom_model_row(tenant, id)?;
        self.open_object(tenant, &custom_model_path(id)?)
    }

    /// Checks that a fine-tuning job's base model is one the tenant may train on: a registered
    /// base model, or one of its own GGUF models.
    pub(crate) fn check_base_for(&self, tenant: &TenantId, id: &ModelId) -> Result<()> {
        if is_custom_model(id) { self.custom_model_row(tenant, id).map(drop) } else { self.base_model(id).map(drop) }
    }

    /// Deletes one of the tenant's own GGUF models (train scope). Refused while fine-tuned models
    /// of the tenant are built on it: those go first.
    pub fn delete_custom_model(&self, principal: &Principal, id: &ModelId) -> Result<()> {
        principal.require(Scope::Train)?;
        let tenant = principal.tenant();
        self.custom_model_row(tenant, id)?;
        let dependents: u64 = self.read(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM fine_tuned_models WHERE tenant_id = ?1 AND base = ?2",
                params![tenant.as_str(), id.as_str()],
                |r| r.get(0),
            )
        })?;
        if dependents > 0 {
            return Err(Error::InvalidArgument(format!(
                "{dependents} fine-tuned model(s) are built on this model: delete them first"
            )));
        }
        self.delete_object_with(tenant, &custom_model_path(id)?, |tx| {
            tx.execute(
                "DELETE FROM custom_models WHERE id = ?1 AND tenant_id = ?2",
                params![id.as_str(), tenant.as_str()],
            )?;
            self.audit_tx(
                tx,
                tenant,
                principal.actor(),
                Action::ModelDeleted,
                id.as_str(),
                serde_json::json!({"kind": "gguf"}),
            )
        })
    }
}
