//! RAG ingestion throughput: the whole job (request-side checks and cutting, the encrypted job
//! input, the child process embedding every chunk through the serving engine's batched forward
//! pass, the vectors back through the pipe, one commit into the encrypted index) against its two
//! costs measured alone in the same run: embedding the same chunk texts in-process with the same
//! model, and indexing the same chunks with their vectors into plain tantivy on `MmapDirectory`.
//!
//! `cargo bench -p soramai-server --bench ingest [-- --chunks N --rounds R]`
//!
//! Target: the job's chunks/s is at least 85% of the sum of parts (1 / (embed + index) per
//! chunk): the job system, the child's model load, the pipes and the encryption together cost at
//! most 15%. Set `SORAMAI_TEST_MODEL` (default `.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use soramai::{DocumentInput, KeyOptions, OpenOptions, Platform, Principal, RunnerCommand, Scope, Session, Tier};
use soramai_kernels::Engine;
use soramai_rag::Embedder;
use tantivy::directory::MmapDirectory;
use tantivy::schema::{IndexRecordOption, STORED, STRING, Schema, TantivyDocument, TextFieldIndexing, TextOptions};
use tantivy::{Index, IndexSettings};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn model() -> PathBuf {
    std::env::var_os("SORAMAI_TEST_MODEL").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    })
}

/// Documents of prose-like text (the repository's own docs, repeated), `per_doc` chunks each.
fn corpus(chunks: usize) -> Vec<DocumentInput> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut text = String::new();
    for name in ["README.md", "docs/security.md", "docs/server.md", "docs/backups.md"] {
        text.push_str(&std::fs::read_to_string(root.join(name)).unwrap_or_default());
        text.push('\n');
    }
    if text.trim().is_empty() {
        text = "The travel desk is on floor seven and books trains for trips under 600 km. ".repeat(200);
    }
    // About 20 chunks of 160 tokens per document; as many documents as the chunks need.
    let words: Vec<&str> = text.split_whitespace().collect();
    let per_doc = 20 * 110;
    (0..chunks.div_ceil(20))
        .map(|i| {
            let body: Vec<&str> = (0..per_doc).map(|k| words[(i * 997 + k) % words.len()]).collect();
            DocumentInput {
                id: format!("doc-{i}"),
                title: format!("Document {i}"),
                text: body.join(" "),
                format: None,
                metadata: Default::default(),
            }
        })
        .collect()
}

fn tenant(p: &Platform) -> Principal {
    let t = soramai::TenantId::new("bench").expect("id");
    p.core().create_tenant(&t, Tier::Org).expect("tenant");
    let key = p.core().create_api_key(&Principal::operator(&t), KeyOptions::new("k", &[Scope::Rag])).expect("key");
    p.authenticate(key.secret()).expect("auth")
}

fn plain_tantivy(dir: &std::path::Path, docs: &[(String, String, String, Vec<f32>)]) -> Duration {
    let mut b = Schema::builder();
    let stemmed = TextOptions::default()
        .set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("en_stem")
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        )
        .set_stored();
    let chunk_id = b.add_text_field("chunk_id", STRING | STORED);
    let title = b.add_text_field("title", stemmed.clone());
    let text = b.add_text_field("text", stemmed);
    let embedding = b.add_bytes_field("embedding", STORED);
    let schema = b.build();
    let started = Instant::now();
    let index = Index::create(MmapDirectory::open(dir).expect("dir"), schema, IndexSettings::default()).expect("index");
    let mut writer: tantivy::IndexWriter = index.writer_with_num_threads(1, 64 << 20).expect("writer");
    for (id, t, body, v) in docs {
        let mut d = TantivyDocument::default();
        d.add_text(chunk_id, id);
        d.add_text(title, t);
        d.add_text(text, body);
        d.add_bytes(embedding, &v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
        writer.add_document(d).expect("add");
    }
    writer.commit().expect("commit");
    writer.wait_merging_threads().expect("merge");
    started.elapsed()
}

fn main() {
    let chunks = arg("--chunks", 240);
    let rounds = arg("--rounds", 2);
    let model = model();
    if !model.exists() {
        eprintln!("no model at {} (run scripts/fetch-model.sh)", model.display());
        return;
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let isa = if cpu.contains("avx512_vnni") {
        "AVX-512 VNNI"
    } else if cpu.contains("avx2") {
        "AVX2"
    } else {
        "other"
    };
    println!(
        "ingest throughput, {} on {isa}, {} threads",
        model.display(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let docs = corpus(chunks);
    let dir = tempfile::tempdir().expect("dir");
    let runner = RunnerCommand { args: vec!["job-runner".into()], ..RunnerCommand::new(env!("CARGO_BIN_EXE_soramai")) };
    let options = OpenOptions { model: Some(model.clone()), ..OpenOptions::default() };
    let platform = Platform::open_with(dir.path(), &options, Some(runner)).expect("platform");
    let principal = tenant(&platform);
    let session = Session::new(platform.clone(), principal);
    session.create_corpus("kb").expect("corpus");
    // The chunks exactly as the job cuts them, for the two parts measured alone.
    let rag = platform.rag().expect("rag");
    let batch = rag
        .prepare(
            session.principal(),
            &soramai_rag::CorpusId::new("kb").expect("id"),
            &docs.iter().cloned().map(Into::into).collect::<Vec<_>>(),
        )
        .expect("prepare");
    let texts = batch.embedding_texts();
    let n = texts.len();
    let engine = Arc::new(Engine::load(&model).expect("engine"));
    let embedder = soramai::ModelEmbedder::new(engine);

    let (mut job_s, mut embed_s, mut index_s) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // Embedding alone, in-process, the job's batches.
        let started = Instant::now();
        let mut vectors = Vec::with_capacity(n);
        for part in texts.chunks(24) {
            let refs: Vec<&str> = part.iter().map(String::as_str).collect();
            vectors.extend(embedder.embed(&refs).expect("embed"));
        }
        embed_s.push(started.elapsed().as_secs_f64());
        // Plain tantivy, the same chunks with their vectors.
        let rows: Vec<(String, String, String, Vec<f32>)> = batch
            .documents
            .iter()
            .flat_map(|d| {
                d.chunks.iter().map(move |c| (format!("{}#{}", d.id, c.ordinal), d.title.clone(), c.text.clone()))
            })
            .zip(vectors)
            .map(|((a, b, c), v)| (a, b, c, v))
            .collect();
        let plain = tempfile::tempdir().expect("dir");
        index_s.push(plain_tantivy(plain.path(), &rows).as_secs_f64());
        // The whole job: request to indexed.
        let started = Instant::now();
        let job = session.start_ingestion("kb", docs.clone()).expect("start");
        let job = session.wait_ingestion("kb", job.id.as_str(), Duration::from_secs(3600)).expect("wait");
        job_s.push(started.elapsed().as_secs_f64());
        assert_eq!(job.state, soramai::JobState::Succeeded, "{job:?}");
        eprintln!(
            "round {round}: job {:.2} s, embed {:.2} s, index {:.3} s",
            job_s[round], embed_s[round], index_s[round]
        );
    }
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let (job, embed, index) = (best(&job_s), best(&embed_s), best(&index_s));
    let rate = |s: f64| n as f64 / s;
    println!("{n} chunks (best of {rounds})");
    println!("| path | seconds | chunks/s |");
    println!("| --- | ---: | ---: |");
    println!("| embedding alone (in-process, same model, same batches) | {embed:.2} | {:.1} |", rate(embed));
    println!("| plain tantivy indexing (MmapDirectory, same chunks + vectors) | {index:.3} | {:.0} |", rate(index));
    println!("| sum of parts (embed + index) | {:.2} | {:.1} |", embed + index, rate(embed + index));
    println!("| **ingestion job** (request to searchable) | {job:.2} | {:.1} |", rate(job));
    let ratio = (embed + index) / job;
    println!("job / sum of parts: {ratio:.2}x (target >= 0.85x: {})", if ratio >= 0.85 { "met" } else { "NOT met" });
    platform.shutdown();
}
