//! Byte-level BPE (GPT-2 style): pre-tokenize with the model's regexes, map bytes to printable
//! characters, merge adjacent symbols by merge rank.

use std::cmp::Reverse;
use std::collections::HashMap;

use fancy_regex::Regex;

use super::TokenId;
use crate::error::{Error, Result};

const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The regexes llama.cpp applies, in turn, for a `tokenizer.ggml.pre` value.
fn pre_regexes(pre: Option<&str>) -> Result<(Vec<&'static str>, bool)> {
    Ok(match pre.unwrap_or("default") {
        "default" | "gpt-2" | "gpt2" | "phi-2" | "jina-es" | "jina-de" | "roberta-bpe" => (vec![GPT2], false),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            (vec![r"\p{N}", GPT2], false)
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => (vec![LLAMA3], true),
        "qwen2" | "deepseek-r1-qwen" => (vec![QWEN2], false),
        other => return Err(Error::Tokenizer(format!("unsupported pre-tokenizer {other:?}"))),
    })
}

/// GPT-2's map from bytes to printable characters.
fn byte_chars() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        map[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('\0')
        };
    }
    map
}

/// Inverse of the byte map for one token's text.
pub(super) fn decode_byte_level(text: &str) -> Vec<u8> {
    let map = byte_chars();
    text.chars().filter_map(|c| map.iter().position(|&m| m == c).map(|b| b as u8)).collect()
}

#[derive(Debug)]
pub(super) struct Bpe {
    regexes: Vec<Regex>,
    ignore_merges: bool,
    byte_map: [char; 256],
    byte_tokens: [Option<TokenId>; 256],
    /// (left, right) → (rank, merged).
    merges: HashMap<(TokenId, TokenId), (u32, TokenId)>,
    vocab: HashMap<String, TokenId>,
}

impl Bpe {
    pub(super) fn new(vocab: &HashMap<String, TokenId>, merges: &[&str], pre: Option<&str>) -> Result<Self> {
        let (pats, ignore_merges) = pre_regexes(pre)?;
        let regexes = pats
            .iter()
            .map(|p| Regex::new(p).map_err(|e| Error::Tokenizer(format!("pre-tokenizer regex: {e}"))))
            .collect::<Result<_>>()?;
        let byte_map = byte_chars();
        let byte_tokens = std::array::from_fn(|b| vocab.get(byte_map[b].to_string().as_str()).copied());
        let mut table = HashMap::with_capacity(merges.len());
        for (rank, m) in merges.iter().enumerate() {
            let Some((l, r)) = m.split_once(' ') else {
                return Err(Error::Tokenizer(format!("merge {rank} has no space")));
            };
            if let (Some(&li), Some(&ri), Some(&mi)) = (vocab.get(l), vocab.get(r), vocab.get(&format!("{l}{r}"))) {
                table.entry((li, ri)).or_insert((rank as u32, mi));
            }
        }
        Ok(Bpe { regexes, ignore_merges, byte_map, byte_tokens, merges: table, vocab: vocab.clone() })
    }

    /// Splits `text` by each regex in turn; text between matches stays a piece of its own.
    fn pre_tokenize<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut pieces = vec![text];
        for re in &self.regexes {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for p in pieces {
                let mut last = 0;
                for m in re.find_iter(p) {
                    let Ok(m) = m else { break };
                    if m.start() > last {
                        next.push(&p[last..m.start()]);
                    }
                    if m.end() > m.start() {
                        next.push(m.as_str());
                    }
                    last = m.end();
                }
                if last < p.len() {
                    next.push(&p[last..]);
                }
            }
            pieces = next;
        }
        pieces
    }

    pub(super) fn encode(&self, text: &str, out: &mut Vec<TokenId>) {
        for word in self.pre_tokenize(text) {
            let mapped: String = word.bytes().map(|b| self.byte_map[b as usize]).collect();
            if self.ignore_merges
                && let Some(&id) = self.vocab.get(&mapped)
            {
                out.push(id);
                continue;
            }
            self.merge_word(word.as_bytes(), out);
        }
    }

    /// Merges one pre-token's bytes by merge rank, lowest rank first and leftmost among equals
    /// ([`super::merge::merge`]: a hostile 50,000-byte "word" takes milliseconds).
    fn merge_word(&self, bytes: &[u8], out: &mut Vec<TokenId>) {
        #[derive(PartialEq)]
        struct Sym {
            id: Option<TokenId>,
            start: usize,
            end: usize,
        }
        // Multi-byte characters start as several byte symbols, exactly as llama.cpp's
        // byte-level path.
        let syms =
            bytes.iter().enumerate().map(|(i, &b)| Sym { id: self.byte_tokens[b as usize], start: i, end: i + 1 });
        let merged = super::merge::merge(syms.collect(), |l, r| {
            let &(rank, id) = self.merges.get(&(l.id?, r.id?))?;
            Some((Reverse(rank), Sym { id: Some(id), start: l.start, end: r.end }))
        });
        for sym in merged {
            match sym.id {
                Some(id) => out.push(id),
                None => out.extend(bytes[sym.start..sym.end].iter().filter_map(|b| self.byte_tokens[*b as usize])),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The obvious merge loop: rescan every pair after each merge, take the lowest rank (the
    /// leftmost among equals).
    fn naive(bpe: &Bpe, word: &[u8]) -> Vec<TokenId> {
        let mut syms: Vec<(Option<TokenId>, Vec<u8>)> =
            word.iter().map(|&b| (bpe.byte_tokens[b as usize], vec![b])).collect();
        loop {
            let mut best: Option<(u32, usize, TokenId)> = None;
            for i in 0..syms.len().saturating_sub(1) {
                if let (Some(l), Some(r)) = (syms[i].0, syms[i + 1].0)
                    && let Some(&(rank, merged)) = bpe.merges.get(&(l, r))
                    && best.is_none_or(|(br, _, _)| rank < br)
                {
                    best = Some((rank, i, merged));
                }
            }
            let Some((_, i, merged)) = best else { break };
            let right = syms.remove(i + 1);
            syms[i].0 = Some(merged);
            syms[i].1.extend(right.1);
        }
        let mut out = Vec::new();
        for (id, bytes) in syms {
            match id {
                Some(id) => out.push(id),
                None => out.extend(bytes.iter().filter_map(|b| bpe.byte_tokens[*b as usize])),
            }
        }
        out
    }

    /// A small vocabulary over `a b c d` (`d` has no merges) with overlapping merges.
    fn toy() -> Bpe {
        let tokens = ["a", "b", "c", "d", "aa", "ab", "bc", "aaa", "abc", "aab", "bcbc", "aaaa", "bb"];
        let vocab: HashMap<String, TokenId> =
            tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as TokenId)).collect();
        let merges = ["a b", "a a", "b c", "aa a", "ab c", "a ab", "bc bc", "aa aa", "b b"];
        Bpe::new(&vocab, &merges, None).expect("toy vocabulary")
    }

    proptest! {
        #[test]
        fn heap_merge_matches_the_rescan(word in "[abcd]{0,200}") {
            let bpe = toy();
            let mut fast = Vec::new();
            bpe.merge_word(word.as_bytes(), &mut fast);
            prop_assert_eq!(fast, naive(&bpe, word.as_bytes()));
        }
    }

    #[test]
    fn a_long_word_merges() {
        let bpe = toy();
        let word = "a".repeat(50_000);
        let mut out = Vec::new();
        bpe.merge_word(word.as_bytes(), &mut out);
        assert_eq!(out.len(), 12_500, "fifty thousand a's are 12,500 aaaa tokens");
        assert!(out.iter().all(|&t| t == 11));
    }
}
