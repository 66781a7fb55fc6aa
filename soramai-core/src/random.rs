//! Randomness from the operating system, on its own so that ids, keys and secrets share one
//! source without depending on each other.

/// Fills `buf` from the operating system's CSPRNG.
pub(crate) fn random_bytes(buf: &mut [u8]) {
    // Without randomness no key, nonce, salt or secret can be made safely: stop rather than go on.
    #[allow(clippy::expect_used)]
    getrandom::fill(buf).expect("the operating system's random number generator failed");
}
