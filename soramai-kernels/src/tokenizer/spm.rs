//! SentencePiece (llama style): spaces become `▁`, adjacent symbols merge highest score first,
//! and what is not in the vocabulary falls back to `<0xXX>` byte tokens.

use std::collections::HashMap;

use super::TokenId;

/// The byte a `<0xXX>` token stands for.
pub(super) fn byte_token_value(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[derive(Debug)]
pub(super) struct Spm {
    vocab: HashMap<String, TokenId>,
    scores: Vec<f32>,
    add_space_prefix: bool,
    byte_tokens: [Option<TokenId>; 256],
}

impl Spm {
    pub(super) fn new(vocab: &HashMap<String, TokenId>, scores: Vec<f32>, add_space_prefix: bool) -> Self {
        let byte_tokens = std::array::from_fn(|b| vocab.get(&format!("<0x{b:02X}>")).copied());
        Spm { vocab: vocab.clone(), scores, add_space_prefix, byte_tokens }
    }

    pub(super) fn encode(&self, text: &str, prev_special: bool, out: &mut Vec<TokenId>) {
        let mut s = String::with_capacity(text.len() + 3);
        if self.add_space_prefix && prev_special {
            s.push(' ');
        }
        s.push_str(text);
        let s = s.replace(' ', "\u{2581}");
        let mut syms: Vec<String> = s.chars().map(String::from).collect();
        loop {
            let mut best: Option<(f32, usize)> = None;
            for i in 0..syms.len().saturating_sub(1) {
                let joined = format!("{}{}", syms[i], syms[i + 1]);
                if let Some(&id) = self.vocab.get(&joined) {
                    let score = self.scores.get(id as usize).copied().unwrap_or(0.0);
                    if best.is_none_or(|(bs, _)| score > bs) {
                        best = Some((score, i));
                    }
                }
            }
            let Some((_, i)) = best else { break };
            let right = syms.remove(i + 1);
            syms[i].push_str(&right);
        }
        for sym in syms {
            match self.vocab.get(&sym) {
                Some(&id) => out.push(id),
                None => out.extend(sym.bytes().filter_map(|b| self.byte_tokens[b as usize])),
            }
        }
    }
}
