//! A generation as it streams: events, usage, and the settlement of its credits when it ends.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use soramai_core::{Core, ModelId, TenantId, UsageEvent, UsageKind, UsageStatus};
use soramai_kernels::{Engine, Finish};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::PlatformError;

use super::*;

/// A token's log-probability, with the most likely alternatives (OpenAI's shape).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenLogprob {
    /// The token's text (invalid UTF-8 replaced).
    pub token: String,
    /// The token's bytes.
    pub bytes: Vec<u8>,
    /// Its log-probability under the model.
    pub logprob: f32,
    /// The most likely tokens at this position.
    pub top_logprobs: Vec<TopLogprob>,
}

/// An alternative token.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TopLogprob {
    /// The token's text.
    pub token: String,
    /// The token's bytes.
    pub bytes: Vec<u8>,
    /// Its log-probability.
    pub logprob: f32,
}

/// Token counts of a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Generated tokens.
    pub completion_tokens: u64,
    /// Their sum.
    pub total_tokens: u64,
    /// How the prompt tokens were counted.
    pub prompt_tokens_details: PromptTokensDetails,
}

/// The prompt's part of [`Usage`], as OpenAI reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose states came from the tenant's own prefix cache (a prompt that begins
    /// like one of the tenant's recent ones); never from another tenant's.
    pub cached_tokens: u64,
}

/// Why a generation ended, in OpenAI's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End of turn or a stop string.
    Stop,
    /// `max_tokens`, the credits or the context ran out.
    Length,
}

/// What a generation stream yields.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// New text (possibly empty, when a token only completes part of a character).
    Delta {
        /// The text.
        text: String,
        /// The token's log-probabilities, when asked for.
        logprob: Option<TokenLogprob>,
    },
    /// The end, with the token counts.
    Done {
        /// Why it ended.
        finish_reason: FinishReason,
        /// Token counts.
        usage: Usage,
    },
}

/// A finished generation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Completion {
    /// The request id (`chatcmpl-…`/`cmpl-…`).
    pub id: String,
    /// The model id the caller named.
    pub model: String,
    /// The generated text.
    pub text: String,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Token counts.
    pub usage: Usage,
    /// Per-token log-probabilities, when asked for.
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// Unix seconds.
    pub created: u64,
}

/// A generation in progress: yields [`StreamEvent`]s, blocking ([`Iterator`]) or async
/// ([`GenerationStream::next_event`]). It settles the request's credits and records its usage when
/// it ends, or when it is dropped early (the generation is then cancelled).
pub struct GenerationStream {
    pub(super) id: String,
    pub(super) model: String,
    pub(super) rx: UnboundedReceiver<Msg>,
    pub(super) engine: Arc<Engine>,
    pub(super) settle: Option<Settlement>,
    pub(super) prompt_tokens: u64,
    pub(super) seen: u64,
    pub(super) want_logprobs: bool,
    pub(super) created: u64,
    pub(super) permit: Option<Permit>,
}

impl std::fmt::Debug for GenerationStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerationStream").field("id", &self.id).field("model", &self.model).finish()
    }
}

pub(super) struct Settlement {
    pub(super) core: Arc<Core>,
    pub(super) tenant: TenantId,
    pub(super) reserved: u64,
    pub(super) base: ModelId,
    pub(super) adapter: Option<ModelId>,
    pub(super) started: Instant,
}

impl Settlement {
    pub(super) fn settle(self, used: u64, input: u64, status: UsageStatus) -> Result<(), PlatformError> {
        let refund = self.reserved.saturating_sub(used);
        if refund > 0 {
            self.core.refund_credits(&self.tenant, refund as i64, "inference: unused reservation")?;
        }
        self.core.record_usage(
            &self.tenant,
            &UsageEvent {
                kind: UsageKind::Inference,
                model: self.base,
                adapter: self.adapter,
                input_tokens: input,
                output_tokens: used.saturating_sub(input),
                latency_ms: self.started.elapsed().as_millis() as u64,
                status,
            },
        )?;
        Ok(())
    }
}

impl GenerationStream {
    /// The request id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The model id as the caller named it.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Unix seconds when the request was made.
    pub fn created(&self) -> u64 {
        self.created
    }

    /// Prompt tokens.
    pub fn prompt_tokens(&self) -> u64 {
        self.prompt_tokens
    }

    /// Keeps a tier permit until the stream ends or is dropped.
    pub fn hold(mut self, permit: Permit) -> Self {
        self.permit = Some(permit);
        self
    }

    /// The next event, waiting for it without blocking the async runtime; `None` after `Done`.
    pub async fn next_event(&mut self) -> Option<Result<StreamEvent, PlatformError>> {
        self.settle.as_ref()?;
        let msg = self.rx.recv().await;
        Some(self.observe(msg))
    }

    fn observe(&mut self, msg: Option<Msg>) -> Result<StreamEvent, PlatformError> {
        let ev = self.observe_msg(msg);
        if self.settle.is_none() {
            // Ended: the tier place is free for the tenant's next request.
            self.permit = None;
        }
        ev
    }

    fn observe_msg(&mut self, msg: Option<Msg>) -> Result<StreamEvent, PlatformError> {
        match msg {
            Some(Msg::Token(ev)) => {
                self.seen += 1;
                let logprob =
                    if self.want_logprobs { ev.logprobs.as_ref().map(|lp| self.logprob(ev.token, lp)) } else { None };
                Ok(StreamEvent::Delta { text: ev.text, logprob })
            }
            Some(Msg::Done { finish, generated, cached }) => {
                let used = self.prompt_tokens + generated;
                if let Some(s) = self.settle.take() {
                    s.settle(used, self.prompt_tokens, UsageStatus::Ok)?;
                }
                let finish_reason = match finish {
                    Finish::Stop | Finish::StopString | Finish::Cancelled => FinishReason::Stop,
                    Finish::Length | Finish::Context => FinishReason::Length,
                };
                Ok(StreamEvent::Done {
                    finish_reason,
                    usage: Usage {
                        prompt_tokens: self.prompt_tokens,
                        completion_tokens: generated,
                        total_tokens: used,
                        prompt_tokens_details: PromptTokensDetails { cached_tokens: cached },
                    },
                })
            }
            Some(Msg::Failed(message)) => {
                if let Some(s) = self.settle.take() {
                    s.settle(self.prompt_tokens + self.seen, self.prompt_tokens, UsageStatus::Error)?;
                }
                Err(PlatformError::Engine(message))
            }
            None => {
                if let Some(s) = self.settle.take() {
                    s.settle(self.prompt_tokens + self.seen, self.prompt_tokens, UsageStatus::Error)?;
                }
                Err(PlatformError::Engine("the scheduler stopped".into()))
            }
        }
    }

    fn logprob(&self, token: u32, lp: &soramai_kernels::TokenLogprobs) -> TokenLogprob {
        let piece = |t: u32| {
            let bytes = self.engine.tokenizer.token_bytes(t, false).to_vec();
            (String::from_utf8_lossy(&bytes).into_owned(), bytes)
        };
        let (token, bytes) = piece(token);
        TokenLogprob {
            token,
            bytes,
            logprob: lp.logprob,
            top_logprobs: lp
                .top
                .iter()
                .map(|&(t, logprob)| {
                    let (token, bytes) = piece(t);
                    TopLogprob { token, bytes, logprob }
                })
                .collect(),
        }
    }

    /// Runs the generation to its end and returns the whole text.
    pub fn collect(mut self) -> Result<Completion, PlatformError> {
        let mut text = String::new();
        let mut logprobs = self.want_logprobs.then(Vec::new);
        for ev in self.by_ref() {
            match ev? {
                StreamEvent::Delta { text: t, logprob } => {
                    text.push_str(&t);
                    if let (Some(v), Some(lp)) = (logprobs.as_mut(), logprob) {
                        v.push(lp);
                    }
                }
                StreamEvent::Done { finish_reason, usage } => {
                    return Ok(Completion {
                        id: self.id.clone(),
                        model: self.model.clone(),
                        text,
                        finish_reason,
                        usage,
                        logprobs,
                        created: self.created,
                    });
                }
            }
        }
        Err(PlatformError::Engine("the generation ended without a result".into()))
    }
}

impl Iterator for GenerationStream {
    type Item = Result<StreamEvent, PlatformError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.settle.as_ref()?;
        let msg = self.rx.blocking_recv();
        Some(self.observe(msg))
    }
}

impl Drop for GenerationStream {
    fn drop(&mut self) {
        // Dropped before the end: the scheduler cancels it at its next token; at most one more
        // token than seen was generated.
        if let Some(s) = self.settle.take() {
            let used = (self.prompt_tokens + self.seen + 1).min(s.reserved);
            let _ = s.settle(used, self.prompt_tokens, UsageStatus::Cancelled);
        }
    }
}
