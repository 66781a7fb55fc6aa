//! Plain tantivy on `MmapDirectory` against the same pipeline on `EncryptedDirectory`, same corpus,
//! same schema, same queries, alternating within each round.
//!
//! `cargo bench -p soramai-rag --bench rag_index [-- --docs N --rounds R --queries Q]`
//!
//! Prints indexing docs/s (one writer thread, one commit) and query latency p50/p99 (BM25 top 10
//! over a warm reader; the encrypted side serves repeated chunks from its decrypted-chunk cache).

use std::sync::Arc;
use std::time::Instant;

use soramai_core::{Config, Core, LocalRootKey, TenantId, Tier};
use soramai_rag::{ChunkCache, EncryptedDirectory};
use tantivy::collector::TopDocs;
use tantivy::directory::MmapDirectory;
use tantivy::query::QueryParser;
use tantivy::schema::{IndexRecordOption, STORED, STRING, Schema, TantivyDocument, TextFieldIndexing, TextOptions};
use tantivy::{Directory, Index, IndexSettings};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A Zipf-like pick: small indices far more often.
    fn zipf(&mut self, n: usize) -> usize {
        let u = (self.next() % 1_000_000) as f64 / 1_000_000.0;
        ((n as f64).powf(u) as usize).saturating_sub(1).min(n - 1)
    }
}

fn vocabulary(n: usize) -> Vec<String> {
    let syl = ["ka", "to", "ri", "mu", "se", "no", "va", "li", "po", "ne", "shi", "ra", "de", "gu", "mo", "te"];
    let mut rng = Rng(0x9E3779B97F4A7C15);
    (0..n)
        .map(|_| (0..2 + rng.next() % 3).map(|_| syl[(rng.next() % syl.len() as u64) as usize]).collect::<String>())
        .collect()
}

fn schema() -> (Schema, tantivy::schema::Field, tantivy::schema::Field) {
    let mut b = Schema::builder();
    let opts = TextOptions::default()
        .set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("en_stem")
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        )
        .set_stored();
    let id = b.add_text_field("id", STRING | STORED);
    let text = b.add_text_field("text", opts);
    (b.build(), id, text)
}

fn index_corpus(dir: Box<dyn Directory>, docs: &[String]) -> (f64, Index) {
    let (schema, id, text) = schema();
    let index = Index::create(dir, schema, IndexSettings::default()).expect("create");
    let start = Instant::now();
    let mut writer = index.writer_with_num_threads(1, 64 << 20).expect("writer");
    for (i, d) in docs.iter().enumerate() {
        let mut doc = TantivyDocument::default();
        doc.add_text(id, i.to_string());
        doc.add_text(text, d);
        writer.add_document(doc).expect("add");
    }
    writer.commit().expect("commit");
    writer.wait_merging_threads().expect("merge");
    (docs.len() as f64 / start.elapsed().as_secs_f64(), index)
}

fn query_latencies(index: &Index, queries: &[String]) -> Vec<f64> {
    let (_, _, text) = schema();
    let reader = index.reader().expect("reader");
    let searcher = reader.searcher();
    let parser = QueryParser::for_index(index, vec![text]);
    let run = |q: &str| {
        let query = parser.parse_query(q).expect("query");
        let top = searcher.search(&query, &TopDocs::with_limit(10).order_by_score()).expect("search");
        for (_, addr) in top {
            let _: TantivyDocument = searcher.doc(addr).expect("doc");
        }
    };
    for q in queries.iter().take(50) {
        run(q); // warm up
    }
    queries
        .iter()
        .map(|q| {
            let t = Instant::now();
            run(q);
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let n_docs = arg("--docs", 12_000);
    let rounds = arg("--rounds", 3);
    let n_queries = arg("--queries", 1000);
    let vocab = vocabulary(20_000);
    let mut rng = Rng(42);
    let docs: Vec<String> = (0..n_docs)
        .map(|_| (0..60).map(|_| vocab[rng.zipf(vocab.len())].as_str()).collect::<Vec<_>>().join(" "))
        .collect();
    let queries: Vec<String> =
        (0..n_queries).map(|_| format!("{} {}", vocab[rng.zipf(2000)], vocab[rng.zipf(vocab.len())])).collect();

    let mut idx = (Vec::new(), Vec::new());
    let mut p50 = (Vec::new(), Vec::new());
    let mut p99 = (Vec::new(), Vec::new());
    let mut cache_stats = (0, 0);
    for round in 0..rounds {
        let tmp = tempfile::tempdir().expect("tempdir");
        // Plain.
        let plain_dir = tmp.path().join(format!("plain-{round}"));
        std::fs::create_dir_all(&plain_dir).expect("dir");
        let (rate, index) = index_corpus(Box::new(MmapDirectory::open(&plain_dir).expect("mmap")), &docs);
        idx.0.push(rate);
        let mut lat = query_latencies(&index, &queries);
        p50.0.push(pct(&mut lat, 0.5));
        p99.0.push(pct(&mut lat, 0.99));
        // Encrypted.
        let core = Arc::new(
            Core::open(Config::new(tmp.path().join("core"), Arc::new(LocalRootKey::generate()))).expect("core"),
        );
        let t = TenantId::new("bench").expect("id");
        core.create_tenant(&t, Tier::Pro).expect("tenant");
        let cache = Arc::new(ChunkCache::new(256 << 20));
        let dir = EncryptedDirectory::new(core, t, "rag/bench", cache.clone()).expect("dir");
        let (rate, index) = index_corpus(Box::new(dir), &docs);
        idx.1.push(rate);
        let mut lat = query_latencies(&index, &queries);
        p50.1.push(pct(&mut lat, 0.5));
        p99.1.push(pct(&mut lat, 0.99));
        cache_stats = cache.stats();
    }
    println!("soramai-rag rag_index: {n_docs} chunks of 60 words, {n_queries} queries, {rounds} rounds (medians)");
    println!("{:<28} {:>14} {:>14} {:>8}", "", "MmapDirectory", "encrypted", "ratio");
    let row = |name: &str, a: Vec<f64>, b: Vec<f64>| {
        let (a, b) = (median(a), median(b));
        println!("{name:<28} {a:>14.1} {b:>14.1} {:>7.2}x", b / a);
    };
    row("indexing docs/s", idx.0, idx.1);
    row("query p50 (us)", p50.0, p50.1);
    row("query p99 (us)", p99.0, p99.1);
    println!("decrypted-chunk cache, last round: {} hits, {} misses", cache_stats.0, cache_stats.1);
}
