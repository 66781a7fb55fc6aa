//! Validated identifiers. Every id that reaches a path, a blob key or a SQL row goes through one of
//! these constructors, so hostile input (`..`, `/`, NUL, control characters, huge strings) is refused
//! with a typed error at the boundary.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::random::random_bytes;

fn check_token(kind: &'static str, s: &str, max: usize, extra: &[u8]) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || extra.contains(&b))
        && s.as_bytes().first().is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid {kind}: use 1-{max} characters from a-z, 0-9{}, starting with a letter or digit",
            extra.iter().map(|b| format!(", '{}'", *b as char)).collect::<String>()
        )))
    }
}

/// A random lowercase hex token of `bytes` random bytes.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    random_bytes(&mut buf);
    hex::encode(buf)
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal, $extra:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps an id.
            pub fn new(s: impl Into<String>) -> Result<Self> {
                let s = s.into();
                check_token($kind, &s, $max, $extra)?;
                Ok(Self(s))
            }
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }
    };
}

id_type!(
    /// A tenant (account) id: `a-z0-9`, `-`, `_`, at most 64 characters.
    TenantId, "tenant id", 64, b"-_"
);
id_type!(
    /// A dataset id, `file-<hex>` as OpenAI names uploaded files.
    DatasetId, "dataset id", 64, b"-"
);
id_type!(
    /// A job id, `job-<hex>`.
    JobId, "job id", 64, b"-"
);
id_type!(
    /// The id part of an API key (`sk-<key id>-<secret>`): lowercase hex.
    ApiKeyId, "key id", 32, b""
);
id_type!(
    /// A secret's name in a tenant's vault: `a-z0-9`, `-`, `_`, `.`.
    SecretName, "secret name", 128, b"-_."
);
id_type!(
    /// A compute pool: `shared`, or a dedicated pool's name.
    PoolId, "pool id", 64, b"-_:"
);
id_type!(
    /// A model or adapter id as recorded in usage metrics (`smollm2-135m`, `ft:base:acme:x:1`).
    ModelId, "model id", 160, b"-_.:/"
);

id_type!(
    /// A person's account, `user-<hex>`.
    UserId, "user id", 64, b"-"
);
id_type!(
    /// An invitation to join a tenant, `inv-<hex>`.
    InvitationId, "invitation id", 64, b"-"
);

impl UserId {
    pub(crate) fn generate() -> Self {
        Self(format!("user-{}", random_hex(12)))
    }
}

impl InvitationId {
    pub(crate) fn generate() -> Self {
        Self(format!("inv-{}", random_hex(12)))
    }
}

id_type!(
    /// A break-glass access grant, `grant-<hex>`.
    GrantId, "grant id", 64, b"-"
);

impl GrantId {
    pub(crate) fn generate() -> Self {
        Self(format!("grant-{}", random_hex(12)))
    }
}

impl DatasetId {
    pub(crate) fn generate() -> Self {
        Self(format!("file-{}", random_hex(12)))
    }
}

impl JobId {
    pub(crate) fn generate() -> Self {
        Self(format!("job-{}", random_hex(12)))
    }
}

impl ApiKeyId {
    pub(crate) fn generate() -> Self {
        Self(random_hex(8))
    }
}

impl PoolId {
    /// The shared (federated) pool.
    pub fn shared() -> Self {
        Self("shared".into())
    }
    /// The dedicated pool of one tenant.
    pub fn dedicated_for(tenant: &TenantId) -> Self {
        Self(format!("dedicated:{}", tenant.as_str()))
    }
    /// Whether this is the shared pool.
    pub fn is_shared(&self) -> bool {
        self.0 == "shared"
    }
}

/// A logical object path inside one tenant's space: `/`-separated segments of `A-Za-z0-9._-`,
/// none of them empty, `.` or `..`. It never starts with `/`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectPath(String);

impl ObjectPath {
    /// Validates a path.
    pub fn new(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= 512
            && s.split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            });
        if ok { Ok(Self(s)) } else { Err(Error::InvalidArgument("invalid object path".into())) }
    }
    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ObjectPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectPath({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_ids_are_refused() {
        for bad in ["", "../x", "a/b", "A", "a b", "a\0", "-lead", &"x".repeat(65), "é"] {
            assert!(TenantId::new(bad).is_err(), "{bad:?}");
        }
        assert!(TenantId::new("acme-co_1").is_ok());
        for bad in ["", "/abs", "a//b", "a/../b", "./a", "a/.", "a\\b", "a\nb"] {
            assert!(ObjectPath::new(bad).is_err(), "{bad:?}");
        }
        assert!(ObjectPath::new("datasets/file-1.jsonl").is_ok());
    }
}
