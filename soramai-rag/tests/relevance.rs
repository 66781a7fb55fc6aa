//! Relevance on a small corpus the project ships (`tests/data/handbook.md`, written for the
//! project): hand-written questions, each with the chunk that answers it; recall@5 of BM25.

use std::sync::Arc;

use soramai_core::{Config, Core, LocalRootKey, Principal, TenantId, Tier};
use soramai_rag::{ChunkingOptions, CorpusId, Document, Format, Rag, RagOptions, SearchRequest};

const HANDBOOK: &str = include_str!("data/handbook.md");

include!("data/handbook_qa.rs");

#[test]
fn bm25_recall_at_5() {
    let dir = tempfile::tempdir().expect("tempdir");
    let core = Arc::new(Core::open(Config::new(dir.path(), Arc::new(LocalRootKey::generate()))).expect("core"));
    let t = TenantId::new("acme").expect("id");
    core.create_tenant(&t, Tier::Pro).expect("tenant");
    let p = Principal::operator(&t);
    let options = RagOptions { chunking: ChunkingOptions { window: 24, overlap: 6 }, ..RagOptions::default() };
    let rag = Rag::with_options(core, 8 << 20, options);
    let kb = CorpusId::new("handbook").expect("id");
    rag.create_corpus(&p, &kb).expect("create");
    let doc = Document {
        id: "handbook".into(),
        title: "Staff handbook".into(),
        body: HANDBOOK.into(),
        format: Format::Markdown,
        metadata: Default::default(),
    };
    // Distractors: 300 documents of the handbook's own words in a scrambled order, so the
    // answering chunk has to win against text with the same vocabulary.
    let words: Vec<&str> = HANDBOOK.split_whitespace().filter(|w| !w.starts_with('#')).collect();
    let mut docs = vec![doc];
    let mut state = 0x2545F4914F6CDD1Du64;
    for i in 0..300 {
        let body: Vec<&str> = (0..40)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                words[(state % words.len() as u64) as usize]
            })
            .collect();
        docs.push(Document::text(format!("noise-{i}"), "Notes", body.join(" ")));
    }
    let report = rag.add_documents(&p, &kb, &docs).expect("index");
    assert!(report.chunks >= 300, "{report:?}");
    let mut found = 0;
    let mut first = 0;
    for (q, answer) in QA {
        let hits = rag.search(&p, &kb, &SearchRequest::new(*q, 5)).expect("search");
        let answers = |h: &soramai_rag::Hit| {
            h.doc_id == "handbook"
                && (h.text.to_lowercase().contains(answer) || h.heading.to_lowercase().contains(answer))
        };
        first += usize::from(hits.first().is_some_and(answers));
        let ok = hits.iter().any(answers);
        if ok {
            found += 1;
        } else {
            eprintln!("missed: {q}");
        }
    }
    let recall = found as f64 / QA.len() as f64;
    println!(
        "BM25 recall@5 = {recall:.2} ({found}/{} questions), recall@1 = {:.2}, over {} chunks",
        QA.len(),
        first as f64 / QA.len() as f64,
        report.chunks
    );
    assert!(recall >= 0.8, "recall@5 {recall:.2}");
}
