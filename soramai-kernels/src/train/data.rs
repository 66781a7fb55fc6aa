//! Training examples from chat conversations: the model's chat template renders the conversation,
//! and only the assistant turns carry loss, each scaled by its OpenAI `weight` (default 1, and 0
//! leaves a turn as context only).

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::tokenizer::TokenId;
use crate::tokenizer::template::Message;

/// One message of a training conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text.
    pub content: String,
    /// For assistant messages: how much the turn counts in the loss (0..=1; none means 1).
    pub weight: Option<f32>,
}

impl TrainMessage {
    /// A message with the default weight.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        TrainMessage { role: role.into(), content: content.into(), weight: None }
    }
}

/// A tokenized training example.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// Token ids.
    pub tokens: Vec<TokenId>,
    /// `weights[i]`: the loss weight of predicting `tokens[i]` from what precedes it (`weights[0]`
    /// is ignored: nothing predicts the first token).
    pub weights: Vec<f32>,
}

impl Example {
    /// Checks the example against a vocabulary; the message names what is wrong.
    pub fn check(&self, vocab: usize) -> std::result::Result<(), String> {
        if self.tokens.len() < 2 {
            return Err("fewer than two tokens".into());
        }
        if self.weights.len() != self.tokens.len() {
            return Err(format!("{} weights for {} tokens", self.weights.len(), self.tokens.len()));
        }
        if let Some(t) = self.tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(format!("token id {t} is outside the {vocab}-token vocabulary"));
        }
        if self.weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) {
            return Err("loss weights must be finite and non-negative".into());
        }
        Ok(())
    }

    /// Tokens that carry loss.
    pub fn trained_tokens(&self) -> usize {
        self.weights.iter().skip(1).filter(|&&w| w > 0.0).count()
    }

    /// The example cut to its first `n` tokens.
    pub fn truncated(&self, n: usize) -> Example {
        Example {
            tokens: self.tokens[..n.min(self.tokens.len())].to_vec(),
            weights: self.weights[..n.min(self.weights.len())].to_vec(),
        }
    }
}

/// Tokenizes a conversation for training. The template renders each prefix of the conversation;
/// the text between "the conversation so far with the assistant's turn opened" and "the conversation
/// through this assistant message" is the turn the model learns (its content and end-of-turn
/// token), weighted by the message's `weight`. Everything else is context. Pieces are tokenized
/// separately so a turn's first token never merges with the prompt before it.
pub fn chat_example(engine: &Engine, messages: &[TrainMessage]) -> Result<Example> {
    if messages.is_empty() {
        return Err(Error::Training("a conversation with no messages".into()));
    }
    let plain: Vec<Message> = messages.iter().map(|m| Message::new(m.role.clone(), m.content.clone())).collect();
    let full = engine.render_messages(&plain, false)?;
    // (byte offset in `full`, weight of the text from the previous cut up to here).
    let mut cuts: Vec<(usize, f32)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let w = m.weight.unwrap_or(1.0);
        if m.weight.is_some() && m.role != "assistant" {
            return Err(Error::Training(format!("message {i}: weight is only allowed on assistant messages")));
        }
        if !(w.is_finite() && (0.0..=1.0).contains(&w)) {
            return Err(Error::Training(format!("message {i}: weight {w} is outside 0..=1")));
        }
        if m.role != "assistant" {
            continue;
        }
        let opened = engine.render_messages(&plain[..i], true)?;
        let through = engine.render_messages(&plain[..=i], false)?;
        if !full.starts_with(&through) || !through.starts_with(&opened) {
            return Err(Error::Training(
                "the chat template does not render conversations as prefixes of each other".into(),
            ));
        }
        if cuts.last().is_some_and(|&(at, _)| at > opened.len()) {
            return Err(Error::Training("the chat template reorders messages".into()));
        }
        cuts.push((opened.len(), 0.0));
        cuts.push((through.len(), w));
    }
    cuts.push((full.len(), 0.0));
    let tk = &engine.tokenizer;
    let mut tokens = Vec::new();
    let mut weights = Vec::new();
    let mut from = 0;
    for (at, w) in cuts {
        if at <= from {
            continue;
        }
        let piece = tk.encode(&full[from..at], from == 0, true);
        weights.extend(std::iter::repeat_n(w, piece.len()));
        tokens.extend(piece);
        from = at;
    }
    if let Some(w) = weights.first_mut() {
        *w = 0.0;
    }
    Ok(Example { tokens, weights })
}
