//! Models: the base models an operator registers (public GGUF files, not tenant data) and the
//! fine-tuned models that `fine_tune` jobs produce.
//!
//! A fine-tuned model is a LoRA adapter in PEFT layout, stored as two objects encrypted under its
//! tenant's key, and registered under a model id `ft:<base>:<tenant>:<suffix>:<hex>` that only its
//! own tenant can resolve: another tenant asking for it gets the same `NotFound` as for an id that
//! never existed.

use std::path::{Path, PathBuf};

use crate::params;
use crate::store::{Db, OptionalExt as _};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::audit::{Action, Actor};
use crate::auth::{Principal, Scope};
use crate::clock::Millis;
use crate::core::Core;
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
    if s.is_empty()
        || s.len() > 40
        || !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b))
    {
        return Err(Error::InvalidArgument("a model suffix is 1 to 40 characters of a-z, 0-9, '-' and '_'".into()));
    }
    Ok(())
}

impl Core {
    /// Registers (or re-points) a base model that fine-tuning jobs may train on (operator).
    pub fn register_base_model(&self, id: &ModelId, path: &Path) -> Result<BaseModel> {
        if id.as_str().starts_with("ft:") {
            return Err(Error::InvalidArgument("a base model id cannot start with \"ft:\"".into()));
        }
        let path = path.canonicalize()?;
        if !path.is_file() {
            return Err(Error::InvalidArgument("a base model is a GGUF file".into()));
        }
        let text = path.to_str().ok_or_else(|| Error::InvalidArgument("the model path is not UTF-8".into()))?;
        let now = self.now();
        self.meta.write(|tx| {
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
        let path: Option<String> = self.meta.read(|c| {
            c.query_row("SELECT path FROM base_models WHERE id = ?1", [id.as_str()], |r| r.get(0)).optional()
        })?;
        let path = path.ok_or(Error::NotFound { kind: "base model" })?;
        Ok(BaseModel { id: id.clone(), path: PathBuf::from(path) })
    }

    /// Every registered base model.
    pub fn base_models(&self) -> Result<Vec<BaseModel>> {
        self.meta.read(|c| {
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
        let row: Option<(String, String, u64, Millis)> = self.meta.read(|c| {
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
        let ids: Vec<String> = self.meta.read(|c| {
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
}
