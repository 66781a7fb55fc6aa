//! What an operation needs of its caller's key, stated once per operation: the server checks it
//! for every route before it reads a request's body (so a key without the scope learns nothing
//! of the body's form), and `openapi.json` documents it (`x-soramai-scopes`). The library's own
//! checks stay behind it.

use soramai_core::{Principal, Scope};

use crate::{Platform, PlatformError};

/// The scopes (or the platform-admin role) an operation needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Any one of these scopes.
    AnyOf(&'static [Scope]),
    /// Every one of these scopes.
    AllOf(&'static [Scope]),
    /// An admin key of the operator's own tenant.
    PlatformAdmin,
}

impl Needs {
    /// One scope.
    pub const fn scope(scope: &'static Scope) -> Self {
        Needs::AnyOf(std::slice::from_ref(scope))
    }

    /// `Ok` when `principal` may call the operation; else the missing scope, as a permission
    /// error.
    pub fn check(self, principal: &Principal) -> Result<(), PlatformError> {
        let missing = match self {
            Needs::AnyOf(scopes) if scopes.iter().any(|s| principal.require(*s).is_ok()) => None,
            Needs::AnyOf(scopes) => scopes.first().copied(),
            Needs::AllOf(scopes) => scopes.iter().copied().find(|s| principal.require(*s).is_err()),
            Needs::PlatformAdmin if Platform::is_platform_admin(principal) => None,
            Needs::PlatformAdmin => Some(Scope::Admin),
        };
        match missing {
            None => Ok(()),
            Some(scope) => Err(soramai_core::Error::MissingScope(scope).into()),
        }
    }

    /// As documented: `inference`, `inference|train` (any), `inference+rag` (all), `operator`.
    pub fn describe(self) -> String {
        let join = |scopes: &[Scope], sep: &str| scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(sep);
        match self {
            Needs::AnyOf(scopes) => join(scopes, "|"),
            Needs::AllOf(scopes) => join(scopes, "+"),
            Needs::PlatformAdmin => "operator".into(),
        }
    }
}
