//! The crypto layer's one failure, on its own so that the crate's error type can name it without
//! depending on the ciphers.

use std::{fmt, io};

/// An opaque decryption or integrity failure: wrong key, wrong context, modified, reordered,
/// truncated or extended ciphertext all look the same to the caller.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CryptoError;

impl fmt::Debug for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CryptoError")
    }
}

impl fmt::Display for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("decryption failed: the data is corrupt, truncated, or under another key or context")
    }
}

impl std::error::Error for CryptoError {}

impl From<CryptoError> for io::Error {
    fn from(e: CryptoError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}
