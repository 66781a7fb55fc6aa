//! Retrieval end to end: canary never on disk, tenant isolation on the shared Basic store, tamper
//! gives a typed integrity error and never wrong hits, crash mid-commit keeps the last commit,
//! tiers, scopes, the Org access log, idempotent ingestion and relevance.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use soramai_core::{Config, Core, KeyOptions, LocalRootKey, Principal, Scope, TenantId, Tier};
use soramai_rag::{CorpusId, Document, Error, Format, Rag, SearchRequest};

struct Env {
    dir: tempfile::TempDir,
    root: Arc<LocalRootKey>,
    core: Arc<Core>,
    rag: Rag,
}

fn env() -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = Arc::new(LocalRootKey::generate());
    let core = Arc::new(Core::open(Config::new(dir.path().join("data"), root.clone())).expect("core"));
    let rag = Rag::new(core.clone(), 16 << 20);
    Env { dir, root, core, rag }
}

impl Env {
    fn tenant(&self, name: &str, tier: Tier) -> Principal {
        let t = TenantId::new(name).expect("id");
        self.core.create_tenant(&t, tier).expect("tenant");
        Principal::operator(&t)
    }
    /// A second, cold view of the same data (no cached chunks, no open readers).
    fn fresh_rag(&self) -> Rag {
        let core = Arc::new(Core::open(Config::new(self.dir.path().join("data"), self.root.clone())).expect("core"));
        Rag::new(core, 16 << 20)
    }
}

#[path = "../../soramai-kernels/tests/common/files.rs"]
mod files;
use files::{contains, files_under};

const CANARY: &str = "Zorblaxifications";

#[test]
fn canary_and_its_stem_never_reach_disk() {
    let e = env();
    let p = e.tenant("acme", Tier::Pro);
    let kb = CorpusId::new("secrets").expect("id");
    e.rag.create_corpus(&p, &kb).expect("create");
    let mut docs: Vec<Document> = (0..50)
        .map(|i| Document::text(format!("d{i}"), format!("Doc {i}"), format!("filler text number {i} about nothing")))
        .collect();
    docs.push(Document {
        id: "the-one".into(),
        title: "Project notes".into(),
        body: format!(
            "# Plans\nThe {CANARY} programme starts in spring. Budget for {} is approved.",
            CANARY.to_lowercase()
        ),
        format: Format::Markdown,
        metadata: BTreeMap::from([("team".into(), "research".into())]),
    });
    e.rag.add_documents(&p, &kb, &docs).expect("index");
    let hits = e.rag.search(&p, &kb, &SearchRequest::new(CANARY, 3)).expect("search");
    assert_eq!(hits.first().map(|h| h.doc_id.as_str()), Some("the-one"));
    assert!(hits[0].snippet.contains("<b>"), "{}", hits[0].snippet);

    // The stem as the index stores it, computed with the index's own analyzer.
    let index = tantivy::Index::create_in_ram(tantivy::schema::Schema::builder().build());
    let mut analyzer = index.tokenizers().get("en_stem").expect("en_stem");
    let mut stream = analyzer.token_stream(CANARY);
    let mut stems = Vec::new();
    while stream.advance() {
        stems.push(stream.token().text.clone());
    }
    assert_eq!(stems.len(), 1);
    let stem = &stems[0];
    assert!(stem.len() >= 6 && stem.as_str() != CANARY.to_lowercase(), "stem {stem}");
    for f in files_under(&e.dir.path().join("data")) {
        let bytes = std::fs::read(&f).expect("read");
        for needle in [CANARY, &CANARY.to_lowercase(), stem.as_str(), "Budget for"] {
            assert!(!contains(&bytes, needle.as_bytes()), "{} holds {needle:?}", f.display());
        }
    }
}

#[test]
fn tenants_never_reach_each_others_index_on_the_shared_store() {
    let e = env();
    let a = e.tenant("tenant-a", Tier::Basic);
    let b = e.tenant("tenant-b", Tier::Basic);
    let kb = CorpusId::new("kb").expect("id");
    e.rag.create_corpus(&a, &kb).expect("create a");
    e.rag
        .add_documents(&a, &kb, &[Document::text("a1", "Alpha", "alpha launch codes are kept in the vault")])
        .expect("index a");
    // B cannot open, search, list, add to or delete A's corpus.
    assert!(matches!(e.rag.search(&b, &kb, &SearchRequest::new("alpha", 5)), Err(Error::CorpusNotFound)));
    assert!(matches!(e.rag.list_documents(&b, &kb), Err(Error::CorpusNotFound)));
    assert!(matches!(e.rag.add_documents(&b, &kb, &[Document::text("x", "x", "x")]), Err(Error::CorpusNotFound)));
    assert!(matches!(e.rag.delete_corpus(&b, &kb), Err(Error::CorpusNotFound)));
    assert!(e.rag.list_corpora(&b).expect("list").is_empty());
    // B's own corpus of the same name is a different index.
    e.rag.create_corpus(&b, &kb).expect("create b");
    e.rag.add_documents(&b, &kb, &[Document::text("b1", "Bravo", "bravo team notes")]).expect("index b");
    assert!(e.rag.search(&b, &kb, &SearchRequest::new("alpha launch", 5)).expect("search").is_empty());
    assert_eq!(e.rag.search(&a, &kb, &SearchRequest::new("alpha launch", 5)).expect("search")[0].doc_id, "a1");
    // A key of A reaches only A's corpora.
    let key = e.core.create_api_key(&a, KeyOptions::new("rag", &[Scope::Rag])).expect("key");
    let pa = e.core.authenticate(key.secret()).expect("auth");
    assert_eq!(e.rag.search(&pa, &kb, &SearchRequest::new("bravo", 5)).expect("search").len(), 0);
    // Copying B's index files over A's (same shared store) does not yield B's data to A.
    let blobs = e.dir.path().join("data/blobs/t");
    let a_files = files_under(&blobs.join("tenant-a"));
    let b_files = files_under(&blobs.join("tenant-b"));
    for (fa, fb) in a_files.iter().zip(b_files.iter()) {
        std::fs::copy(fb, fa).expect("copy");
    }
    let fresh = e.fresh_rag();
    match fresh.search(&a, &kb, &SearchRequest::new("bravo", 5)) {
        Err(Error::Integrity) => {}
        other => panic!("expected an integrity error, got {other:?}"),
    }
}

#[test]
fn tampered_index_fails_with_a_typed_error_never_wrong_hits() {
    let e = env();
    let p = e.tenant("acme", Tier::Pro);
    let kb = CorpusId::new("kb").expect("id");
    e.rag.create_corpus(&p, &kb).expect("create");
    let docs: Vec<Document> = (0..200)
        .map(|i| {
            Document::text(
                format!("d{i}"),
                format!("Title {i}"),
                format!("document {i} talks about topic{} and shared words", i % 17),
            )
        })
        .collect();
    e.rag.add_documents(&p, &kb, &docs).expect("index");
    let query = SearchRequest::new("topic5 shared", 10);
    let truth = e.rag.search(&p, &kb, &query).expect("search");
    assert_eq!(truth.len(), 10);
    let blob_files: Vec<PathBuf> = files_under(&e.dir.path().join("data"))
        .into_iter()
        .filter(|f| f.to_string_lossy().contains("/t/acme/o/"))
        .collect();
    assert!(blob_files.len() >= 5, "{blob_files:?}");
    let mut failures = 0;
    for f in &blob_files {
        let good = std::fs::read(f).expect("read");
        for at in [good.len() / 2, good.len() - 1, 100.min(good.len() - 1)] {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            std::fs::write(f, &bad).expect("write");
            match e.fresh_rag().search(&p, &kb, &query) {
                Err(Error::Integrity) => failures += 1,
                // A file this query does not read may be corrupt without affecting it, but the
                // answer must then be exactly the true one.
                Ok(hits) => {
                    assert_eq!(hits, truth, "tampering {} changed the results", f.display())
                }
                Err(other) => panic!("tampering {} gave an untyped error: {other:?}", f.display()),
            }
        }
        std::fs::write(f, &good).expect("restore");
    }
    assert!(failures > 0);
    assert_eq!(e.fresh_rag().search(&p, &kb, &query).expect("restored"), truth);
}

#[test]
fn tiers_scopes_and_the_access_log() {
    let e = env();
    let free = e.tenant("freebie", Tier::Free);
    let kb = CorpusId::new("kb").expect("id");
    assert!(matches!(
        e.rag.create_corpus(&free, &kb),
        Err(Error::Core(soramai_core::Error::NotAllowed { tier: Tier::Free, .. }))
    ));
    let org = e.tenant("bigorg", Tier::Org);
    let infer = e.core.create_api_key(&org, KeyOptions::new("infer", &[Scope::Inference])).expect("key");
    let pi = e.core.authenticate(infer.secret()).expect("auth");
    assert!(matches!(e.rag.create_corpus(&pi, &kb), Err(Error::Core(soramai_core::Error::MissingScope(Scope::Rag)))));
    let rk = e.core.create_api_key(&org, KeyOptions::new("rag", &[Scope::Rag])).expect("key");
    let pr = e.core.authenticate(rk.secret()).expect("auth");
    e.rag.create_corpus(&pr, &kb).expect("create");
    e.rag.add_documents(&pr, &kb, &[Document::text("x", "X", "quarterly numbers")]).expect("index");
    e.rag.search(&pr, &kb, &SearchRequest::new("secret merger plans", 3)).expect("search");
    let log = e.core.access_log(&org).expect("access log");
    assert!(
        log.iter().any(|r| r.action == "search" && r.resource == "rag:kb" && r.actor == format!("key:{}", rk.info.id))
    );
    assert!(log.iter().all(|r| r.detail.is_none()), "no query text without opt-in");
    let all_meta: Vec<u8> = std::fs::read(e.dir.path().join("data/meta.sqlite3")).expect("db");
    assert!(!contains(&all_meta, b"merger"));
    // Basic has no access log.
    let basic = e.tenant("small", Tier::Basic);
    assert!(e.core.access_log(&basic).is_err());
    // Audit records the corpus lifecycle.
    let actions: Vec<String> = e.core.audit_log(&org).expect("audit").into_iter().map(|r| r.action).collect();
    assert!(actions.contains(&"corpus.created".to_string()) && actions.contains(&"documents.indexed".to_string()));
}

#[test]
fn documents_are_idempotent_by_id_and_deletable() {
    let e = env();
    let p = e.tenant("acme", Tier::Basic);
    let kb = CorpusId::new("kb").expect("id");
    e.rag.create_corpus(&p, &kb).expect("create");
    assert!(matches!(e.rag.create_corpus(&p, &kb), Err(Error::CorpusExists)));
    e.rag.add_documents(&p, &kb, &[Document::text("faq", "FAQ", "the office opens at nine")]).expect("add");
    e.rag.add_documents(&p, &kb, &[Document::text("faq", "FAQ", "the office opens at ten")]).expect("replace");
    e.rag.add_documents(&p, &kb, &[Document::text("faq", "FAQ", "the office opens at ten")]).expect("again");
    assert_eq!(e.rag.list_documents(&p, &kb).expect("list"), vec!["faq".to_string()]);
    assert!(e.rag.search(&p, &kb, &SearchRequest::new("nine", 5)).expect("search").is_empty());
    assert_eq!(e.rag.search(&p, &kb, &SearchRequest::new("ten", 5)).expect("search").len(), 1);
    // Filters on metadata.
    let mut tagged = Document::text("hr", "HR", "the office closes at five");
    tagged.metadata.insert("dept".into(), "hr".into());
    e.rag.add_documents(&p, &kb, &[tagged]).expect("add");
    let mut req = SearchRequest::new("office", 5);
    req.filters.push(("dept".into(), "hr".into()));
    let hits = e.rag.search(&p, &kb, &req).expect("search");
    assert_eq!(hits.iter().map(|h| h.doc_id.as_str()).collect::<Vec<_>>(), vec!["hr"]);
    e.rag.delete_documents(&p, &kb, &["faq".into()]).expect("delete");
    assert_eq!(e.rag.list_documents(&p, &kb).expect("list"), vec!["hr".to_string()]);
    e.rag.delete_corpus(&p, &kb).expect("delete corpus");
    assert!(e.rag.list_corpora(&p).expect("list").is_empty());
    assert!(e.core.list_objects(p.tenant(), "rag/").expect("objects").is_empty(), "every index file is purged");
}

#[test]
fn hostile_input_is_refused_or_harmless() {
    let e = env();
    let p = e.tenant("acme", Tier::Basic);
    let kb = CorpusId::new("kb").expect("id");
    e.rag.create_corpus(&p, &kb).expect("create");
    for bad in ["", "../x", "A", "a/b", &"x".repeat(65)] {
        assert!(CorpusId::new(bad).is_err(), "{bad:?}");
    }
    let mut bad_meta = Document::text("d", "t", "b");
    bad_meta.metadata.insert("Bad Key".into(), "v".into());
    for doc in
        [Document::text("", "t", "b"), Document::text("a#b", "t", "b"), Document::text("x\n", "t", "b"), bad_meta]
    {
        assert!(matches!(e.rag.add_documents(&p, &kb, &[doc]), Err(Error::InvalidArgument(_))));
    }
    // Nothing was indexed by the refused calls.
    assert!(e.rag.list_documents(&p, &kb).expect("list").is_empty());
    e.rag.add_documents(&p, &kb, &[Document::text("ok", "ok", "plain words here")]).expect("add");
    for q in ["\"unclosed", "field:", "title:(", "*", "AND OR NOT", "a^999999", &"x ".repeat(1000), "\u{0}", "ぁ"] {
        assert!(e.rag.search(&p, &kb, &SearchRequest::new(q, 5)).is_ok(), "{q:?}");
    }
    assert!(matches!(e.rag.search(&p, &kb, &SearchRequest::new("x", 0)), Err(Error::InvalidArgument(_))));
    assert!(matches!(e.rag.search(&p, &kb, &SearchRequest::new("x", 101)), Err(Error::InvalidArgument(_))));
}

#[test]
fn deleting_a_corpus_crypto_shreds_it() {
    let e = env();
    let p = e.tenant("acme", Tier::Pro);
    let gone = CorpusId::new("gone").expect("id");
    let kept = CorpusId::new("kept").expect("id");
    for c in [&gone, &kept] {
        e.rag.create_corpus(&p, c).expect("create");
        e.rag.add_documents(&p, c, &[Document::text("d", "D", format!("payload for {}", c.as_str()))]).expect("index");
    }
    let blobs = e.dir.path().join("data");
    let before: Vec<(PathBuf, Vec<u8>)> = files_under(&blobs)
        .into_iter()
        .map(|f| {
            let b = std::fs::read(&f).expect("read");
            (f, b)
        })
        .collect();
    e.rag.delete_corpus(&p, &gone).expect("delete");
    assert_eq!(e.rag.list_corpora(&p).expect("list"), vec![kept.clone()]);
    assert_eq!(e.rag.search(&p, &kept, &SearchRequest::new("payload", 5)).expect("search").len(), 1);
    // Put the deleted corpus's blobs back, as a restored backup would: still unreadable.
    let removed: Vec<_> = before.iter().filter(|(f, _)| !f.exists()).collect();
    assert!(removed.len() >= 3, "{}", removed.len());
    for (f, b) in &removed {
        std::fs::write(f, b).expect("restore");
    }
    assert!(matches!(e.fresh_rag().search(&p, &gone, &SearchRequest::new("payload", 5)), Err(Error::CorpusNotFound)));
    // Re-creating a corpus of the same name starts empty, under a new key.
    e.rag.create_corpus(&p, &gone).expect("recreate");
    assert!(e.rag.search(&p, &gone, &SearchRequest::new("payload", 5)).expect("search").is_empty());
}

#[test]
fn basic_indexes_share_a_store_and_pro_indexes_get_their_own() {
    let e = env();
    let basic = e.tenant("small", Tier::Basic);
    let pro = e.tenant("large", Tier::Pro);
    let kb = CorpusId::new("kb").expect("id");
    for p in [&basic, &pro] {
        e.rag.create_corpus(p, &kb).expect("create");
        e.rag.add_documents(p, &kb, &[Document::text("d", "D", "where does this live")]).expect("index");
    }
    let data = e.dir.path().join("data");
    let count = |sub: &str, tenant: &str| {
        files_under(&data.join(sub)).iter().filter(|f| f.to_string_lossy().contains(&format!("/t/{tenant}/o/"))).count()
    };
    assert!(count("blobs", "small") >= 3, "Basic: the shared store");
    assert_eq!(count("dedicated", "small"), 0);
    assert_eq!(count("blobs", "large"), 0, "Pro: nothing on the shared store");
    assert!(count("dedicated/large", "large") >= 3, "Pro: its own store");
}

#[test]
fn query_text_is_kept_only_on_opt_in_and_then_sealed() {
    let e = env();
    let org = e.tenant("bigorg", Tier::Org);
    let kb = CorpusId::new("kb").expect("id");
    e.rag.create_corpus(&org, &kb).expect("create");
    e.rag.add_documents(&org, &kb, &[Document::text("x", "X", "quarterly numbers")]).expect("index");
    e.rag.search(&org, &kb, &SearchRequest::new("QUERYCANARY before opt-in", 3)).expect("search");
    e.core.set_query_text_logging(&org, true).expect("opt in");
    e.rag.search(&org, &kb, &SearchRequest::new("QUERYCANARY after opt-in", 3)).expect("search");
    e.core.set_query_text_logging(&org, false).expect("opt out");
    e.rag.search(&org, &kb, &SearchRequest::new("QUERYCANARY after opt-out", 3)).expect("search");
    let details: Vec<Option<String>> =
        e.core.access_log(&org).expect("log").into_iter().filter(|r| r.action == "search").map(|r| r.detail).collect();
    assert_eq!(details, vec![None, Some("QUERYCANARY after opt-in".to_string()), None]);
    for f in files_under(&e.dir.path().join("data")) {
        assert!(!contains(&std::fs::read(&f).expect("read"), b"QUERYCANARY"), "{} holds query text", f.display());
    }
    let actions: Vec<String> = e.core.audit_log(&org).expect("audit").into_iter().map(|r| r.action).collect();
    assert_eq!(actions.iter().filter(|a| *a == "tenant.settings_changed").count(), 2);
}

#[test]
fn grounded_prompts_carry_the_answering_chunk_within_budget() {
    let e = env();
    let p = e.tenant("acme", Tier::Basic);
    let kb = CorpusId::new("kb").expect("id");
    e.rag.create_corpus(&p, &kb).expect("create");
    let mut docs: Vec<Document> = (0..40)
        .map(|i| Document::text(format!("n{i}"), "Notes", format!("meeting notes {i} about budgets and offices")))
        .collect();
    docs.push(Document::text("leave", "Leave policy", "Staff receive thirty days of paid leave every year."));
    e.rag.add_documents(&p, &kb, &docs).expect("index");
    let prompt = e.rag.grounded_prompt(&p, &kb, "How many days of paid leave?", 8, 200).expect("prompt");
    assert!(prompt.tokens <= 200);
    assert_eq!(prompt.sources.first().map(|s| s.chunk_id.as_str()), Some("leave#0"));
    assert!(prompt.user.contains("thirty days of paid leave"));
    assert!(prompt.system.contains("[1]"));
    // A model's answer is mapped back to the chunks it cites.
    assert_eq!(prompt.citations("Thirty days [1]."), vec!["leave#0".to_string()]);
    // The question and the prompt never reach disk.
    for f in files_under(&e.dir.path().join("data")) {
        assert!(!contains(&std::fs::read(&f).expect("read"), b"thirty days"), "{}", f.display());
    }
}

/// A toy embedder: cat words point one way, dog words the other, anything else in between.
#[derive(Debug)]
struct Pets {
    id: &'static str,
    wrong_count: bool,
}

impl soramai_rag::Embedder for Pets {
    fn id(&self) -> &str {
        self.id
    }
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, Box<dyn std::error::Error + Send + Sync>> {
        let mut out: Vec<Vec<f32>> = texts
            .iter()
            .map(|t| {
                let t = t.to_lowercase();
                if t.contains("cat") || t.contains("feline") {
                    vec![1.0, 0.0]
                } else if t.contains("dog") || t.contains("canine") {
                    vec![0.0, 1.0]
                } else {
                    vec![0.7, 0.7]
                }
            })
            .collect();
        if self.wrong_count {
            out.pop();
        }
        Ok(out)
    }
}

fn with_embedder(e: &Env, id: &'static str, wrong_count: bool) -> Rag {
    let options = soramai_rag::RagOptions {
        embedder: Some(Arc::new(Pets { id, wrong_count })),
        ..soramai_rag::RagOptions::default()
    };
    Rag::with_options(e.core.clone(), 16 << 20, options)
}

#[test]
fn hybrid_search_reranks_bm25_candidates_by_embedding() {
    let e = env();
    let p = e.tenant("acme", Tier::Pro);
    let rag = with_embedder(&e, "pets-v1", false);
    let kb = CorpusId::new("pets").expect("id");
    rag.create_corpus(&p, &kb).expect("create");
    rag.add_documents(
        &p,
        &kb,
        &[
            Document::text("dog", "Notes", "The canine sleeps on the mat, the mat, the mat, the mat."),
            Document::text("cat", "Notes", "The feline sleeps on the mat, the mat."),
            Document::text("rug", "Notes", "A mat is a small rug."),
        ],
    )
    .expect("index");
    let ids = |hits: &[soramai_rag::Hit]| hits.iter().map(|h| h.doc_id.clone()).collect::<Vec<_>>();
    let plain = rag.search(&p, &kb, &SearchRequest::new("cat mat", 3)).expect("bm25");
    assert_eq!(plain[0].doc_id, "dog", "BM25 alone favours the most mats: {:?}", ids(&plain));
    assert!(plain.iter().all(|h| h.similarity.is_none()));
    let hybrid = rag.search(&p, &kb, &SearchRequest::new("cat mat", 3).hybrid()).expect("hybrid");
    assert_eq!(hybrid[0].doc_id, "cat", "the embedding lifts the feline: {:?}", ids(&hybrid));
    assert!(hybrid[0].similarity.is_some_and(|s| s > 0.99), "{:?}", hybrid[0].similarity);
    assert!(hybrid.windows(2).all(|w| w[0].score >= w[1].score));
    // top_k still bounds the answer.
    assert_eq!(rag.search(&p, &kb, &SearchRequest::new("cat mat", 1).hybrid()).expect("hybrid").len(), 1);

    // Vectors of another embedder are never compared: BM25 order, no similarity.
    let other = with_embedder(&e, "pets-v2", false);
    let hits = other.search(&p, &kb, &SearchRequest::new("cat mat", 3).hybrid()).expect("other id");
    assert_eq!(ids(&hits), ids(&plain));
    assert!(hits.iter().all(|h| h.similarity.is_none()));

    // Without an embedder, hybrid is refused with a typed error.
    assert!(matches!(e.rag.search(&p, &kb, &SearchRequest::new("cat", 3).hybrid()), Err(Error::InvalidArgument(_))));
}

#[test]
fn a_broken_embedder_fails_ingestion_and_indexes_nothing() {
    let e = env();
    let p = e.tenant("acme", Tier::Pro);
    let rag = with_embedder(&e, "broken", true);
    let kb = CorpusId::new("pets").expect("id");
    rag.create_corpus(&p, &kb).expect("create");
    let r = rag.add_documents(&p, &kb, &[Document::text("a", "A", "one cat"), Document::text("b", "B", "two dogs")]);
    assert!(matches!(r, Err(Error::Embedding(_))), "{r:?}");
    assert!(rag.list_documents(&p, &kb).expect("list").is_empty());
}
