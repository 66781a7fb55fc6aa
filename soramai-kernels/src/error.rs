//! The crate's one public error type.

use std::path::PathBuf;

/// Everything that can go wrong in the engine. Parsers never panic on malformed input: every count,
/// offset, size and tag is checked and a bad one surfaces here.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error while opening or reading a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A GGUF file is malformed: truncated, inconsistent or hostile. `offset` is where reading failed.
    #[error("malformed GGUF at byte {offset}: {reason}")]
    Gguf {
        /// Byte offset in the file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A tensor type that this engine does not implement (or that is not valid where it is used).
    #[error("unsupported tensor type {0}")]
    UnsupportedType(String),
    /// A tensor has a shape or size that does not fit what it is used for.
    #[error("tensor {name}: {reason}")]
    Tensor {
        /// Tensor name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// Model metadata is missing or inconsistent.
    #[error("model metadata: {0}")]
    Metadata(String),
    /// Tokenizer data is missing or malformed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A chat template failed to parse or render (including sandbox limits).
    #[error("chat template: {0}")]
    Template(String),
    /// A LoRA adapter (PEFT layout) is malformed or does not fit the model.
    #[error("adapter: {0}")]
    Adapter(String),
    /// A training configuration, example, batch or checkpoint is invalid.
    #[error("training: {0}")]
    Training(String),
    /// A backend this build lacks, a device the machine lacks, or a device failure.
    #[error("backend: {0}")]
    Backend(String),
    /// A request to the model is invalid (empty prompt, token id out of range, context exceeded...).
    #[error("invalid request: {0}")]
    Request(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}
