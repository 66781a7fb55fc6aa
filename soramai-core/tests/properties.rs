//! Property tests: any write pattern and any read range agree with the plaintext; hostile bytes
//! never panic a decryptor (the bounded, always-on twin of the `fuzz/` targets).

use std::io::Write;

use proptest::prelude::*;
use soramai_core::crypto::chunked::{self, Encryptor, RandomAccess};
use soramai_core::crypto::{envelope, keys::TenantKey};
use soramai_core::{ObjectPath, TenantId};

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn write_sizes_by_read_ranges(
        len in prop_oneof![0usize..100, 16_300usize..16_500, 0usize..70_000],
        writes in proptest::collection::vec(1usize..20_000, 1..8),
        ranges in proptest::collection::vec((0u64..70_000, 0usize..40_000), 1..12),
    ) {
        let key = [9u8; 32];
        let pt: Vec<u8> = (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1]).collect();
        let mut enc = Encryptor::new(&key, b"p", Vec::new()).expect("enc");
        let mut off = 0;
        let mut w = writes.iter().cycle();
        while off < len {
            let n = (*w.next().expect("cycle")).min(len - off);
            enc.write_all(&pt[off..off + n]).expect("write");
            off += n;
        }
        let ct = enc.finish().expect("finish");
        prop_assert_eq!(ct.len() as u64, chunked::ciphertext_len(len as u64));
        prop_assert_eq!(&chunked::decrypt(&key, b"p", &ct).expect("dec")[..], &pt[..]);
        let ra = RandomAccess::open(&key, b"p", ct, 0).expect("open");
        prop_assert_eq!(ra.plaintext_len(), len as u64);
        for (start, n) in ranges {
            let got = ra.read_range(start, n);
            if start + n as u64 <= len as u64 {
                let got = got.expect("in-range read");
                prop_assert_eq!(&got[..], &pt[start as usize..start as usize + n]);
            } else {
                prop_assert!(got.is_err());
            }
        }
    }

    #[test]
    fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2_000), flip in any::<usize>()) {
        let key = TenantKey::generate(1);
        let t = TenantId::new("t").expect("id");
        let p = ObjectPath::new("a").expect("path");
        prop_assert!(envelope::open(&key, &t, &p, &bytes).is_err());
        prop_assert!(envelope::open_random_access(&key, &t, &p, bytes.clone()).is_err());
        prop_assert!(chunked::decrypt(&[0u8; 32], b"", &bytes).is_err());
        let _ = envelope::key_version(&bytes);
        // A real object with hostile prefix bytes spliced in.
        let mut sealed = envelope::seal(&key, &t, &p, &bytes).expect("seal");
        let i = flip % sealed.len();
        sealed[i] = sealed[i].wrapping_add(1);
        prop_assert!(envelope::open(&key, &t, &p, &sealed).is_err());
    }
}
