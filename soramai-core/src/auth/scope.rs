//! What a key may do: a leaf, named by [`crate::Error::MissingScope`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::names::UnknownName;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Chat, completions, embeddings.
    Inference,
    /// Datasets and fine-tuning jobs.
    Train,
    /// RAG corpora and grounded chat.
    Rag,
    /// Keys, secrets, audit log, usage, tenant settings.
    Admin,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 4] = [Scope::Inference, Scope::Train, Scope::Rag, Scope::Admin];

    /// The scope's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Inference => "inference",
            Scope::Train => "train",
            Scope::Rag => "rag",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s).ok_or_else(|| UnknownName::new("scope", s))
    }
}
