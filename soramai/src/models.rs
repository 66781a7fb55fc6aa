//! A customer's own GGUF (Pro and up): uploaded as a stream, checked by the engine before it is
//! accepted, then served and fine-tuned for its tenant only; and model deletion.
//!
//! The upload never holds the file whole: each piece is sealed under the tenant's key into the
//! tenant's store as it arrives ([`soramai_core::CustomModelUpload`]), and only the header (at
//! most [`MAX_GGUF_HEADER_BYTES`]) is kept in memory, zeroed afterwards, for
//! [`Engine::check_header`]: the GGUF reader's hostile-input checks over the header and the
//! length (every count, offset and size; each tensor inside the file, aligned, without overlap),
//! the architecture's hyper-parameters, every tensor the model loads with its shape and format,
//! the tokenizer and its chat template. Nothing is committed unless all of that passes.

use std::io::Read;

use soramai_core::{CustomModel, ModelId, Principal};
use soramai_kernels::Engine;
use zeroize::Zeroizing;

use crate::{Platform, PlatformError};

/// The largest GGUF header (metadata and tensor table) an upload may have.
pub const MAX_GGUF_HEADER_BYTES: usize = 64 << 20;

/// Size of the pieces an upload is read in.
const PIECE: usize = 1 << 20;

impl Platform {
    /// Uploads a customer's own GGUF model (train scope; Pro and up, else `NotAllowed`), read
    /// from `source` to its end. Returns the model, served under its `gguf:` id to its tenant
    /// only, and a base that fine-tuning jobs of that tenant can name. A file that is not a
    /// GGUF this engine can serve is refused with `InvalidArgument`, one over the size limit with
    /// `TooLarge`; either way nothing is stored.
    pub fn upload_model(
        &self,
        principal: &Principal,
        name: &str,
        source: &mut dyn Read,
    ) -> Result<CustomModel, PlatformError> {
        let mut upload = self.core.begin_custom_model(principal, name)?;
        let mut head = Zeroizing::new(Vec::with_capacity(MAX_GGUF_HEADER_BYTES));
        let mut piece = Zeroizing::new(vec![0u8; PIECE]);
        loop {
            let n = match source.read(&mut piece) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(soramai_core::Error::Io(e).into()),
            };
            let keep = n.min(MAX_GGUF_HEADER_BYTES - head.len());
            head.extend_from_slice(&piece[..keep]);
            upload.append(&piece[..n])?;
        }
        let header = Engine::check_header(&head, upload.len()).map_err(|e| {
            let hint = if head.len() == MAX_GGUF_HEADER_BYTES { " (or a header over 64 MiB)" } else { "" };
            PlatformError::InvalidArgument(format!("not a GGUF model this engine can serve{hint}: {e}"))
        })?;
        Ok(self.core.commit_custom_model(upload, &header.config.arch)?)
    }

    /// The caller's tenant's own GGUF models, newest first.
    pub fn custom_models(&self, principal: &Principal) -> Result<Vec<CustomModel>, PlatformError> {
        Ok(self.core.list_custom_models(principal)?)
    }

    /// One of the caller's tenant's own GGUF models (another tenant's is not found).
    pub fn custom_model(&self, principal: &Principal, id: &str) -> Result<CustomModel, PlatformError> {
        Ok(self.core.custom_model(principal, &model_id(id)?)?)
    }

    /// Deletes one of the caller's tenant's models (train scope): a fine-tuned `ft:` model, or an
    /// own `gguf:` model once no fine-tuned model is built on it. It stops being served at once;
    /// a base model registered by the operator cannot be deleted this way (not found).
    pub fn delete_model(&self, principal: &Principal, id: &str) -> Result<(), PlatformError> {
        let id = model_id(id)?;
        if soramai_core::is_custom_model(&id) {
            self.core.delete_custom_model(principal, &id)?;
            self.forget_model(&id, None);
        } else if id.as_str().starts_with("ft:") {
            principal.require(soramai_core::Scope::Train)?;
            let model = self.core.fine_tuned_model(principal, &id)?;
            self.core.delete_fine_tuned_model(principal, &id)?;
            self.forget_model(&id, Some(&model.base));
        } else {
            return Err(soramai_core::Error::NotFound { kind: "model" }.into());
        }
        Ok(())
    }
}

/// A model id from a caller; a malformed one is as unknown as a missing one.
fn model_id(id: &str) -> Result<ModelId, PlatformError> {
    ModelId::new(id).map_err(|_| soramai_core::Error::NotFound { kind: "model" }.into())
}
