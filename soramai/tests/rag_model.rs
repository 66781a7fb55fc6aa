//! RAG on the reference model: chunk windows in model tokens, hybrid reranking by the base model's
//! embeddings (recall@5 against BM25 on the shipped handbook), and a grounded answer end to end.

use std::path::PathBuf;
use std::sync::Arc;

use soramai::kernels::Engine;
use soramai::rag::text::{self, ChunkingOptions, Format};
use soramai::rag::{CorpusId, Document, Rag, RagOptions, SearchRequest, TokenCounter};
use soramai::{Config, Core, GroundedOptions, LocalRootKey, ModelEmbedder, ModelTokens, Principal, TenantId, Tier};

const HANDBOOK: &str = include_str!("../../soramai-rag/tests/data/handbook.md");

include!("../../soramai-rag/tests/data/handbook_qa.rs");

/// The reference model, or `None` (test skipped) unless `SORAMAI_REQUIRE_MODEL` makes it required.
fn engine() -> Option<Arc<Engine>> {
    let p = std::env::var_os("SORAMAI_TEST_MODEL").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    if !p.is_file() {
        assert!(std::env::var_os("SORAMAI_REQUIRE_MODEL").is_none(), "reference model missing at {}", p.display());
        eprintln!("skipped: no reference model (run scripts/fetch-model.sh)");
        return None;
    }
    Some(Arc::new(Engine::load(&p).expect("model")))
}

fn tenant(dir: &std::path::Path) -> (Arc<Core>, Principal) {
    let core = Arc::new(Core::open(Config::new(dir, Arc::new(LocalRootKey::generate()))).expect("core"));
    let t = TenantId::new("acme").expect("id");
    core.create_tenant(&t, Tier::Pro).expect("tenant");
    (core, Principal::operator(&t))
}

#[test]
fn chunk_windows_are_measured_in_model_tokens() {
    let Some(engine) = engine() else { return };
    let tokens = ModelTokens(engine.tokenizer.clone());
    let options = ChunkingOptions { window: 48, overlap: 12 };
    let chunks = text::chunk_with(HANDBOOK, Format::Markdown, options, &tokens);
    assert!(chunks.len() > 10);
    for c in &chunks {
        // Counted word by word with each word's leading space, a window may differ from the
        // tokenization of the whole text by a merge or two at word joins, never more.
        let n = tokens.count(&c.text);
        assert!(n <= 48 + 2, "chunk {} has {n} model tokens: {:?}", c.ordinal, c.text);
    }
    // Words are not tokens: the same window in words makes fewer, longer chunks.
    let by_words = text::chunk_with(HANDBOOK, Format::Markdown, options, &soramai::rag::text::WordCount);
    assert!(by_words.len() < chunks.len(), "{} vs {}", by_words.len(), chunks.len());
}

#[test]
fn hybrid_recall_at_5_against_bm25() {
    let Some(engine) = engine() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let (core, p) = tenant(dir.path());
    let options = RagOptions {
        chunking: ChunkingOptions { window: 40, overlap: 10 },
        tokens: Arc::new(ModelTokens(engine.tokenizer.clone())),
        embedder: Some(Arc::new(ModelEmbedder::new(engine.clone()).with_max_tokens(64))),
        ..RagOptions::default()
    };
    let rag = Rag::with_options(core, 16 << 20, options);
    let kb = CorpusId::new("handbook").expect("id");
    rag.create_corpus(&p, &kb).expect("create");
    let mut docs = vec![Document {
        id: "handbook".into(),
        title: "Staff handbook".into(),
        body: HANDBOOK.into(),
        format: Format::Markdown,
        metadata: Default::default(),
    }];
    // The same distractors as the BM25 relevance test: the handbook's words scrambled.
    let words: Vec<&str> = HANDBOOK.split_whitespace().filter(|w| !w.starts_with('#')).collect();
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
    let t = std::time::Instant::now();
    let report = rag.add_documents(&p, &kb, &docs).expect("index");
    eprintln!("indexed and embedded {} chunks in {:.1} s", report.chunks, t.elapsed().as_secs_f64());
    let answers = |h: &soramai::rag::Hit, answer: &str| {
        h.doc_id == "handbook" && (h.text.to_lowercase().contains(answer) || h.heading.to_lowercase().contains(answer))
    };
    let (mut bm25, mut hybrid) = (0usize, 0usize);
    for (q, answer) in QA {
        let plain = rag.search(&p, &kb, &SearchRequest::new(*q, 5)).expect("bm25");
        let mixed = rag.search(&p, &kb, &SearchRequest::new(*q, 5).hybrid()).expect("hybrid");
        assert!(mixed.iter().all(|h| h.similarity.is_some()), "every chunk carries an embedding");
        let (a, b) = (plain.iter().any(|h| answers(h, answer)), mixed.iter().any(|h| answers(h, answer)));
        bm25 += usize::from(a);
        hybrid += usize::from(b);
        if a != b {
            eprintln!("{q:?}: bm25 {a}, hybrid {b}");
        }
    }
    let n = QA.len() as f64;
    println!(
        "recall@5 over {} questions, {} chunks: BM25 {:.2}, hybrid {:.2}",
        QA.len(),
        report.chunks,
        bm25 as f64 / n,
        hybrid as f64 / n
    );
    assert!(bm25 as f64 / n >= 0.6, "bm25 {bm25}");
    assert!(hybrid >= bm25, "hybrid reranking lost answers BM25 found: bm25 {bm25}, hybrid {hybrid}");
}

#[test]
fn grounded_answer_end_to_end() {
    let Some(engine) = engine() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let (core, p) = tenant(dir.path());
    let options = RagOptions {
        chunking: ChunkingOptions { window: 64, overlap: 16 },
        tokens: Arc::new(ModelTokens(engine.tokenizer.clone())),
        ..RagOptions::default()
    };
    let rag = Rag::with_options(core, 16 << 20, options);
    let kb = CorpusId::new("handbook").expect("id");
    rag.create_corpus(&p, &kb).expect("create");
    let doc = Document {
        id: "handbook".into(),
        title: "Staff handbook".into(),
        body: HANDBOOK.into(),
        format: Format::Markdown,
        metadata: Default::default(),
    };
    rag.add_documents(&p, &kb, &[doc]).expect("index");
    let opts = GroundedOptions { top_k: 4, max_tokens: 48, ..GroundedOptions::default() };
    let a = soramai::grounded::answer(&rag, &engine, &p, &kb, "How many days of paid leave do staff get?", &opts)
        .expect("answer");
    println!("answer: {:?}\ncitations: {:?}", a.answer, a.citations);
    assert!(!a.answer.trim().is_empty());
    assert!(a.completion_tokens <= 48 && a.prompt_tokens + a.completion_tokens <= engine.model.config.n_ctx);
    assert!(
        a.sources.iter().any(|s| s.chunk_id.starts_with("handbook#")),
        "the answering chunk is among the sources: {:?}",
        a.sources
    );
    assert!(a.citations.iter().all(|c| a.sources.iter().any(|s| &s.chunk_id == c)), "citations resolve to sources");
    // Greedy answers are reproducible.
    let again = soramai::grounded::answer(&rag, &engine, &p, &kb, "How many days of paid leave do staff get?", &opts)
        .expect("again");
    assert_eq!(again.answer, a.answer);

    // A free-tier tenant is refused before any retrieval or generation.
    let core2 =
        Arc::new(Core::open(Config::new(dir.path().join("b"), Arc::new(LocalRootKey::generate()))).expect("core"));
    let free = TenantId::new("freebie").expect("id");
    core2.create_tenant(&free, Tier::Free).expect("tenant");
    let rag2 = Rag::new(core2, 1 << 20);
    let r = soramai::grounded::answer(&rag2, &engine, &Principal::operator(&free), &kb, "q", &opts);
    assert!(matches!(r, Err(soramai::PlatformError::Rag(_))), "{r:?}");
    // A budget that leaves no room for sources is a typed error.
    let huge = GroundedOptions { max_tokens: 1 << 20, ..opts };
    assert!(matches!(
        soramai::grounded::answer(&rag, &engine, &p, &kb, "q", &huge),
        Err(soramai::PlatformError::InvalidArgument(_))
    ));
}
