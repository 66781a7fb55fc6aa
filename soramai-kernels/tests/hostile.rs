//! Hostile input: one crafted file per class of the public GGUF loader CVEs (llama.cpp,
//! llama-cpp-python, Ollama), hostile chat templates and adapters, and bounded random
//! truncation/byte-flip properties. Each gives a typed error, never a panic or a huge allocation.

mod common;

use std::sync::Arc;

use proptest::prelude::*;
use soramai_kernels::gguf::{Gguf, GgufWriter, Value};
use soramai_kernels::lora::Adapter;
use soramai_kernels::model::{Lane, Logits, Model, Precision};
use soramai_kernels::quant::GgmlType;
use soramai_kernels::tokenizer::template::{ChatTemplate, Message};
use soramai_kernels::{Engine, Error, Tokenizer};

/// Raw GGUF bytes, written field by field so that any field can lie.
#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, tensors: u64, kvs: u64) -> Self {
        let mut r = Raw(b"GGUF".to_vec());
        r.u32(version).u64(tensors).u64(kvs);
        r
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn kv_u32(&mut self, k: &str, v: u32) -> &mut Self {
        self.str(k).u32(4).u32(v)
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for d in dims {
            self.u64(*d);
        }
        self.u32(ty).u64(offset)
    }
    fn pad(&mut self, align: usize, data: usize) -> Vec<u8> {
        let mut b = self.0.clone();
        b.resize(b.len().next_multiple_of(align), 0);
        b.resize(b.len() + data, 0);
        b
    }
    /// Parses with 64 trailing zero bytes, so that counts are not refused merely for lack of room.
    fn parse(&self) -> Result<Gguf, Error> {
        let mut b = self.0.clone();
        b.extend_from_slice(&[0; 64]);
        Gguf::from_bytes(b)
    }
    fn parse_exact(&self) -> Result<Gguf, Error> {
        Gguf::from_bytes(self.0.clone())
    }
}

fn gguf_err(r: Result<Gguf, Error>, needle: &str) {
    match r {
        Err(Error::Gguf { reason, .. }) => assert!(reason.contains(needle), "reason {reason:?} lacks {needle:?}"),
        other => panic!("expected a GGUF error containing {needle:?}, got {other:?}"),
    }
}

#[test]
fn bad_magic_and_versions() {
    gguf_err(Gguf::from_bytes(b"GGUG\x03\0\0\0".to_vec()), "magic");
    gguf_err(Raw::header(1, 0, 0).parse(), "version");
    gguf_err(Raw::header(4, 0, 0).parse(), "version");
    gguf_err(Gguf::from_bytes(b"GG".to_vec()), "truncated");
    assert!(Raw::header(3, 0, 0).parse().is_ok());
    assert!(Raw::header(2, 0, 0).parse().is_ok());
}

#[test]
fn huge_counts_are_refused_before_allocating() {
    // CVE class: tensor/kv counts and string/array lengths that would allocate terabytes.
    gguf_err(Raw::header(3, u64::MAX, 0).parse(), "tensor count");
    gguf_err(Raw::header(3, 0, u64::MAX).parse(), "metadata count");
    let mut r = Raw::header(3, 0, 1);
    r.u64(u64::MAX);
    gguf_err(r.parse(), "string length");
    let mut r = Raw::header(3, 0, 1);
    r.u64(1 << 40);
    gguf_err(r.parse(), "string length");
    let mut r = Raw::header(3, 0, 1);
    r.str("tokenizer.ggml.tokens").u32(9).u32(8).u64(1 << 61);
    gguf_err(r.parse(), "array count");
    let mut r = Raw::header(3, 0, 1);
    r.str("a").u32(9).u32(10).u64(u64::MAX / 8);
    gguf_err(r.parse(), "array count");
    // Arrays nested past the limit.
    let mut r = Raw::header(3, 0, 1);
    r.str("deep").u32(9);
    for _ in 0..6 {
        r.u32(9).u64(1);
    }
    r.u32(4).u64(1).u32(0);
    gguf_err(r.parse(), "nested");
}

#[test]
fn tensor_size_overflow() {
    // CVE class: element count or byte size overflowing 64 bits, wrapping to a small buffer.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[1 << 32, 1 << 32, 1 << 32], 0, 0);
    gguf_err(Gguf::from_bytes(r.pad(32, 64)), "overflows");
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[1 << 62, 4], 2, 0);
    gguf_err(Gguf::from_bytes(r.pad(32, 64)), "overflows");
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[33], 2, 0);
    gguf_err(Gguf::from_bytes(r.pad(32, 64)), "multiple");
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[4, 4, 4, 4, 4], 0, 0);
    gguf_err(Gguf::from_bytes(r.pad(32, 64)), "dimensions");
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[4], 99, 0);
    gguf_err(Gguf::from_bytes(r.pad(32, 64)), "tag 99");
}

#[test]
fn alignment_and_offsets() {
    // CVE class: alignment padding overflow, misaligned or wrapping offsets, data past the end.
    for bad in [0u32, 3, 1 << 20] {
        let mut r = Raw::header(3, 0, 1);
        r.kv_u32("general.alignment", bad);
        gguf_err(r.parse(), "alignment");
    }
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[8], 0, 4);
    gguf_err(Gguf::from_bytes(r.pad(32, 64)), "aligned");
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[8], 0, u64::MAX - 31);
    gguf_err(Gguf::from_bytes(r.pad(32, 64)), "overflows");
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[64], 0, 0);
    gguf_err(Gguf::from_bytes(r.pad(32, 100)), "past");
    let mut r = Raw::header(3, 2, 0);
    r.tensor("a", &[16], 0, 0).tensor("b", &[16], 0, 32);
    gguf_err(Gguf::from_bytes(r.pad(32, 128)), "overlaps");
    let mut r = Raw::header(3, 2, 0);
    r.tensor("a", &[8], 0, 0).tensor("a", &[8], 0, 32);
    gguf_err(Gguf::from_bytes(r.pad(32, 128)), "duplicate");
    // Header says there is a data section, file ends inside the tensor infos.
    let mut r = Raw::header(3, 1, 0);
    r.str("t").u32(1);
    gguf_err(r.parse_exact(), "exceeds");
    gguf_err(Raw::header(3, 0, 0).parse_exact().and_then(|_| Raw::header(3, 0, 1).parse_exact()), "exceeds");
}

#[test]
fn bad_values() {
    let mut r = Raw::header(3, 0, 1);
    r.str("b").u32(7);
    r.0.push(2);
    gguf_err(r.parse(), "bool");
    let mut r = Raw::header(3, 0, 1);
    r.str("x").u32(13);
    gguf_err(r.parse(), "value type");
    let mut r = Raw::header(3, 0, 1);
    r.u64(2);
    r.0.extend_from_slice(&[0xff, 0xfe]);
    gguf_err(r.parse(), "UTF-8");
    let mut r = Raw::header(3, 0, 2);
    r.kv_u32("k", 1).kv_u32("k", 2);
    gguf_err(r.parse(), "duplicate");
}

fn tiny() -> Vec<u8> {
    common::tiny_model_bytes("llama", GgmlType::Q8_0, 1)
}

/// A tiny Gemma 3 in the formats of a Q4_K_M file: Q4_K attention, Q6_K down, Q5_0 gate/up,
/// Q8_0 embeddings, f32 norms (256 wide, so every row is whole k-quant blocks).
fn tiny_kquant() -> Vec<u8> {
    let (d, nh, nkv, hd, ff, layers) = (256usize, 2usize, 1usize, 128usize, 256usize, 2usize);
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("gemma3".into()));
    let vocab = common::tiny_vocab(&mut w);
    for (k, v) in [
        ("block_count", layers),
        ("context_length", 64),
        ("embedding_length", d),
        ("feed_forward_length", ff),
        ("attention.head_count", nh),
        ("attention.head_count_kv", nkv),
        ("attention.key_length", hd),
        ("attention.value_length", hd),
        ("attention.sliding_window", 4),
    ] {
        w.set(format!("gemma3.{k}"), Value::U32(v as u32));
    }
    let mut seed = 40;
    let mut mat = |w: &mut GgufWriter, name: &str, rows: usize, cols: usize, ty: GgmlType| {
        seed += 1;
        w.add_f32(name, &[cols as u64, rows as u64], ty, &common::rand_vec(seed, rows * cols, 0.2)).expect("t");
    };
    let norm = |w: &mut GgufWriter, name: &str, n: usize| {
        w.add_f32(name, &[n as u64], GgmlType::F32, &vec![1.0; n]).expect("t");
    };
    mat(&mut w, "token_embd.weight", vocab, d, GgmlType::Q8_0);
    for l in 0..layers {
        let n = |s: &str| format!("blk.{l}.{s}");
        norm(&mut w, &n("attn_norm.weight"), d);
        mat(&mut w, &n("attn_q.weight"), nh * hd, d, GgmlType::Q4_K);
        mat(&mut w, &n("attn_k.weight"), nkv * hd, d, GgmlType::Q4_K);
        mat(&mut w, &n("attn_v.weight"), nkv * hd, d, GgmlType::Q6_K);
        mat(&mut w, &n("attn_output.weight"), d, nh * hd, GgmlType::Q5_K);
        norm(&mut w, &n("attn_q_norm.weight"), hd);
        norm(&mut w, &n("attn_k_norm.weight"), hd);
        norm(&mut w, &n("post_attention_norm.weight"), d);
        norm(&mut w, &n("ffn_norm.weight"), d);
        mat(&mut w, &n("ffn_gate.weight"), ff, d, GgmlType::Q5_0);
        mat(&mut w, &n("ffn_up.weight"), ff, d, GgmlType::Q5_0);
        mat(&mut w, &n("ffn_down.weight"), d, ff, GgmlType::Q6_K);
        norm(&mut w, &n("post_ffw_norm.weight"), d);
    }
    norm(&mut w, "output_norm.weight", d);
    w.to_bytes()
}

#[test]
fn k_quant_tensors_of_the_wrong_size_or_shape_are_typed_errors() {
    let good = tiny_kquant();
    let m =
        Model::from_gguf(Arc::new(Gguf::from_bytes(good.clone()).expect("parses"))).expect("the tiny k-quant model");
    let mut cache = m.new_cache();
    let toks = [1u32, 5, 9];
    let mut lanes = [Lane { cache: &mut cache, tokens: &toks, adapter: None, logits: Logits::Last }];
    let logits = m.forward(&mut lanes, Precision::Fast).expect("forward").remove(0);
    assert!(logits.iter().all(|v| v.is_finite()));
    // Truncated anywhere in the tensor data: the reader refuses before any kernel runs.
    let g = Gguf::from_bytes(good.clone()).expect("parses");
    let data = g.data_offset;
    for cut in [data + 1, data + 144, (data + good.len()) / 2, good.len() - 1] {
        assert!(matches!(Gguf::from_bytes(good[..cut].to_vec()), Err(Error::Gguf { .. })), "cut at {cut}");
    }
    // A k-quant matrix whose rows are not whole 256-value blocks (64 columns of Q4_K).
    let g = Gguf::from_bytes(good).expect("parses");
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        w.set(k.clone(), v.clone());
    }
    for t in &g.tensors {
        if t.name == "blk.0.attn_q.weight" {
            // The same bytes declared as 64 × 1024: not whole blocks per row.
            w.add_raw(t.name.clone(), &[64, 1024], t.ty, g.tensor_bytes(t).to_vec()).expect("declared");
        } else {
            w.add_raw(t.name.clone(), &t.dims, t.ty, g.tensor_bytes(t).to_vec()).expect("tensor");
        }
    }
    let bad = Gguf::from_bytes(w.to_bytes());
    let err = bad.and_then(|g| Model::from_gguf(Arc::new(g)).map(drop)).expect_err("refused");
    assert!(err.to_string().contains("blk.0.attn_q.weight") || matches!(err, Error::Gguf { .. }), "{err}");
}

fn with_meta(f: impl Fn(&mut GgufWriter)) -> Gguf {
    let g = Gguf::from_bytes(tiny()).expect("tiny model");
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        w.set(k.clone(), v.clone());
    }
    for t in &g.tensors {
        w.add_raw(t.name.clone(), &t.dims, t.ty, g.tensor_bytes(t).to_vec()).expect("tensor");
    }
    f(&mut w);
    Gguf::from_bytes(w.to_bytes()).expect("rewritten")
}

#[test]
fn out_of_range_token_ids_in_vocabulary() {
    for key in ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
        let g = with_meta(|w| {
            w.set(key, Value::U32(1_000_000));
        });
        assert!(matches!(Tokenizer::from_gguf(&g), Err(Error::Tokenizer(m)) if m.contains("outside")), "{key}");
    }
    let g = with_meta(|w| {
        w.set("tokenizer.ggml.token_type", Value::Array(vec![Value::I32(1); 3]));
    });
    assert!(matches!(Tokenizer::from_gguf(&g), Err(Error::Tokenizer(_))));
    let g = with_meta(|w| {
        w.set("tokenizer.ggml.merges", Value::Array(vec![Value::String("nospace".into())]));
    });
    assert!(matches!(Tokenizer::from_gguf(&g), Err(Error::Tokenizer(_))));
    let g = with_meta(|w| {
        w.set("tokenizer.ggml.tokens", Value::U32(3));
    });
    assert!(matches!(Tokenizer::from_gguf(&g), Err(Error::Tokenizer(_))));
    let g = with_meta(|w| {
        w.set("tokenizer.ggml.pre", Value::String("made-up".into()));
    });
    assert!(matches!(Tokenizer::from_gguf(&g), Err(Error::Tokenizer(_))));
    // A token id past the vocabulary in a request is refused by the model.
    let m = Model::from_gguf(Arc::new(Gguf::from_bytes(tiny()).expect("tiny"))).expect("model");
    let mut cache = m.new_cache();
    let toks = [m.config.vocab as u32];
    let mut lanes = [Lane { cache: &mut cache, tokens: &toks, adapter: None, logits: Logits::Last }];
    assert!(matches!(m.forward(&mut lanes, Precision::Fast), Err(Error::Request(_))));
    assert_eq!(cache.len(), 0, "a refused request changes nothing");
}

#[test]
fn hostile_model_metadata() {
    for (key, v) in [
        ("llama.embedding_length", Value::U64(1 << 40)),
        ("llama.attention.head_count", Value::U32(0)),
        ("llama.attention.head_count_kv", Value::U32(3)),
        ("llama.block_count", Value::String("two".into())),
        ("llama.rope.freq_base", Value::F32(f32::NAN)),
        ("general.architecture", Value::String("gpt-j".into())),
    ] {
        let g = with_meta(|w| {
            w.set(key, v.clone());
        });
        let r = Model::from_gguf(Arc::new(g));
        assert!(matches!(r, Err(Error::Metadata(_) | Error::Tensor { .. })), "{key}: {r:?}");
    }
}

#[test]
fn hostile_chat_templates_are_contained() {
    let msgs = [Message::new("user", "hi")];
    let run = |src: &str| ChatTemplate::new(src).and_then(|t| t.render(&msgs, true, "", ""));
    let start = std::time::Instant::now();
    // Unbounded work, output, recursion; Python escapes; syntax errors; explicit exceptions.
    for src in [
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        "{{ 'x' * 100000000 }}",
        "{% set s = 'abcdefgh' %}{% for i in range(30) %}{% set s = s ~ s %}{% endfor %}{{ s }}",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "{{ messages.__class__.__mro__ }}{{ ''.__class__ }}{{ cycler.__init__.__globals__.os }}",
        "{% for m in messages %}{{ m.content",
        "{{ raise_exception('no system role') }}",
    ] {
        let r = run(src);
        match &r {
            Err(Error::Template(_)) => {}
            Ok(out) => assert!(
                out.len() <= soramai_kernels::tokenizer::template::MAX_OUTPUT && !out.contains("os"),
                "{src}: {out:?}"
            ),
            Err(e) => panic!("{src}: unexpected error {e}"),
        }
    }
    assert!(start.elapsed() < std::time::Duration::from_secs(20), "templates ran too long: {:?}", start.elapsed());
    assert!(matches!(ChatTemplate::new(&"x".repeat(1 << 20)), Err(Error::Template(_))));
    // Python string methods that Hugging Face templates use still work.
    let t =
        ChatTemplate::new("{{ messages[0].content.strip().upper() }}{{ 'a b'.split(' ')|length }}").expect("template");
    assert_eq!(t.render(&[Message::new("user", "  hi ")], false, "", "").expect("render"), "HI2");
}

#[test]
fn hostile_adapters() {
    let g = Gguf::from_bytes(tiny()).expect("tiny");
    let engine = Engine::new(Model::from_gguf(Arc::new(g)).expect("model")).expect("engine");
    let c = engine.model.config.clone();
    let dir = tempfile::tempdir().expect("tmp");
    common::write_peft(
        dir.path(),
        &c,
        4,
        8.0,
        &[soramai_kernels::lora::Target::Q, soramai_kernels::lora::Target::V],
        3,
    );
    let json = std::fs::read(dir.path().join("adapter_config.json")).expect("json");
    let st = std::fs::read(dir.path().join("adapter_model.safetensors")).expect("st");
    assert!(Adapter::from_bytes(&json, &st, &c).is_ok());
    for bad_json in [
        &b"{"[..],
        br#"{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}"#,
        br#"{"r": 4, "lora_alpha": -1, "target_modules": ["q_proj", "v_proj"]}"#,
        br#"{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "lm_head"]}"#,
        br#"{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "fan_in_fan_out": true}"#,
        br#"{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "peft_type": "IA3"}"#,
    ] {
        assert!(
            matches!(Adapter::from_bytes(bad_json, &st, &c), Err(Error::Adapter(_))),
            "{}",
            String::from_utf8_lossy(bad_json)
        );
    }
    // A different model shape: layers or widths that do not fit.
    let mut other = c.clone();
    other.n_layer = 1;
    assert!(matches!(Adapter::from_bytes(&json, &st, &other), Err(Error::Adapter(_))));
    let mut other = c.clone();
    other.n_embd = 32;
    assert!(matches!(Adapter::from_bytes(&json, &st, &other), Err(Error::Adapter(_))));
    // Every truncation is an error, never a panic.
    for cut in (0..st.len()).step_by(97) {
        assert!(Adapter::from_bytes(&json, &st[..cut], &c).is_err());
    }
    assert!(engine.load_adapter("x", dir.path().join("missing")).is_err());
    assert!(engine.adapter_names().is_empty(), "a failed load registers nothing");
}

/// The check a customer upload runs on a GGUF's header and length alone (its tensor data never
/// read) agrees with a full load on a good file and refuses what a full load would.
#[test]
fn header_check_from_the_first_bytes_and_the_length() {
    let b = tiny();
    let g = Gguf::from_bytes(b.clone()).expect("tiny");
    let head = &b[..g.data_offset];
    let n = b.len() as u64;
    let h = Engine::check_header(head, n).expect("header alone");
    assert_eq!(h.tensors, g.tensors.len());
    assert_eq!(h.config, Model::from_gguf(Arc::new(g)).expect("model").config);
    assert_eq!(Engine::check_header(&b, n).expect("whole file"), h);
    // One byte short: the last tensor runs past the end of the file.
    assert!(matches!(Engine::check_header(head, n - 1), Err(Error::Gguf { .. })));
    // A prefix that stops inside the header, or claims more bytes than the file has.
    assert!(matches!(Engine::check_header(&head[..head.len() / 2], n), Err(Error::Gguf { .. })));
    assert!(matches!(Engine::check_header(&b, 10), Err(Error::Gguf { .. })));
    assert!(matches!(Engine::check_header(b"not a gguf at all", 17), Err(Error::Gguf { .. })));
    assert!(matches!(Engine::check_header(&[], 0), Err(Error::Gguf { .. })));
    // A well-formed GGUF that is no model: the config is there, the tensors are not.
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()));
    common::tiny_vocab(&mut w);
    for (k, v) in [
        ("block_count", 1),
        ("context_length", 64),
        ("embedding_length", 64),
        ("feed_forward_length", 128),
        ("attention.head_count", 4),
    ] {
        w.set(format!("llama.{k}"), Value::U32(v));
    }
    let bare = w.to_bytes();
    assert!(matches!(Engine::check_header(&bare, bare.len() as u64), Err(Error::Tensor { .. })));
    // An architecture the engine does not run.
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("gpt2".into()));
    let other = w.to_bytes();
    assert!(matches!(Engine::check_header(&other, other.len() as u64), Err(Error::Metadata(_))));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    /// Whatever passes the header check loads in full: the upload's check is never weaker than
    /// the loader's.
    #[test]
    fn a_file_whose_header_passes_loads(cut in 0usize..100_000, flips in prop::collection::vec((0usize..100_000, any::<u8>()), 0..8)) {
        let mut b = tiny();
        let n = b.len();
        for (at, x) in flips {
            b[at % n] ^= x | 1;
        }
        b.truncate(cut % (n + 1));
        if Engine::check_header(&b, b.len() as u64).is_ok() {
            prop_assert!(Engine::from_bytes(b).is_ok());
        }
    }

    #[test]
    fn truncated_or_flipped_models_never_panic(cut in 0usize..100_000, flips in prop::collection::vec((0usize..100_000, any::<u8>()), 0..8)) {
        let mut b = tiny();
        let n = b.len();
        for (at, x) in flips {
            b[at % n] ^= x | 1;
        }
        b.truncate(cut % (n + 1));
        if let Ok(g) = Gguf::from_bytes(b) {
            let _ = Tokenizer::from_gguf(&g).map(|t| t.encode("hello <|im_start|> world", true, true));
            if let Ok(m) = Model::from_gguf(Arc::new(g))
                && m.config.n_embd * m.config.n_layer <= 1 << 16
                && m.config.n_ff <= 1 << 14
            {
                let mut cache = m.new_cache();
                let toks = [0u32];
                let mut lanes = [Lane { cache: &mut cache, tokens: &toks, adapter: None, logits: Logits::Last }];
                let _ = m.forward(&mut lanes, Precision::Fast);
            }
        }
    }

    /// The same for a k-quant model of the Gemma 3 family: flipped scales, nibbles or headers and
    /// cut files never panic in the k-quant kernels or the family's loader.
    #[test]
    fn truncated_or_flipped_k_quant_models_never_panic(cut in 0usize..400_000, flips in prop::collection::vec((0usize..400_000, any::<u8>()), 0..8)) {
        let mut b = tiny_kquant();
        let n = b.len();
        for (at, x) in flips {
            b[at % n] ^= x | 1;
        }
        b.truncate(cut % (n + 1));
        if let Ok(g) = Gguf::from_bytes(b)
            && let Ok(m) = Model::from_gguf(Arc::new(g))
            && m.config.n_embd * m.config.n_layer <= 1 << 16
            && m.config.n_ff <= 1 << 14
        {
            let mut cache = m.new_cache();
            let toks = [0u32, 1];
            let mut lanes = [Lane { cache: &mut cache, tokens: &toks, adapter: None, logits: Logits::Last }];
            let _ = m.forward(&mut lanes, Precision::Fast);
        }
    }

    #[test]
    fn flipped_adapters_never_panic(flips in prop::collection::vec((0usize..1_000_000, any::<u8>()), 1..6)) {
        let g = Gguf::from_bytes(tiny()).expect("tiny");
        let c = soramai_kernels::model::Config::from_gguf(&g).expect("config");
        let dir = tempfile::tempdir().expect("tmp");
        common::write_peft(dir.path(), &c, 2, 4.0, &[soramai_kernels::lora::Target::Q], 5);
        let json = std::fs::read(dir.path().join("adapter_config.json")).expect("json");
        let mut st = std::fs::read(dir.path().join("adapter_model.safetensors")).expect("st");
        let n = st.len();
        for (at, x) in flips {
            st[at % n] ^= x | 1;
        }
        let _ = Adapter::from_bytes(&json, &st, &c);
    }
}
