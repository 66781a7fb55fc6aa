//! Encrypted object I/O against plain file I/O on the same data, in the same run.
//!
//! `cargo bench -p soramai-core --bench crypto_io [-- --mib N --rounds R]`
//!
//! Each round runs plain then encrypted for every operation (alternating, on the same bytes), and
//! the table shows medians over the rounds and the encrypted/plain ratio:
//! - sequential write: `write_all` + `fsync` of the plaintext vs sealing it (Cobblestone-256) into
//!   the same kind of file + `fsync`;
//! - sequential read (page cache warm for both): reading the file vs streaming decryption;
//! - random 4 KiB reads: `pread` vs authenticated random access (decrypts the 1-2 chunks touched);
//! - the same through `Core` (`put_object` / `get_object` / `open_object().read_range`).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

use soramai_core::crypto::chunked::{Encryptor, RandomAccess, StreamDecryptor};
use soramai_core::{Config, Core, LocalRootKey, ObjectPath, TenantId, Tier};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A small deterministic generator for offsets.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 11
    }
}

fn time<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let t = Instant::now();
    let out = f();
    (t.elapsed().as_secs_f64(), out)
}

fn main() {
    let mib = arg("--mib", 256);
    let rounds = arg("--rounds", 5);
    let reads = 20_000usize;
    let len = mib << 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let data: Vec<u8> = (0..len).map(|i| ((i as u64).wrapping_mul(0x9E3779B97F4A7C15) >> 56) as u8).collect();
    let key = [7u8; 32];
    let ctx = b"bench";
    let plain_path = dir.path().join("plain");
    let enc_path = dir.path().join("sealed");

    let mut rows: Vec<(&str, &str, Vec<f64>, Vec<f64>)> = vec![
        ("sequential write + fsync", "MB/s", vec![], vec![]),
        ("sequential read (warm cache)", "MB/s", vec![], vec![]),
        ("random 4 KiB reads", "reads/s", vec![], vec![]),
        ("Core put_object (fsync'd)", "MB/s", vec![], vec![]),
        ("Core get_object", "MB/s", vec![], vec![]),
        ("Core 4 KiB read_range", "reads/s", vec![], vec![]),
    ];
    let mbs = |secs: f64| len as f64 / 1e6 / secs;

    let core_dir = dir.path().join("core");
    let mut config = Config::new(&core_dir, Arc::new(LocalRootKey::generate()));
    config.limits.max_dataset_bytes = u64::MAX;
    let core = Core::open(config).expect("core");
    let tenant = TenantId::new("bench").expect("id");
    core.create_tenant(&tenant, Tier::Pro).expect("tenant");
    let path = ObjectPath::new("bench/object").expect("path");

    for round in 0..rounds {
        // Sequential write.
        let (p, _) = time(|| {
            let mut f = File::create(&plain_path).expect("create");
            f.write_all(&data).expect("write");
            f.sync_all().expect("sync");
        });
        let (e, _) = time(|| {
            let f = File::create(&enc_path).expect("create");
            let mut enc = Encryptor::new(&key, ctx, BufWriter::with_capacity(1 << 20, f)).expect("enc");
            enc.write_all(&data).expect("write");
            let f = enc.finish().expect("finish").into_inner().expect("flush");
            f.sync_all().expect("sync");
        });
        rows[0].2.push(mbs(p));
        rows[0].3.push(mbs(e));

        // Sequential read, both files already in the page cache from the writes.
        let mut buf = Vec::with_capacity(len + 1);
        let (p, _) = time(|| {
            buf.clear();
            File::open(&plain_path).expect("open").read_to_end(&mut buf).expect("read");
        });
        assert_eq!(buf.len(), len);
        let (e, _) = time(|| {
            buf.clear();
            let r = BufReader::with_capacity(1 << 20, File::open(&enc_path).expect("open"));
            StreamDecryptor::new(&key, ctx, r).expect("header").read_to_end(&mut buf).expect("decrypt");
        });
        assert!(buf == data, "round trip");
        rows[1].2.push(mbs(p));
        rows[1].3.push(mbs(e));

        // Random 4 KiB reads.
        let max = (len - 4096) as u64;
        let mut rng = Lcg(round as u64 + 1);
        let offsets: Vec<u64> = (0..reads).map(|_| rng.next() % max).collect();
        let plain_file = File::open(&plain_path).expect("open");
        let mut page = vec![0u8; 4096];
        let (p, _) = time(|| {
            for &o in &offsets {
                plain_file.read_exact_at(&mut page, o).expect("pread");
            }
        });
        let ra = RandomAccess::open(&key, ctx, File::open(&enc_path).expect("open"), 0).expect("ra");
        let (e, _) = time(|| {
            for &o in &offsets {
                let got = ra.read_range(o, 4096).expect("range");
                assert_eq!(got.len(), 4096);
            }
        });
        rows[2].2.push(reads as f64 / p);
        rows[2].3.push(reads as f64 / e);

        // Through the core (blob store, metadata, key lookup).
        let (e, _) = time(|| core.put_object(&tenant, &path, &data).expect("put"));
        let plain = rows[0].2[round];
        rows[3].2.push(plain);
        rows[3].3.push(mbs(e));
        let (e, got) = time(|| core.get_object(&tenant, &path).expect("get"));
        assert_eq!(got.len(), len);
        let plain = rows[1].2[round];
        rows[4].2.push(plain);
        rows[4].3.push(mbs(e));
        let reader = core.open_object(&tenant, &path).expect("open");
        let (e, _) = time(|| {
            for &o in &offsets {
                reader.read_range(o, 4096).expect("range");
            }
        });
        let plain = rows[2].2[round];
        rows[5].2.push(plain);
        rows[5].3.push(reads as f64 / e);
    }

    println!("soramai-core crypto_io: {mib} MiB object, {rounds} rounds (medians), {reads} random reads per round");
    println!("{:<30} {:>8} {:>14} {:>14} {:>8}", "operation", "unit", "plain file", "encrypted", "ratio");
    for (name, unit, plain, enc) in rows {
        let (p, e) = (median(plain), median(enc));
        println!("{name:<30} {unit:>8} {p:>14.0} {e:>14.0} {:>7.2}x", e / p);
    }
    println!("(Core rows compare against the plain-file figures of the same round.)");
}
