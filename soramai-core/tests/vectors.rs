//! Known-answer tests from Project Wycheproof: the C2SP chunked-encryption (Cobblestone-256) vectors,
//! decrypted both as a stream and by random access, plus AES-GCM, HKDF-SHA-512 and the AES-GCM-SIV
//! key-wrapping primitive.

use std::io::Read;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use sha2::{Digest, Sha512};
use soramai_core::crypto::chunked::{self, RandomAccess, StreamDecryptor};
use wycheproof::TestResult;

fn inflate(z: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(z).read_to_end(&mut out).expect("zlib");
    out
}

fn random_access_all(key: &[u8], ctx: &[u8], ct: Vec<u8>) -> Result<Vec<u8>, chunked::CryptoError> {
    let ra = RandomAccess::open(key, ctx, ct, 0)?;
    let len = usize::try_from(ra.plaintext_len()).map_err(|_| chunked::CryptoError)?;
    // Read in uneven slices so ranges straddle chunk boundaries.
    let mut out = Vec::with_capacity(len);
    let mut off = 0usize;
    let mut step = 1usize;
    while off < len {
        let n = step.min(len - off);
        out.extend_from_slice(&ra.read_range(off as u64, n)?);
        off += n;
        step = step * 3 + 7;
    }
    Ok(out)
}

#[test]
fn cobblestone_256_wycheproof() {
    let set = wycheproof::chunked_encryption::TestSet::load(wycheproof::chunked_encryption::TestName::Cobblestone256)
        .expect("vectors");
    let (mut valid, mut invalid) = (0, 0);
    for group in &set.test_groups {
        for t in &group.tests {
            let ct = inflate(&t.ct);
            let streamed = chunked::decrypt(&t.key, &t.ctx, &ct);
            let mut partial = Vec::new();
            let streamed_reader = StreamDecryptor::new(&t.key, &t.ctx, &ct[..]).and_then(|mut r| {
                let mut buf = [0u8; 5000];
                loop {
                    match r.read(&mut buf) {
                        Ok(0) => return Ok(()),
                        Ok(n) => partial.extend_from_slice(&buf[..n]),
                        Err(_) => return Err(chunked::CryptoError),
                    }
                }
            });
            let random = random_access_all(&t.key, &t.ctx, ct.clone());
            match t.result {
                TestResult::Valid => {
                    valid += 1;
                    let pt = streamed.unwrap_or_else(|_| panic!("tc {} ({}) must decrypt", t.tc_id, t.comment));
                    assert_eq!(Some(pt.len()), t.msg_length, "tc {}", t.tc_id);
                    let digest = Sha512::digest(&pt[..]);
                    assert_eq!(Some(&digest[..]), t.msg_sha512.as_deref().map(|d| &d[..]), "tc {}", t.tc_id);
                    assert!(streamed_reader.is_ok(), "tc {}", t.tc_id);
                    assert_eq!(partial, pt[..], "tc {}", t.tc_id);
                    assert_eq!(
                        random.unwrap_or_else(|_| panic!("tc {} random access", t.tc_id)),
                        pt[..],
                        "tc {}",
                        t.tc_id
                    );
                    assert_eq!(chunked::ciphertext_len(pt.len() as u64), ct.len() as u64);
                }
                _ => {
                    invalid += 1;
                    assert!(streamed.is_err(), "tc {} ({}) must be refused", t.tc_id, t.comment);
                    assert!(streamed_reader.is_err(), "tc {} ({}) stream must fail", t.tc_id, t.comment);
                    assert!(random.is_err(), "tc {} ({}) random access must fail", t.tc_id, t.comment);
                    // A streaming reader may release a valid prefix before failing, never more.
                    if let Some(n) = t.msg_length {
                        assert!(partial.len() <= n, "tc {}", t.tc_id);
                    }
                }
            }
        }
    }
    assert!(valid >= 10 && invalid >= 20, "{valid} valid, {invalid} invalid");
}

#[test]
fn cobblestone_256_round_trips_its_own_output() {
    // Our encryption must produce what the vectors' decryption accepts: encrypt, then decrypt
    // with every path.
    let key = [42u8; 32];
    for len in [0usize, 1, 16383, 16384, 16385, 65536, 70000] {
        let pt: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        let ct = chunked::encrypt(&key, b"ctx", &pt).expect("encrypt");
        assert_eq!(&chunked::decrypt(&key, b"ctx", &ct).expect("decrypt")[..], &pt[..]);
        assert_eq!(random_access_all(&key, b"ctx", ct).expect("random"), pt);
    }
}

#[test]
fn aes_gcm_wycheproof() {
    let set = wycheproof::aead::TestSet::load(wycheproof::aead::TestName::AesGcm).expect("vectors");
    let mut checked = 0;
    for group in set.test_groups.iter().filter(|g| g.key_size == 256 && g.nonce_size == 96 && g.tag_size == 128) {
        for t in &group.tests {
            let cipher = aes_gcm::Aes256Gcm::new_from_slice(&t.key).expect("key");
            let nonce = aes_gcm::Nonce::<aes_gcm::aead::consts::U12>::try_from(&t.nonce[..]).expect("nonce");
            let ct: Vec<u8> = [&t.ct[..], &t.tag[..]].concat();
            let got = cipher.decrypt(&nonce, Payload { msg: &ct, aad: &t.aad });
            match t.result {
                TestResult::Valid => {
                    assert_eq!(got.expect("valid vector decrypts"), t.pt[..], "tc {}", t.tc_id);
                    let enc = cipher.encrypt(&nonce, Payload { msg: &t.pt, aad: &t.aad }).expect("encrypt");
                    assert_eq!(enc, ct, "tc {}", t.tc_id);
                }
                TestResult::Invalid => assert!(got.is_err(), "tc {}", t.tc_id),
                _ => {}
            }
            checked += 1;
        }
    }
    assert!(checked > 30);
}

#[test]
fn hkdf_sha512_expand_wycheproof() {
    let set = wycheproof::hkdf::TestSet::load(wycheproof::hkdf::TestName::HkdfSha512).expect("vectors");
    let mut checked = 0;
    for group in &set.test_groups {
        for t in &group.tests {
            // Extract with the hkdf crate, expand with the scheme's own HKDF-Expand.
            let (prk, _) = hkdf::Hkdf::<sha2::Sha512>::extract(Some(&t.salt[..]), &t.ikm);
            let mut okm = vec![0u8; t.size];
            let got = chunked::hkdf_expand_sha512(&prk, &[&t.info[..]], &mut okm);
            match t.result {
                TestResult::Valid => {
                    got.expect("valid size");
                    assert_eq!(okm, t.okm[..], "tc {}", t.tc_id);
                }
                TestResult::Invalid => assert!(got.is_err(), "tc {}", t.tc_id),
                _ => {}
            }
            checked += 1;
        }
    }
    assert!(checked > 10);
}

#[test]
fn aes_gcm_siv_key_wrap_wycheproof() {
    let set = wycheproof::aead::TestSet::load(wycheproof::aead::TestName::AesGcmSiv).expect("vectors");
    let mut checked = 0;
    for group in set.test_groups.iter().filter(|g| g.key_size == 256 && g.nonce_size == 96) {
        for t in &group.tests {
            let cipher = aes_gcm_siv::Aes256GcmSiv::new_from_slice(&t.key).expect("key");
            let nonce = aes_gcm_siv::Nonce::try_from(&t.nonce[..]).expect("nonce");
            let ct: Vec<u8> = [&t.ct[..], &t.tag[..]].concat();
            let got = cipher.decrypt(&nonce, Payload { msg: &ct, aad: &t.aad });
            match t.result {
                TestResult::Valid => assert_eq!(got.expect("valid"), t.pt[..], "tc {}", t.tc_id),
                TestResult::Invalid => assert!(got.is_err(), "tc {}", t.tc_id),
                _ => {}
            }
            checked += 1;
        }
    }
    assert!(checked > 30);
}
