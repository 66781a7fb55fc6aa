//! Soramai's object envelope: a 9-byte plaintext prefix followed by one Cobblestone-256 message.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "SRMO"
//! 4       1     format version (1)
//! 5       4     tenant key version, big-endian u32
//! 9       ...   Cobblestone-256 ciphertext (salt, commitment, chunks)
//! ```
//!
//! The Cobblestone context binds the tenant id, the logical path and the key version, so an object
//! copied to another tenant or path, or relabelled with another key version, fails the key
//! commitment before any chunk is decrypted. See `FORMAT.md` for the full layout.

use std::io::Write;

use zeroize::Zeroizing;

use super::chunked::{self, CryptoError, Encryptor, RandomAccess, ReadAt};
use super::keys::TenantKey;
use crate::ids::{ObjectPath, TenantId};

/// The magic bytes that open every object.
pub const MAGIC: [u8; 4] = *b"SRMO";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Length of the plaintext prefix.
pub const PREFIX_LEN: usize = 9;

/// The Cobblestone context of an object.
pub fn context(tenant: &TenantId, path: &ObjectPath, key_version: u32) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(48 + tenant.as_str().len() + path.as_str().len());
    ctx.extend_from_slice(b"soramai.object.v1\0");
    ctx.extend_from_slice(tenant.as_str().as_bytes());
    ctx.push(0);
    ctx.extend_from_slice(path.as_str().as_bytes());
    ctx.push(0);
    ctx.extend_from_slice(&key_version.to_be_bytes());
    ctx
}

fn prefix(key_version: u32) -> [u8; PREFIX_LEN] {
    let mut p = [0u8; PREFIX_LEN];
    p[..4].copy_from_slice(&MAGIC);
    p[4] = FORMAT_VERSION;
    p[5..].copy_from_slice(&key_version.to_be_bytes());
    p
}

/// Reads the tenant key version from an object's prefix.
pub fn key_version(prefix_bytes: &[u8]) -> Result<u32, CryptoError> {
    let p = prefix_bytes.get(..PREFIX_LEN).ok_or(CryptoError)?;
    if p[..4] != MAGIC || p[4] != FORMAT_VERSION {
        return Err(CryptoError);
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&p[5..9]);
    Ok(u32::from_be_bytes(v))
}

/// Total sealed length of a plaintext of `len` bytes.
pub fn sealed_len(len: u64) -> u64 {
    PREFIX_LEN as u64 + chunked::ciphertext_len(len)
}

/// Starts a streaming seal into `out`: writes the prefix, then encrypts whatever is written.
pub fn seal_writer<W: Write>(
    key: &TenantKey,
    tenant: &TenantId,
    path: &ObjectPath,
    mut out: W,
) -> std::io::Result<Encryptor<W>> {
    out.write_all(&prefix(key.version()))?;
    Encryptor::new(key.bytes(), &context(tenant, path, key.version()), out)
}

/// Seals a whole plaintext.
pub fn seal(key: &TenantKey, tenant: &TenantId, path: &ObjectPath, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let capacity = usize::try_from(sealed_len(plaintext.len() as u64)).map_err(|_| CryptoError)?;
    let mut out = Vec::with_capacity(capacity);
    out.extend_from_slice(&prefix(key.version()));
    chunked::encrypt_into(key.bytes(), &context(tenant, path, key.version()), plaintext, &mut out)?;
    Ok(out)
}

/// Opens a whole sealed object. `key` must be the version named in its prefix.
pub fn open(
    key: &TenantKey,
    tenant: &TenantId,
    path: &ObjectPath,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if key_version(sealed)? != key.version() {
        return Err(CryptoError);
    }
    chunked::decrypt(key.bytes(), &context(tenant, path, key.version()), &sealed[PREFIX_LEN..])
}

/// Opens a whole sealed object in its own buffer (no second allocation of its size).
pub fn open_owned(
    key: &TenantKey,
    tenant: &TenantId,
    path: &ObjectPath,
    sealed: Vec<u8>,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if key_version(&sealed)? != key.version() {
        return Err(CryptoError);
    }
    chunked::decrypt_owned_at(key.bytes(), &context(tenant, path, key.version()), sealed, PREFIX_LEN)
}

/// Opens a sealed object for authenticated random access.
pub fn open_random_access<S: ReadAt>(
    key: &TenantKey,
    tenant: &TenantId,
    path: &ObjectPath,
    source: S,
) -> Result<RandomAccess<S>, CryptoError> {
    let mut p = [0u8; PREFIX_LEN];
    source.read_exact_at(&mut p, 0).map_err(|_| CryptoError)?;
    if key_version(&p)? != key.version() {
        return Err(CryptoError);
    }
    RandomAccess::open(key.bytes(), &context(tenant, path, key.version()), source, PREFIX_LEN as u64)
}
