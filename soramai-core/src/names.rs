//! The error for a name outside a closed set (a tier, a scope, a job state). A leaf: the vocabulary
//! types that [`crate::Error`] names parse with it, so they do not depend on the error type that
//! depends on them. It converts into [`crate::Error::InvalidArgument`].

/// A name that is none of its kind's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownName {
    /// What kind of name: "tier", "scope", "job state".
    pub kind: &'static str,
    /// The name as given.
    pub value: String,
}

impl UnknownName {
    pub(crate) fn new(kind: &'static str, value: &str) -> Self {
        Self { kind, value: value.to_string() }
    }
}
