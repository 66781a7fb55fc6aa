//! The encrypted directory honours tantivy's `Directory` contract: write-once files, atomic
//! writes, deletes, range reads across chunk boundaries, watch callbacks and locks.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use soramai_core::{Core, LocalRootKey, TenantId, Tier};
use soramai_rag::{ChunkCache, EncryptedDirectory};
use tantivy::HasLen;
use tantivy::directory::error::{DeleteError, LockError, OpenReadError, OpenWriteError};
use tantivy::directory::{Directory, Lock, TerminatingWrite, WatchCallback};

fn dir() -> (tempfile::TempDir, EncryptedDirectory, Arc<ChunkCache>) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = LocalRootKey::create_file(&tmp.path().join("root.key")).expect("root");
    let core = Arc::new(Core::open(soramai_core::Config::new(tmp.path().join("data"), Arc::new(root))).expect("core"));
    let t = TenantId::new("acme").expect("id");
    core.create_tenant(&t, Tier::Basic).expect("tenant");
    let cache = Arc::new(ChunkCache::new(1 << 20));
    let d = EncryptedDirectory::new(core, t, "rag/test", cache.clone()).expect("dir");
    (tmp, d, cache)
}

#[test]
fn write_once_read_many() {
    let (_tmp, d, cache) = dir();
    let p = Path::new("seg.idx");
    let data: Vec<u8> = (0..70_000u32).map(|i| (i % 253) as u8).collect();
    assert!(!d.exists(p).expect("exists"));
    let mut w = d.open_write(p).expect("open_write");
    assert!(d.exists(p).expect("exists while pending"), "a file being written exists");
    assert!(matches!(d.open_write(p), Err(OpenWriteError::FileAlreadyExists(_))));
    w.write_all(&data[..1000]).expect("write");
    w.write_all(&data[1000..]).expect("write");
    w.terminate().expect("terminate");
    assert!(matches!(d.open_write(p), Err(OpenWriteError::FileAlreadyExists(_))));
    let slice = d.open_read(p).expect("open_read");
    assert_eq!(slice.len(), data.len());
    assert_eq!(slice.read_bytes().expect("read").as_slice(), &data[..]);
    // Ranges inside one chunk, across chunk boundaries, empty, and at the end.
    let h = d.get_file_handle(p).expect("handle");
    for (a, b) in [(0, 10), (16_380, 16_390), (16_384, 16_384), (10_000, 60_000), (69_990, 70_000)] {
        assert_eq!(h.read_bytes(a..b).expect("range").as_slice(), &data[a..b], "{a}..{b}");
    }
    assert!(h.read_bytes(69_990..70_001).is_err());
    let (hits, misses) = cache.stats();
    assert!(hits > 0 && misses > 0, "the chunk cache serves repeated reads: {hits} hits, {misses} misses");
}

#[test]
fn missing_files_and_deletes() {
    let (_tmp, d, _) = dir();
    assert!(matches!(d.open_read(Path::new("nope")), Err(OpenReadError::FileDoesNotExist(_))));
    assert!(matches!(d.atomic_read(Path::new("nope")), Err(OpenReadError::FileDoesNotExist(_))));
    assert!(matches!(d.delete(Path::new("nope")), Err(DeleteError::FileDoesNotExist(_))));
    let mut w = d.open_write(Path::new("a")).expect("open");
    w.write_all(b"x").expect("write");
    w.terminate().expect("terminate");
    d.delete(Path::new("a")).expect("delete");
    assert!(!d.exists(Path::new("a")).expect("exists"));
    // A writer dropped without terminate leaves no file behind.
    {
        let mut w = d.open_write(Path::new("b")).expect("open");
        w.write_all(b"lost").expect("write");
    }
    assert!(!d.exists(Path::new("b")).expect("exists"));
    // Hostile names are refused, not mapped outside the directory.
    for bad in ["../escape", "a/b", ""] {
        assert!(d.open_write(Path::new(bad)).is_err(), "{bad:?}");
        assert!(d.atomic_write(Path::new(bad), b"x").is_err(), "{bad:?}");
    }
}

#[test]
fn atomic_writes_replace_and_wake_watchers() {
    let (_tmp, d, _) = dir();
    let fired = Arc::new(AtomicUsize::new(0));
    let f = fired.clone();
    let handle = d
        .watch(WatchCallback::new(move || {
            f.fetch_add(1, Ordering::SeqCst);
        }))
        .expect("watch");
    d.atomic_write(Path::new("meta.json"), b"{\"v\":1}").expect("write");
    d.atomic_write(Path::new("meta.json"), b"{\"v\":2}").expect("overwrite");
    assert_eq!(d.atomic_read(Path::new("meta.json")).expect("read"), b"{\"v\":2}");
    d.atomic_write(Path::new("other.json"), b"{}").expect("write");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(fired.load(Ordering::SeqCst), 2, "only meta.json changes wake watchers");
    drop(handle);
    d.sync_directory().expect("sync");
}

#[test]
fn one_lock_holder_at_a_time() {
    let (_tmp, d, _) = dir();
    let lock = Lock { filepath: ".tantivy-writer.lock".into(), is_blocking: false };
    let held = d.acquire_lock(&lock).expect("first");
    assert!(matches!(d.acquire_lock(&lock), Err(LockError::LockBusy)));
    let clone = d.clone();
    assert!(matches!(clone.acquire_lock(&lock), Err(LockError::LockBusy)), "clones share the lock");
    drop(held);
    assert!(d.acquire_lock(&lock).is_ok());
}

const DIR_VAR: &str = "SORAMAI_LOCK_DIR";

#[test]
#[ignore = "child process of a_lock_held_by_another_process_excludes_until_it_dies"]
fn lock_child_holder() {
    let Some(dir) = std::env::var_os(DIR_VAR) else { return };
    let dir = Path::new(&dir);
    let root = LocalRootKey::from_file(&dir.join("root.key")).expect("root");
    let core = Arc::new(Core::open(soramai_core::Config::new(dir.join("data"), Arc::new(root))).expect("core"));
    let d = EncryptedDirectory::new(
        core,
        TenantId::new("acme").expect("id"),
        "rag/test",
        Arc::new(ChunkCache::new(1 << 20)),
    )
    .expect("dir");
    let _held = d.acquire_lock(&Lock { filepath: ".tantivy-writer.lock".into(), is_blocking: false }).expect("lock");
    println!("locked");
    std::thread::sleep(std::time::Duration::from_secs(60));
}

#[test]
fn a_lock_held_by_another_process_excludes_until_it_dies() {
    use std::io::BufRead;
    let (tmp, d, _) = dir();
    let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args(["--ignored", "--exact", "lock_child_holder", "--nocapture", "--test-threads=1"])
        .env(DIR_VAR, tmp.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    // libtest may print "test <name> ... " on the same line before the child's own output.
    while !lines.next().expect("child alive").expect("line").ends_with("locked") {}
    let lock = Lock { filepath: ".tantivy-writer.lock".into(), is_blocking: false };
    assert!(matches!(d.acquire_lock(&lock), Err(LockError::LockBusy)), "another process holds the writer lock");
    // The holder dies without releasing anything: the kernel drops its lock.
    child.kill().expect("kill");
    child.wait().expect("wait");
    assert!(d.acquire_lock(&lock).is_ok());
}
