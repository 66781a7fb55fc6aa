//! Byte-level BPE (GPT-2 style): pre-tokenize with the model's regexes, map bytes to printable
//! characters, merge adjacent symbols by merge rank.

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
            // Symbols: one per byte-level character, with its token (if any) and its bytes.
            let mut syms: Vec<(Option<TokenId>, Vec<u8>)> =
                word.bytes().map(|b| (self.byte_tokens[b as usize], vec![b])).collect();
            // Multi-byte characters start as several byte symbols; BPE merges treat each mapped
            // char as a symbol, which is one byte here, exactly as llama.cpp's byte-level path.
            loop {
                let mut best: Option<(u32, usize, TokenId)> = None;
                for i in 0..syms.len().saturating_sub(1) {
                    if let (Some(l), Some(r)) = (syms[i].0, syms[i + 1].0)
                        && let Some(&(rank, merged)) = self.merges.get(&(l, r))
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
            for (id, bytes) in syms {
                match id {
                    Some(id) => out.push(id),
                    None => out.extend(bytes.iter().filter_map(|b| self.byte_tokens[*b as usize])),
                }
            }
        }
    }
}
