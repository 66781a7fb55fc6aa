//! Tokenizers built from GGUF metadata, matching llama.cpp token for token: byte-level BPE (GPT-2
//! style, with the model's pre-tokenizer) and SentencePiece (llama style, score-ordered merges with
//! byte fallback). Special tokens are split out of the text first; chat templates render with
//! minijinja in a sandbox ([`template`]).

mod bpe;
mod merge;
mod spm;
pub mod template;

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::gguf::{Gguf, Value};

/// A token id.
pub type TokenId = u32;

/// GGUF token types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// An ordinary token.
    Normal,
    /// The unknown token.
    Unknown,
    /// A control token (BOS, EOS, chat markers): parsed from text only when asked to.
    Control,
    /// A user-defined token: always parsed from text.
    UserDefined,
    /// Unused.
    Unused,
    /// A byte token `<0xXX>` (SentencePiece byte fallback).
    Byte,
}

impl TokenKind {
    fn from_tag(t: i64) -> Self {
        match t {
            2 => TokenKind::Unknown,
            3 => TokenKind::Control,
            4 => TokenKind::UserDefined,
            5 => TokenKind::Unused,
            6 => TokenKind::Byte,
            _ => TokenKind::Normal,
        }
    }
}

#[derive(Debug)]
enum Model {
    Bpe(Box<bpe::Bpe>),
    Spm(Box<spm::Spm>),
}

/// A tokenizer read from a GGUF file.
#[derive(Debug)]
pub struct Tokenizer {
    tokens: Vec<String>,
    kinds: Vec<TokenKind>,
    index: HashMap<String, TokenId>,
    /// Special tokens (control, user-defined, unknown), longest text first.
    specials: Vec<TokenId>,
    model: Model,
    /// Beginning-of-sequence token.
    pub bos: Option<TokenId>,
    /// End-of-sequence token.
    pub eos: Option<TokenId>,
    /// End-of-turn token (e.g. `<|im_end|>`, `<|eot_id|>`), also a stop token.
    pub eot: Option<TokenId>,
    /// Whether BOS is prepended.
    pub add_bos: bool,
    /// Whether EOS is appended.
    pub add_eos: bool,
    /// The chat template from the file, if any.
    pub chat_template: Option<String>,
}

fn str_array<'a>(g: &'a Gguf, key: &str) -> Result<Option<Vec<&'a str>>> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => {
            let a = v.as_array().ok_or_else(|| Error::Tokenizer(format!("{key} is not an array")))?;
            a.iter()
                .map(|x| x.as_str().ok_or_else(|| Error::Tokenizer(format!("{key} holds a non-string"))))
                .collect::<Result<Vec<_>>>()
                .map(Some)
        }
    }
}

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.*` metadata.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let model_name =
            g.get_str("tokenizer.ggml.model")?.ok_or_else(|| Error::Tokenizer("no tokenizer.ggml.model".into()))?;
        let tokens: Vec<String> = str_array(g, "tokenizer.ggml.tokens")?
            .ok_or_else(|| Error::Tokenizer("no tokenizer.ggml.tokens".into()))?
            .into_iter()
            .map(str::to_owned)
            .collect();
        let n = tokens.len();
        if n == 0 || u32::try_from(n).is_err() {
            return Err(Error::Tokenizer(format!("vocabulary of {n} tokens")));
        }
        let kinds = match g.get("tokenizer.ggml.token_type") {
            None => vec![TokenKind::Normal; n],
            Some(v) => {
                let a = v.as_array().ok_or_else(|| Error::Tokenizer("token_type is not an array".into()))?;
                if a.len() != n {
                    return Err(Error::Tokenizer(format!("{} token types for {n} tokens", a.len())));
                }
                a.iter()
                    .map(|t| match t {
                        Value::I32(x) => Ok(TokenKind::from_tag((*x).into())),
                        other => other
                            .as_u64()
                            .map(|x| TokenKind::from_tag(x as i64))
                            .ok_or_else(|| Error::Tokenizer("token type is not an integer".into())),
                    })
                    .collect::<Result<_>>()?
            }
        };
        let mut index = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            index.entry(t.clone()).or_insert(i as TokenId);
        }
        let id_key = |key: &str| -> Result<Option<TokenId>> {
            match g.get_u64(key)? {
                None => Ok(None),
                Some(v) if (v as usize) < n => Ok(Some(v as TokenId)),
                Some(v) => Err(Error::Tokenizer(format!("{key} = {v} is outside the {n}-token vocabulary"))),
            }
        };
        let bos = id_key("tokenizer.ggml.bos_token_id")?;
        let eos = id_key("tokenizer.ggml.eos_token_id")?;
        let mut eot = id_key("tokenizer.ggml.eot_token_id")?;
        if eot.is_none() {
            eot = ["<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"]
                .iter()
                .find_map(|t| index.get(*t).copied())
                .filter(|id| kinds[*id as usize] == TokenKind::Control);
        }
        let flag = |key: &str| -> Result<Option<bool>> {
            match g.get(key) {
                None => Ok(None),
                Some(v) => v.as_bool().map(Some).ok_or_else(|| Error::Tokenizer(format!("{key} is not a bool"))),
            }
        };
        let (model, default_bos) = match model_name {
            "gpt2" => {
                let merges =
                    str_array(g, "tokenizer.ggml.merges")?.ok_or_else(|| Error::Tokenizer("no merges".into()))?;
                let pre = g.get_str("tokenizer.ggml.pre")?;
                (Model::Bpe(Box::new(bpe::Bpe::new(&index, &merges, pre)?)), false)
            }
            "llama" => {
                let scores = match g.get("tokenizer.ggml.scores") {
                    None => vec![0.0; n],
                    Some(v) => {
                        let a = v.as_array().ok_or_else(|| Error::Tokenizer("scores is not an array".into()))?;
                        if a.len() != n {
                            return Err(Error::Tokenizer(format!("{} scores for {n} tokens", a.len())));
                        }
                        a.iter()
                            .map(|x| {
                                x.as_f64()
                                    .map(|f| f as f32)
                                    .ok_or_else(|| Error::Tokenizer("score is not a number".into()))
                            })
                            .collect::<Result<_>>()?
                    }
                };
                let add_space_prefix = flag("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
                (Model::Spm(Box::new(spm::Spm::new(&index, scores, add_space_prefix))), true)
            }
            other => return Err(Error::Tokenizer(format!("unsupported tokenizer model {other:?}"))),
        };
        let add_bos = flag("tokenizer.ggml.add_bos_token")?.unwrap_or(default_bos);
        let add_eos = flag("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        if add_bos && bos.is_none() {
            return Err(Error::Tokenizer("add_bos_token is set but there is no BOS token".into()));
        }
        let mut specials: Vec<TokenId> = (0..n as TokenId)
            .filter(|&i| {
                matches!(kinds[i as usize], TokenKind::Control | TokenKind::UserDefined | TokenKind::Unknown)
                    && !tokens[i as usize].is_empty()
            })
            .collect();
        specials.sort_by(|a, b| tokens[*b as usize].len().cmp(&tokens[*a as usize].len()).then(a.cmp(b)));
        let chat_template = g.get_str("tokenizer.chat_template")?.map(str::to_owned);
        Ok(Tokenizer { tokens, kinds, index, specials, model, bos, eos, eot, add_bos, add_eos, chat_template })
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// A token's stored text (byte-level encoded for BPE models).
    pub fn token_text(&self, id: TokenId) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// A token's kind.
    pub fn token_kind(&self, id: TokenId) -> Option<TokenKind> {
        self.kinds.get(id as usize).copied()
    }

    /// The id of a token with exactly this stored text.
    pub fn token_id(&self, text: &str) -> Option<TokenId> {
        self.index.get(text).copied()
    }

    /// Whether generation stops at this token (EOS or end of turn).
    pub fn is_stop(&self, id: TokenId) -> bool {
        Some(id) == self.eos || Some(id) == self.eot
    }

    /// Tokenizes `text`. With `special`, control-token text (`<|im_start|>`) becomes that token;
    /// user-defined tokens are always recognised. `add_special` adds BOS/EOS where the model's
    /// metadata says so.
    pub fn encode(&self, text: &str, add_special: bool, special: bool) -> Vec<TokenId> {
        let mut out = Vec::new();
        if add_special
            && self.add_bos
            && let Some(b) = self.bos
        {
            out.push(b);
        }
        let mut prev_special = true;
        for frag in self.partition(text, special) {
            match frag {
                Fragment::Token(t) => {
                    out.push(t);
                    prev_special = true;
                }
                Fragment::Text(s) => {
                    match &self.model {
                        Model::Bpe(b) => b.encode(s, &mut out),
                        Model::Spm(m) => m.encode(s, prev_special, &mut out),
                    }
                    prev_special = false;
                }
            }
        }
        if add_special
            && self.add_eos
            && let Some(e) = self.eos
        {
            out.push(e);
        }
        out
    }

    fn partition<'t>(&self, text: &'t str, special: bool) -> Vec<Fragment<'t>> {
        let mut frags = vec![Fragment::Text(text)];
        for &id in &self.specials {
            let kind = self.kinds[id as usize];
            if !special && kind != TokenKind::UserDefined {
                continue;
            }
            let pat = self.tokens[id as usize].as_str();
            let mut next = Vec::with_capacity(frags.len());
            for f in frags {
                match f {
                    Fragment::Text(s) if s.contains(pat) => {
                        let mut rest = s;
                        while let Some(p) = rest.find(pat) {
                            if p > 0 {
                                next.push(Fragment::Text(&rest[..p]));
                            }
                            next.push(Fragment::Token(id));
                            rest = &rest[p + pat.len()..];
                        }
                        if !rest.is_empty() {
                            next.push(Fragment::Text(rest));
                        }
                    }
                    other => next.push(other),
                }
            }
            frags = next;
        }
        frags
    }

    /// The bytes a token stands for. Control tokens give their text only with `special`.
    pub fn token_bytes(&self, id: TokenId, special: bool) -> Vec<u8> {
        let Some(text) = self.tokens.get(id as usize) else { return Vec::new() };
        match self.kinds[id as usize] {
            TokenKind::Control | TokenKind::Unknown | TokenKind::Unused => {
                if special {
                    text.as_bytes().to_vec()
                } else {
                    Vec::new()
                }
            }
            TokenKind::UserDefined => text.as_bytes().to_vec(),
            TokenKind::Byte => spm::byte_token_value(text).map(|b| vec![b]).unwrap_or_default(),
            TokenKind::Normal => match &self.model {
                Model::Bpe(_) => bpe::decode_byte_level(text),
                Model::Spm(_) => text.replace('\u{2581}', " ").into_bytes(),
            },
        }
    }

    /// Decodes tokens to text (invalid UTF-8 replaced), control tokens left out unless `special`.
    pub fn decode(&self, ids: &[TokenId], special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend(self.token_bytes(id, special));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

enum Fragment<'t> {
    Text(&'t str),
    Token(TokenId),
}
