//! A generation as it streams: events, usage, and the settlement of its credits when it ends.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use soramai_core::{Core, ModelId, TenantId, UsageEvent, UsageKind, UsageStatus};
use soramai_kernels::{Engine, Finish};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::PlatformError;

use super::chat::{self, ToolCall};

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
    /// The reply is calls of the offered tools.
    ToolCalls,
}

/// What a generation stream yields.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// New text of one choice (possibly empty, when a token only completes part of a character).
    Delta {
        /// The choice (0 unless more than one was asked for).
        index: usize,
        /// The text.
        text: String,
        /// The token's log-probabilities, when asked for.
        logprob: Option<TokenLogprob>,
    },
    /// The calls a choice made. With tools offered, a reply that begins with `<` is held back
    /// until its choice ends: it comes as these calls (when `max_tokens` cut it short, the
    /// complete ones, and its finish reason is `length`), or as text if no call is complete.
    ToolCalls {
        /// The choice.
        index: usize,
        /// Its calls, in order.
        calls: Vec<ToolCall>,
    },
    /// The end of every choice, with the token counts.
    Done {
        /// Why the first choice ended.
        finish_reason: FinishReason,
        /// Why each choice ended, in choice order.
        finish_reasons: Vec<FinishReason>,
        /// Token counts: the prompt once, the completion tokens of every choice.
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
    /// The first choice's text.
    pub text: String,
    /// Why the first choice ended.
    pub finish_reason: FinishReason,
    /// Token counts: the prompt once, the completion tokens of every choice.
    pub usage: Usage,
    /// The first choice's per-token log-probabilities, when asked for.
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// Every choice, the first included, in choice order.
    pub choices: Vec<Choice>,
    /// Unix seconds.
    pub created: u64,
}

/// One of a completion's choices.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Choice {
    /// Its place among the choices.
    pub index: usize,
    /// The generated text.
    pub text: String,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Per-token log-probabilities, when asked for.
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// The calls it made (then `text` is empty and `finish_reason` is `tool_calls`).
    pub tool_calls: Vec<ToolCall>,
}

/// Where one choice of a stream stands.
#[derive(Clone, Debug, Default)]
pub(super) struct ChoiceState {
    finish: Option<FinishReason>,
    generated: u64,
    cached: u64,
    /// With tools offered: whether its reply is text (Some(false)), calls (Some(true)) or not yet
    /// known; its text so far and the events held back until that is known.
    calls: Option<bool>,
    text: String,
    held: Vec<StreamEvent>,
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
    pub(super) choices: Vec<ChoiceState>,
    pub(super) tools: bool,
    pub(super) queued: std::collections::VecDeque<StreamEvent>,
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

    /// Choices it generates.
    pub fn choices(&self) -> usize {
        self.choices.len()
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
        loop {
            if let Some(ev) = self.queued.pop_front() {
                return Some(Ok(ev));
            }
            self.settle.as_ref()?;
            let msg = self.rx.recv().await;
            if let Err(e) = self.observe(msg) {
                return Some(Err(e));
            }
        }
    }

    /// Takes in a message from the scheduler, queueing what it means to the caller.
    fn observe(&mut self, msg: Option<Msg>) -> Result<(), PlatformError> {
        let r = self.observe_msg(msg);
        if self.settle.is_none() {
            // Ended: the tier place is free for the tenant's next request.
            self.permit = None;
        }
        r
    }

    fn observe_msg(&mut self, msg: Option<Msg>) -> Result<(), PlatformError> {
        match msg {
            Some(Msg::Token { index, ev }) => {
                self.seen += 1;
                let logprob =
                    if self.want_logprobs { ev.logprobs.as_ref().map(|lp| self.logprob(ev.token, lp)) } else { None };
                let text = ev.text;
                let (tools, queued) = (self.tools, &mut self.queued);
                match self.choices.get_mut(index) {
                    Some(c) if tools && c.calls != Some(false) => {
                        c.text.push_str(&text);
                        c.held.push(StreamEvent::Delta { index, text, logprob });
                        if c.calls.is_none() && !c.text.is_empty() {
                            c.calls = Some(chat::is_call(&c.text));
                            if c.calls == Some(false) {
                                queued.extend(c.held.drain(..));
                            }
                        }
                    }
                    _ => queued.push_back(StreamEvent::Delta { index, text, logprob }),
                }
                Ok(())
            }
            Some(Msg::Done { index, finish, generated, cached }) => {
                let (tools, queued, id) = (self.tools, &mut self.queued, &self.id);
                if let Some(c) = self.choices.get_mut(index) {
                    c.finish = Some(match finish {
                        // A failed constraint comes as Msg::Failed, never as a finish.
                        Finish::Stop | Finish::StopString | Finish::Cancelled | Finish::Constraint => {
                            FinishReason::Stop
                        }
                        Finish::Length | Finish::Context => FinishReason::Length,
                    });
                    c.generated = generated;
                    c.cached = cached;
                    if tools && c.calls != Some(false) {
                        match chat::parse_calls(&c.text, id, index) {
                            // Complete calls end with tool_calls; calls cut short by max_tokens
                            // give the complete ones and still say length.
                            Some((calls, complete)) if complete || c.finish == Some(FinishReason::Length) => {
                                if complete {
                                    c.finish = Some(FinishReason::ToolCalls);
                                }
                                c.held.clear();
                                queued.push_back(StreamEvent::ToolCalls { index, calls });
                            }
                            _ => queued.extend(c.held.drain(..)),
                        }
                    }
                }
                let finish_reasons: Vec<FinishReason> = self.choices.iter().filter_map(|c| c.finish).collect();
                if finish_reasons.len() < self.choices.len() {
                    return Ok(());
                }
                let generated: u64 = self.choices.iter().map(|c| c.generated).sum();
                let used = self.prompt_tokens + generated;
                if let Some(s) = self.settle.take() {
                    s.settle(used, self.prompt_tokens, UsageStatus::Ok)?;
                }
                self.queued.push_back(StreamEvent::Done {
                    finish_reason: finish_reasons[0],
                    finish_reasons,
                    usage: Usage {
                        prompt_tokens: self.prompt_tokens,
                        completion_tokens: generated,
                        total_tokens: used,
                        // The prompt was prefilled once, by the first choice.
                        prompt_tokens_details: PromptTokensDetails { cached_tokens: self.choices[0].cached },
                    },
                });
                Ok(())
            }
            Some(Msg::Failed(message)) => self.fail(message),
            None => self.fail("the scheduler stopped".into()),
        }
    }

    /// Ends the stream on an engine failure, charging what was generated.
    fn fail(&mut self, message: String) -> Result<(), PlatformError> {
        if let Some(s) = self.settle.take() {
            s.settle(self.prompt_tokens + self.seen, self.prompt_tokens, UsageStatus::Error)?;
        }
        Err(PlatformError::Engine(message))
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

    /// Runs the generation to its end and returns every choice's whole text.
    pub fn collect(mut self) -> Result<Completion, PlatformError> {
        let mut choices: Vec<Choice> = (0..self.choices.len())
            .map(|index| Choice {
                index,
                text: String::new(),
                finish_reason: FinishReason::Stop,
                logprobs: self.want_logprobs.then(Vec::new),
                tool_calls: Vec::new(),
            })
            .collect();
        for ev in self.by_ref() {
            match ev? {
                StreamEvent::Delta { index, text, logprob } => {
                    if let Some(c) = choices.get_mut(index) {
                        c.text.push_str(&text);
                        if let (Some(v), Some(lp)) = (c.logprobs.as_mut(), logprob) {
                            v.push(lp);
                        }
                    }
                }
                StreamEvent::ToolCalls { index, calls } => {
                    if let Some(c) = choices.get_mut(index) {
                        c.tool_calls = calls;
                    }
                }
                StreamEvent::Done { finish_reasons, usage, .. } => {
                    for (c, f) in choices.iter_mut().zip(finish_reasons) {
                        c.finish_reason = f;
                    }
                    let Some(first) = choices.first().cloned() else { break };
                    return Ok(Completion {
                        id: self.id.clone(),
                        model: self.model.clone(),
                        text: first.text,
                        finish_reason: first.finish_reason,
                        usage,
                        logprobs: first.logprobs,
                        choices,
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
        loop {
            if let Some(ev) = self.queued.pop_front() {
                return Some(Ok(ev));
            }
            self.settle.as_ref()?;
            let msg = self.rx.blocking_recv();
            if let Err(e) = self.observe(msg) {
                return Some(Err(e));
            }
        }
    }
}

impl Drop for GenerationStream {
    fn drop(&mut self) {
        // Dropped before the end: the scheduler cancels it at its next token; at most one more
        // token a running choice than seen was generated.
        if let Some(s) = self.settle.take() {
            let running = self.choices.iter().filter(|c| c.finish.is_none()).count() as u64;
            let used = (self.prompt_tokens + self.seen + running).min(s.reserved);
            let _ = s.settle(used, self.prompt_tokens, UsageStatus::Cancelled);
        }
    }
}
