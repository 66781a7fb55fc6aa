//! Constrained decoding: what a sequence may sample next, from a JSON schema, a regular expression
//! or a Lark grammar. llguidance compiles the grammar and computes each step's token mask over the
//! model's own vocabulary (its token bytes; control tokens as specials); the batch applies the
//! mask to the sequence's logits before sampling, so constrained and free sequences share one
//! forward pass.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::tokenizer::{TokenId, TokenKind, Tokenizer};

/// Largest grammar source accepted (a schema's JSON text, a regex or a Lark grammar).
pub const MAX_GRAMMAR_BYTES: usize = 256 << 10;

/// What a generation's output must match, whole.
#[derive(Clone, Debug, PartialEq)]
pub enum Grammar {
    /// Any JSON object.
    JsonObject,
    /// A JSON document valid under this JSON schema (the keywords llguidance implements: types,
    /// `properties`, `required`, `additionalProperties`, `items`, `prefixItems`, `enum`, `const`,
    /// `anyOf`/`oneOf`/`allOf`, `$ref`/`$defs`, string, number and array bounds, `pattern`,
    /// `format`). A schema with a keyword it does not implement is refused, naming it.
    JsonSchema(Value),
    /// Text matching this regular expression (Rust `regex` syntax).
    Regex(String),
    /// A Lark grammar, in llguidance's dialect.
    Lark(String),
}

/// The grammar compiler for one tokenizer: its token trie and llguidance's shared state. Built
/// once per model, on the first constrained request.
pub struct Grammars {
    factory: ParserFactory,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars").field("vocab", &self.factory.tok_env().tok_trie().vocab_size()).finish()
    }
}

impl Grammars {
    /// The compiler for a tokenizer's vocabulary. Generation ends at the tokenizer's stop tokens
    /// (end of turn, end of sequence), which the masks allow where the grammar is complete.
    pub fn new(tokenizer: &Tokenizer) -> Result<Self> {
        let stops: Vec<TokenId> = [tokenizer.eot, tokenizer.eos].into_iter().flatten().collect();
        let Some(&first_stop) = stops.first() else {
            return Err(Error::Tokenizer("the tokenizer has no end-of-sequence token to end a grammar".into()));
        };
        let vocab = tokenizer.vocab_size() as u32;
        let words: Vec<Vec<u8>> = (0..vocab)
            .map(|id| match tokenizer.token_kind(id) {
                // Specials are marked as llguidance expects: 0xFF then their text.
                Some(TokenKind::Control | TokenKind::Unknown | TokenKind::Unused) => {
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend_from_slice(tokenizer.token_text(id).unwrap_or_default().as_bytes());
                    w
                }
                _ => tokenizer.token_bytes(id, false),
            })
            .collect();
        let info = TokRxInfo {
            vocab_size: vocab,
            tok_eos: first_stop,
            tok_bos: tokenizer.bos,
            tok_pad: None,
            tok_unk: None,
            tok_end_of_turn: tokenizer.eot,
        };
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&stops);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| Error::Tokenizer(format!("grammar: {e}")))?;
        factory.quiet();
        Ok(Grammars { factory })
    }

    /// Compiles a grammar into a fresh constraint. A grammar that does not compile (bad syntax,
    /// an unsupported schema keyword, too large) is an [`Error::Request`] saying why.
    pub fn compile(&self, grammar: &Grammar) -> Result<Constraint> {
        let bad = |m: String| Error::Request(m);
        let top = match grammar {
            Grammar::JsonObject => TopLevelGrammar::from_json_schema(json_layout(json!({"type": "object"}))),
            Grammar::JsonSchema(schema) => {
                let size = serde_json::to_vec(schema).map_err(|e| bad(format!("json schema: {e}")))?.len();
                if size > MAX_GRAMMAR_BYTES {
                    return Err(bad(format!("the json schema is over {MAX_GRAMMAR_BYTES} bytes")));
                }
                if !schema.is_object() && !schema.is_boolean() {
                    return Err(bad("a json schema is an object".into()));
                }
                if schema.get("x-guidance").is_some() {
                    return Err(bad("the json schema keyword x-guidance is not supported".into()));
                }
                TopLevelGrammar::from_json_schema(json_layout(schema.clone()))
            }
            Grammar::Regex(rx) | Grammar::Lark(rx) if rx.len() > MAX_GRAMMAR_BYTES => {
                return Err(bad(format!("the grammar is over {MAX_GRAMMAR_BYTES} bytes")));
            }
            Grammar::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Grammar::Lark(src) => TopLevelGrammar::from_lark(src.clone()),
        };
        let parser = self.factory.create_parser(top).map_err(|e| bad(format!("grammar: {e}")))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(bad(format!("grammar: {e}")));
        }
        Ok(Constraint { matcher })
    }
}

/// A JSON schema whose documents come compact on one line (`{"a": 1, "b": [2, 3]}`): no free
/// whitespace a small model could loop on. Also for a schema inside a Lark grammar (`%json`).
pub fn json_layout(mut schema: Value) -> Value {
    if let Some(o) = schema.as_object_mut() {
        o.insert(
            "x-guidance".into(),
            json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
        );
    } else if schema == Value::Bool(true) {
        return json_layout(json!({}));
    }
    schema
}

/// One sequence's grammar state: the mask of its next token, advanced by each token it samples.
pub struct Constraint {
    matcher: Matcher,
}

impl Clone for Constraint {
    fn clone(&self) -> Self {
        Constraint { matcher: self.matcher.deep_clone() }
    }
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").field("stopped", &self.matcher.is_stopped()).finish()
    }
}

impl Constraint {
    /// Sets the logits of every token the grammar does not allow next to -inf (tokens past the
    /// tokenizer's vocabulary included). Fails when the grammar can go no further.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        let mask = self.matcher.compute_mask().map_err(|e| Error::Request(format!("grammar: {e}")))?;
        if mask.is_zero() {
            return Err(Error::Request("grammar: no token can continue the output".into()));
        }
        for (id, l) in logits.iter_mut().enumerate() {
            if id >= mask.len() || !mask.is_allowed(id as TokenId) {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Advances past a sampled token (a stop token ends the grammar).
    pub fn advance(&mut self, token: TokenId) -> Result<()> {
        self.matcher.consume_token(token).map_err(|e| Error::Request(format!("grammar: {e}")))
    }

    /// Whether the grammar allows nothing more than a stop token.
    pub fn is_complete(&self) -> bool {
        self.matcher.is_stopped()
    }
}
