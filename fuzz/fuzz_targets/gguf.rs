//! Hostile bytes as a GGUF model: parsing, the model's metadata and weights, the tokenizer and its
//! chat template give a typed error or a usable model, never a panic, an out-of-bounds read or a
//! huge allocation. When everything loads, one forward pass on a token must work too.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use soramai_kernels::gguf::Gguf;
use soramai_kernels::model::{Lane, Logits, Model, Precision};
use soramai_kernels::Tokenizer;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::from_bytes(data.to_vec()) else { return };
    let _ = Tokenizer::from_gguf(&g).map(|t| t.encode("Hello <|im_start|> world 123", true, true));
    let g = Arc::new(g);
    if let Ok(m) = Model::from_gguf(g) {
        // Tiny models only: a fuzzed header may describe a large one.
        if m.config.n_embd * m.config.n_layer <= 1 << 16 {
            let mut cache = m.new_cache();
            let tokens = [0u32];
            let mut lanes = [Lane { cache: &mut cache, tokens: &tokens, adapter: None, logits: Logits::Last }];
            let _ = m.forward(&mut lanes, Precision::Fast);
        }
    }
});
