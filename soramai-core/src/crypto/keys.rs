//! The key hierarchy: a root [`KeyProvider`] wraps per-tenant, versioned 256-bit [`TenantKey`]s.
//!
//! Wrapping is AES-256-GCM-SIV (nonce-misuse resistant) with a random 96-bit nonce and the tenant id
//! and key version as associated data, so a wrapped key copied to another tenant or version does not
//! unwrap. Wrapped form: `nonce (12) || ciphertext (32) || tag (16)`.

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

pub(crate) use super::random_bytes;
use crate::error::{Error, Result};
use crate::ids::TenantId;

/// Length of every key in the hierarchy.
pub const KEY_LEN: usize = 32;
const WRAP_NONCE_LEN: usize = 12;

/// Holds a root key and wraps or unwraps tenant keys with it.
///
/// Implementations: [`LocalRootKey`] (a 0600 file or an environment variable; also the form a
/// customer-held Enterprise key takes once the customer supplies it). A KMS or Vault transit backend
/// implements the same trait.
pub trait KeyProvider: Send + Sync + fmt::Debug {
    /// A stable, non-secret fingerprint of the root key, stored beside each wrapped key.
    fn fingerprint(&self) -> String;
    /// Wraps `key` bound to `aad`.
    fn wrap(&self, aad: &[u8], key: &[u8]) -> Result<Vec<u8>>;
    /// Unwraps a key wrapped with the same `aad`; any mismatch is an opaque integrity error.
    fn unwrap(&self, aad: &[u8], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>>;
}

/// A 256-bit key held in memory (zeroized on drop) that wraps keys with AES-256-GCM-SIV.
pub struct LocalRootKey {
    key: Zeroizing<[u8; KEY_LEN]>,
    fingerprint: String,
}

impl fmt::Debug for LocalRootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalRootKey").field("fingerprint", &self.fingerprint).finish_non_exhaustive()
    }
}

fn parse_key_text(text: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    if text.len() == KEY_LEN {
        key.copy_from_slice(text);
        return Ok(key);
    }
    let trimmed = std::str::from_utf8(text)
        .map_err(|_| Error::KeyProvider("root key is neither 32 raw bytes nor 64 hex digits".into()))?
        .trim();
    hex::decode_to_slice(trimmed, &mut key[..])
        .map_err(|_| Error::KeyProvider("root key is neither 32 raw bytes nor 64 hex digits".into()))?;
    Ok(key)
}

impl LocalRootKey {
    /// A root key from its 32 bytes (for example a customer-held key the customer just supplied).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != KEY_LEN {
            return Err(Error::KeyProvider(format!("a root key is {KEY_LEN} bytes, not {}", bytes.len())));
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(bytes);
        Ok(Self::from_key(key))
    }

    fn from_key(key: Zeroizing<[u8; KEY_LEN]>) -> Self {
        let mut h = Sha256::new();
        h.update(b"soramai root key fingerprint v1");
        h.update(&key[..]);
        let fingerprint = hex::encode(&h.finalize()[..8]);
        Self { key, fingerprint }
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        random_bytes(&mut key[..]);
        Self::from_key(key)
    }

    /// Reads a root key file (32 raw bytes or 64 hex digits). The file must be a regular file that
    /// no group or other user can read or write (mode 0600 or stricter).
    pub fn from_file(path: &Path) -> Result<Self> {
        let mut file = std::fs::File::open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(Error::KeyProvider(format!("{} is not a regular file", path.display())));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::KeyProvider(format!(
                "{} has mode {mode:o}; a root key file must be 0600 (chmod 600 it)",
                path.display()
            )));
        }
        let mut text = Zeroizing::new(Vec::new());
        Read::by_ref(&mut file).take(1024).read_to_end(&mut text)?;
        Ok(Self::from_key(parse_key_text(&text)?))
    }

    /// Creates a new random root key file with mode 0600; fails if the file exists.
    pub fn create_file(path: &Path) -> Result<Self> {
        let this = Self::generate();
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
        let mut text = Zeroizing::new(hex::encode(&this.key[..]).into_bytes());
        file.write_all(&text)?;
        text.zeroize();
        file.sync_all()?;
        Ok(this)
    }

    /// Opens the key file at `path`, creating it (0600) when absent.
    pub fn open_or_create_file(path: &Path) -> Result<Self> {
        match Self::create_file(path) {
            Ok(k) => Ok(k),
            Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::from_file(path),
            Err(e) => Err(e),
        }
    }

    /// Reads the key from an environment variable holding 64 hex digits.
    pub fn from_env(var: &str) -> Result<Self> {
        let value = Zeroizing::new(
            std::env::var(var).map_err(|_| Error::KeyProvider(format!("environment variable {var} is not set")))?,
        );
        Ok(Self::from_key(parse_key_text(value.as_bytes())?))
    }

    fn cipher(&self) -> Result<Aes256GcmSiv> {
        Aes256GcmSiv::new_from_slice(&self.key[..]).map_err(|_| Error::Integrity)
    }
}

impl KeyProvider for LocalRootKey {
    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    fn wrap(&self, aad: &[u8], key: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; WRAP_NONCE_LEN];
        random_bytes(&mut nonce);
        let ct =
            self.cipher()?.encrypt(&Nonce::from(nonce), Payload { msg: key, aad }).map_err(|_| Error::Integrity)?;
        let mut out = Vec::with_capacity(WRAP_NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    fn unwrap(&self, aad: &[u8], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let (nonce, ct) = wrapped.split_at_checked(WRAP_NONCE_LEN).ok_or(Error::Integrity)?;
        let nonce = <[u8; WRAP_NONCE_LEN]>::try_from(nonce).map_err(|_| Error::Integrity)?;
        let pt = self.cipher()?.decrypt(&Nonce::from(nonce), Payload { msg: ct, aad }).map_err(|_| Error::Integrity)?;
        Ok(Zeroizing::new(pt))
    }
}

/// One version of a tenant's data key, unwrapped, zeroized on drop.
#[derive(Clone)]
pub struct TenantKey {
    version: u32,
    key: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for TenantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantKey").field("version", &self.version).finish_non_exhaustive()
    }
}

impl TenantKey {
    /// A fresh random key of the given version.
    pub fn generate(version: u32) -> Self {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        random_bytes(&mut key[..]);
        Self { version, key }
    }

    /// The version number stored in every object's prefix.
    pub fn version(&self) -> u32 {
        self.version
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.key[..]
    }

    /// The associated data binding a wrapped key to its tenant and version.
    fn wrap_aad(tenant: &TenantId, version: u32) -> Vec<u8> {
        let mut aad = b"soramai tenant key v1\0".to_vec();
        aad.extend_from_slice(tenant.as_str().as_bytes());
        aad.push(0);
        aad.extend_from_slice(&version.to_be_bytes());
        aad
    }

    /// Wraps this key under `root` for `tenant`.
    pub fn wrap(&self, root: &dyn KeyProvider, tenant: &TenantId) -> Result<Vec<u8>> {
        root.wrap(&Self::wrap_aad(tenant, self.version), &self.key[..])
    }

    /// A key that protects only the objects under one path prefix of a tenant (a RAG corpus, say),
    /// so that destroying it shreds exactly those. It is stored wrapped by a version of the tenant
    /// key and carries the marker version 0 in object prefixes (tenant key versions start at 1).
    pub fn generate_scoped() -> Self {
        Self::generate(0)
    }

    fn scope_aad(tenant: &TenantId, scope: &str) -> Vec<u8> {
        let mut aad = b"soramai scope key v1\0".to_vec();
        aad.extend_from_slice(tenant.as_str().as_bytes());
        aad.push(0);
        aad.extend_from_slice(scope.as_bytes());
        aad
    }

    /// Wraps a scope key under this (tenant) key with AES-256-GCM-SIV, bound to tenant and scope.
    pub fn wrap_scope_key(&self, scoped: &TenantKey, tenant: &TenantId, scope: &str) -> Result<Vec<u8>> {
        LocalRootKey::from_bytes(self.bytes())?.wrap(&Self::scope_aad(tenant, scope), scoped.bytes())
    }

    /// Unwraps a scope key wrapped by [`TenantKey::wrap_scope_key`].
    pub fn unwrap_scope_key(&self, tenant: &TenantId, scope: &str, wrapped: &[u8]) -> Result<TenantKey> {
        let bytes = LocalRootKey::from_bytes(self.bytes())?.unwrap(&Self::scope_aad(tenant, scope), wrapped)?;
        if bytes.len() != KEY_LEN {
            return Err(Error::Integrity);
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(&bytes);
        Ok(Self { version: 0, key })
    }

    /// Unwraps version `version` of `tenant`'s key.
    pub fn unwrap(root: &dyn KeyProvider, tenant: &TenantId, version: u32, wrapped: &[u8]) -> Result<Self> {
        let bytes = root.unwrap(&Self::wrap_aad(tenant, version), wrapped)?;
        if bytes.len() != KEY_LEN {
            return Err(Error::Integrity);
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(&bytes);
        Ok(Self { version, key })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_keys_are_bound_to_tenant_and_version() {
        let root = LocalRootKey::generate();
        let a = TenantId::new("acme").expect("id");
        let b = TenantId::new("bolt").expect("id");
        let key = TenantKey::generate(1);
        let wrapped = key.wrap(&root, &a).expect("wrap");
        let back = TenantKey::unwrap(&root, &a, 1, &wrapped).expect("unwrap");
        assert_eq!(back.bytes(), key.bytes());
        assert!(TenantKey::unwrap(&root, &b, 1, &wrapped).is_err());
        assert!(TenantKey::unwrap(&root, &a, 2, &wrapped).is_err());
        assert!(TenantKey::unwrap(&LocalRootKey::generate(), &a, 1, &wrapped).is_err());
    }

    #[test]
    fn key_files_must_be_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("root.key");
        let created = LocalRootKey::create_file(&path).expect("create");
        assert_eq!(std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
        assert_eq!(LocalRootKey::from_file(&path).expect("read").fingerprint(), created.fingerprint());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(LocalRootKey::from_file(&path), Err(Error::KeyProvider(_))));
        assert!(LocalRootKey::create_file(&path).is_err(), "never overwrites a key");
    }
}
