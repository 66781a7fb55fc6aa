//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use soramai_core::{Config, Core, LocalRootKey, ManualClock, Principal, TenantId, Tier};

pub struct Env {
    pub dir: tempfile::TempDir,
    pub core: Arc<Core>,
    pub clock: Arc<ManualClock>,
    pub root: Arc<LocalRootKey>,
}

pub const T0: i64 = 1_800_000_000_000;

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = Arc::new(LocalRootKey::generate());
        let clock = Arc::new(ManualClock::new(T0));
        let core = Arc::new(Self::open_with(dir.path(), root.clone(), clock.clone()));
        Self { dir, core, clock, root }
    }

    pub fn open_with(dir: &Path, root: Arc<LocalRootKey>, clock: Arc<ManualClock>) -> Core {
        let mut config = Config::new(dir.join("data"), root);
        config.clock = clock;
        Core::open(config).expect("open core")
    }

    pub fn reopen(&self) -> Core {
        Self::open_with(self.dir.path(), self.root.clone(), self.clock.clone())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn tenant(&self, name: &str, tier: Tier) -> (TenantId, Principal) {
        let id = TenantId::new(name).expect("id");
        self.core.create_tenant(&id, tier).expect("create tenant");
        let p = Principal::operator(&id);
        (id, p)
    }
}

pub fn chat_line(user: &str, assistant: &str) -> String {
    serde_json::json!({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]})
        .to_string()
}

pub fn dataset(n: usize, tag: &str) -> Vec<u8> {
    (0..n)
        .map(|i| chat_line(&format!("question {i} {tag}"), &format!("answer {i} {tag}")) + "\n")
        .collect::<String>()
        .into_bytes()
}

/// Every regular file under `dir`.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file() {
                out.push(p);
            }
        }
    }
    out
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
