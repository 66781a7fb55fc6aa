//! Hostile bytes as an encrypted object: the prefix and Cobblestone header parsers, the length
//! rules and the random-access opener must refuse them without panicking or reading out of bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use soramai_core::crypto::{chunked, envelope, keys::TenantKey};
use soramai_core::{ObjectPath, TenantId};

fuzz_target!(|data: &[u8]| {
    let key = TenantKey::generate(u32::from_be_bytes([0, 0, 0, data.first().copied().unwrap_or(1)]));
    let (Ok(t), Ok(p)) = (TenantId::new("fuzz"), ObjectPath::new("f/z")) else { return };
    let _ = envelope::key_version(data);
    assert!(envelope::open(&key, &t, &p, data).is_err());
    assert!(envelope::open_random_access(&key, &t, &p, data.to_vec()).is_err());
    assert!(chunked::decrypt(&[0u8; 32], b"", data).is_err());
    let _ = chunked::plaintext_len(data.len() as u64);
});
