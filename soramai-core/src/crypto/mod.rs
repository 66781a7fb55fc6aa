//! Cryptography: the chunked encryption scheme, the key hierarchy and the object envelope.
//! Every primitive comes from RustCrypto; nothing here implements a cipher.

pub mod chunked;
pub mod envelope;
pub mod keys;
pub mod opaque;

pub(crate) use crate::random::random_bytes;
