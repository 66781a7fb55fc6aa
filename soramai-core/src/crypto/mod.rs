//! Cryptography: the chunked encryption scheme, the key hierarchy and the object envelope.
//! Every primitive comes from RustCrypto; nothing here implements a cipher.

pub mod chunked;
pub mod envelope;
pub mod keys;

/// Fills `buf` from the operating system's CSPRNG.
pub(crate) fn random_bytes(buf: &mut [u8]) {
    // Without randomness no key, nonce, salt or secret can be made safely: stop rather than go on.
    #[allow(clippy::expect_used)]
    getrandom::fill(buf).expect("the operating system's random number generator failed");
}
