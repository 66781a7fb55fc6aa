//! SentencePiece (llama style): spaces become `▁`, adjacent symbols merge highest score first,
//! and what is not in the vocabulary falls back to `<0xXX>` byte tokens.

use std::cmp::Ordering;
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

/// A merge score, totally ordered (`f32::total_cmp`).
#[derive(Debug, Clone, Copy)]
struct Score(f32);

impl PartialEq for Score {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Score {}

impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Score {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
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
        self.merge(&s, out);
    }

    /// The score of the token two adjacent symbols would merge into, if the vocabulary has it.
    fn pair(&self, text: &str) -> Option<Score> {
        let &id = self.vocab.get(text)?;
        Some(Score(self.scores.get(id as usize).copied().unwrap_or(0.0)))
    }

    /// Merges adjacent symbols (byte ranges of `s`), the highest-scoring pair first and the
    /// leftmost among equals ([`super::merge::merge`]: a long prompt takes milliseconds).
    fn merge(&self, s: &str, out: &mut Vec<TokenId>) {
        let chars = s.char_indices().map(|(i, c)| (i, i + c.len_utf8()));
        let merged = super::merge::merge(chars.collect(), |l, r| Some((self.pair(&s[l.0..r.1])?, (l.0, r.1))));
        for (start, end) in merged {
            let sym = &s[start..end];
            match self.vocab.get(sym) {
                Some(&id) => out.push(id),
                None => out.extend(sym.bytes().filter_map(|b| self.byte_tokens[b as usize])),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The obvious loop: rescan every pair after each merge, take the highest score (the leftmost
    /// among equals).
    fn naive(spm: &Spm, s: &str) -> Vec<TokenId> {
        let mut syms: Vec<String> = s.chars().map(String::from).collect();
        loop {
            let mut best: Option<(f32, usize)> = None;
            for i in 0..syms.len().saturating_sub(1) {
                if let Some(&id) = spm.vocab.get(&format!("{}{}", syms[i], syms[i + 1])) {
                    let score = spm.scores.get(id as usize).copied().unwrap_or(0.0);
                    if best.is_none_or(|(bs, _)| score > bs) {
                        best = Some((score, i));
                    }
                }
            }
            let Some((_, i)) = best else { break };
            let right = syms.remove(i + 1);
            syms[i].push_str(&right);
        }
        let mut out = Vec::new();
        for sym in syms {
            match spm.vocab.get(&sym) {
                Some(&id) => out.push(id),
                None => out.extend(sym.bytes().filter_map(|b| spm.byte_tokens[b as usize])),
            }
        }
        out
    }

    /// A small vocabulary over `a b ▁ é` (with equal scores to exercise ties) and byte tokens.
    fn toy() -> Spm {
        let mut tokens: Vec<String> = (0..=255u8).map(|b| format!("<0x{b:02X}>")).collect();
        let pieces =
            ["a", "b", "\u{2581}", "ab", "aa", "ba", "aab", "\u{2581}a", "\u{2581}ab", "bb", "abab", "é", "éa"];
        tokens.extend(pieces.iter().map(|p| p.to_string()));
        let scores: Vec<f32> = (0..tokens.len()).map(|i| if i < 256 { 0.0 } else { -(((i * 7) % 5) as f32) }).collect();
        let vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as TokenId)).collect();
        Spm::new(&vocab, scores, false)
    }

    proptest! {
        #[test]
        fn heap_merge_matches_the_rescan(text in "[ab é]{0,160}") {
            let spm = toy();
            let s = text.replace(' ', "\u{2581}");
            let mut fast = Vec::new();
            spm.merge(&s, &mut fast);
            prop_assert_eq!(fast, naive(&spm, &s));
        }
    }

    #[test]
    fn a_long_prompt_merges() {
        let spm = toy();
        let mut out = Vec::new();
        spm.encode(&"ab ".repeat(20_000), false, &mut out);
        assert!(!out.is_empty() && out.len() < 60_000);
    }
}
