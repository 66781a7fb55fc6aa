//! A writer killed (SIGKILL) mid-commit leaves the last committed index searchable and intact.
//! The victim is this test binary re-run on an ignored "child" test.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use soramai_core::{Config, Core, LocalRootKey, Principal, TenantId, Tier};
use soramai_rag::{CorpusId, Document, Rag, SearchRequest};

const DIR_VAR: &str = "SORAMAI_RAG_CRASH_DIR";

fn open(dir: &std::path::Path) -> (Arc<Core>, Rag) {
    let root = LocalRootKey::from_file(&dir.join("root.key")).expect("root");
    let core = Arc::new(Core::open(Config::new(dir.join("data"), Arc::new(root))).expect("core"));
    let rag = Rag::new(core.clone(), 8 << 20);
    (core, rag)
}

fn batch(i: usize) -> Vec<Document> {
    (0..400)
        .map(|j| {
            Document::text(
                format!("b{i}-d{j}"),
                format!("Batch {i}"),
                format!(
                    "batchword{i} document {j} with filler text to make segments bigger {}",
                    "lorem ipsum ".repeat(20)
                ),
            )
        })
        .collect()
}

#[test]
#[ignore = "child process of writer_killed_mid_commit_keeps_the_last_commit"]
fn crash_child_indexer() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let (_core, rag) = open(std::path::Path::new(&dir));
    let p = Principal::operator(&TenantId::new("crashy").expect("id"));
    let kb = CorpusId::new("kb").expect("id");
    for i in 0.. {
        rag.add_documents(&p, &kb, &batch(i)).expect("index");
        println!("committed {i}");
    }
}

#[test]
fn writer_killed_mid_commit_keeps_the_last_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(LocalRootKey::create_file(&dir.path().join("root.key")).expect("root"));
    let tenant = TenantId::new("crashy").expect("id");
    let kb = CorpusId::new("kb").expect("id");
    {
        let (core, rag) = open(dir.path());
        core.create_tenant(&tenant, Tier::Pro).expect("tenant");
        rag.create_corpus(&Principal::operator(&tenant), &kb).expect("corpus");
    }
    let mut committed: Vec<usize> = Vec::new();
    for round in 0..3u64 {
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .args(["--ignored", "--exact", "crash_child_indexer", "--nocapture", "--test-threads=1"])
            .env(DIR_VAR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut seen = 0;
        while seen < 2 {
            let line = lines.next().expect("child alive").expect("line");
            if let Some(i) = line.split("committed ").nth(1).and_then(|i| i.trim().parse().ok()) {
                committed.push(i);
                seen += 1;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20 + 35 * round));
        child.kill().expect("kill");
        child.wait().expect("wait");
        committed.extend(
            lines
                .map_while(Result::ok)
                .filter_map(|l| l.split("committed ").nth(1).and_then(|i| i.trim().parse::<usize>().ok())),
        );
        // Every round's child starts over at batch 0, replacing by id; what was committed last
        // must be searchable from a fresh process view.
        let (_core, rag) = open(dir.path());
        let p = Principal::operator(&tenant);
        for i in committed.iter().copied().collect::<std::collections::BTreeSet<_>>() {
            let hits =
                rag.search(&p, &kb, &SearchRequest::new(format!("batchword{i}"), 5)).expect("search after crash");
            assert_eq!(hits.len(), 5, "batch {i} lost after a crash in round {round}");
            assert!(hits.iter().all(|h| h.doc_id.starts_with(&format!("b{i}-"))));
        }
    }
    let (core, rag) = open(dir.path());
    let p = Principal::operator(&tenant);
    assert!(rag.list_documents(&p, &kb).expect("list").len() >= 800);
    // The index still takes writes after the crashes.
    rag.add_documents(&p, &kb, &[Document::text("after", "After", "survivorword")]).expect("write after crash");
    assert_eq!(rag.search(&p, &kb, &SearchRequest::new("survivorword", 1)).expect("search")[0].doc_id, "after");
    assert!(core.verify_audit(&tenant).is_ok());
}
