//! Text generation over a [`Model`]: tokenizer, chat template, adapters that come and go while
//! others run, sampling, stop conditions and token streaming, one sequence or a batch.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use crate::error::{Error, Result};
use crate::lora::Adapter;
use crate::model::{KvCache, Lane, Logits, Model, Precision};
use crate::sample::{Sampler, SamplingParams};
use crate::tokenizer::template::{ChatTemplate, Message};
use crate::tokenizer::{TokenId, Tokenizer};

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// EOS or end of turn.
    Stop,
    /// A stop string appeared.
    StopString,
    /// `max_tokens` reached.
    Length,
    /// The context is full.
    Context,
    /// The streaming callback asked to stop.
    Cancelled,
}

/// A generation request.
#[derive(Clone, Debug)]
pub struct Request {
    /// Prompt tokens.
    pub prompt: Vec<TokenId>,
    /// Adapter name (registered with [`Engine::add_adapter`]), or none.
    pub adapter: Option<String>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling.
    pub sampling: SamplingParams,
    /// Strings that end generation (not included in the text).
    pub stop: Vec<String>,
    /// Arithmetic path.
    pub precision: Precision,
}

impl Request {
    /// Greedy, fast, no adapter.
    pub fn new(prompt: Vec<TokenId>, max_tokens: usize) -> Self {
        Request {
            prompt,
            adapter: None,
            max_tokens,
            sampling: SamplingParams::greedy(),
            stop: Vec::new(),
            precision: Precision::Fast,
        }
    }
}

/// A finished generation.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// The prompt tokens.
    pub prompt_ids: Vec<TokenId>,
    /// Generated tokens (the stop token excluded).
    pub output_ids: Vec<TokenId>,
    /// Generated text (cut before a stop string).
    pub text: String,
    /// Why it ended.
    pub finish: Finish,
}

/// A model with its tokenizer and a registry of adapters.
#[derive(Debug)]
pub struct Engine {
    /// The model.
    pub model: Arc<Model>,
    /// Its tokenizer.
    pub tokenizer: Arc<Tokenizer>,
    template: Option<ChatTemplate>,
    adapters: RwLock<HashMap<String, Arc<Adapter>>>,
}

struct Seq {
    req_idx: usize,
    cache: KvCache,
    adapter: Option<Arc<Adapter>>,
    sampler: Sampler,
    history: Vec<TokenId>,
    out: Vec<TokenId>,
    bytes: Vec<u8>,
    emitted: usize,
    finish: Option<Finish>,
    pending: Vec<TokenId>,
}

impl Engine {
    /// Loads a GGUF model and its tokenizer.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let model = Model::load(path)?;
        Self::new(model)
    }

    /// Wraps a loaded model.
    pub fn new(model: Model) -> Result<Self> {
        let tokenizer = Tokenizer::from_gguf(&model.gguf)?;
        if tokenizer.vocab_size() != model.config.vocab {
            return Err(Error::Metadata(format!(
                "tokenizer has {} tokens, the model {}",
                tokenizer.vocab_size(),
                model.config.vocab
            )));
        }
        let template = tokenizer.chat_template.as_deref().map(ChatTemplate::new).transpose()?;
        Ok(Engine {
            model: Arc::new(model),
            tokenizer: Arc::new(tokenizer),
            template,
            adapters: RwLock::new(HashMap::new()),
        })
    }

    /// Registers (or replaces) an adapter under a name; running generations keep the one they began with.
    pub fn add_adapter(&self, name: impl Into<String>, adapter: Adapter) -> Result<()> {
        if adapter.layers.len() != self.model.config.n_layer {
            return Err(Error::Adapter("adapter was built for another model shape".into()));
        }
        self.adapters
            .write()
            .map_err(|_| Error::Adapter("adapter registry poisoned".into()))?
            .insert(name.into(), Arc::new(adapter));
        Ok(())
    }

    /// Loads a PEFT adapter directory and registers it.
    pub fn load_adapter(&self, name: impl Into<String>, dir: impl AsRef<Path>) -> Result<()> {
        let a = Adapter::load(dir, &self.model.config)?;
        self.add_adapter(name, a)
    }

    /// Removes an adapter; generations already using it finish with it.
    pub fn remove_adapter(&self, name: &str) -> bool {
        self.adapters.write().map(|mut m| m.remove(name).is_some()).unwrap_or(false)
    }

    /// Names of registered adapters.
    pub fn adapter_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.adapters.read().map(|m| m.keys().cloned().collect()).unwrap_or_default();
        v.sort();
        v
    }

    fn adapter(&self, name: Option<&str>) -> Result<Option<Arc<Adapter>>> {
        let Some(name) = name else { return Ok(None) };
        let m = self.adapters.read().map_err(|_| Error::Adapter("adapter registry poisoned".into()))?;
        m.get(name).cloned().map(Some).ok_or_else(|| Error::Request(format!("no adapter named {name:?}")))
    }

    /// Renders messages with the model's chat template (generation prompt opened).
    pub fn render_chat(&self, messages: &[Message]) -> Result<String> {
        self.render_messages(messages, true)
    }

    /// Renders messages with the model's chat template, opening the assistant's turn or not.
    pub fn render_messages(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let t = self.template.as_ref().ok_or_else(|| Error::Template("the model has no chat template".into()))?;
        let tk = &self.tokenizer;
        let name = |id: Option<TokenId>| id.and_then(|i| tk.token_text(i)).unwrap_or("").to_owned();
        t.render(messages, add_generation_prompt, &name(tk.bos), &name(tk.eos))
    }

    /// Tokenizes a rendered chat prompt (special tokens recognised, BOS per metadata).
    pub fn chat_tokens(&self, messages: &[Message]) -> Result<Vec<TokenId>> {
        let text = self.render_chat(messages)?;
        Ok(self.tokenizer.encode(&text, true, true))
    }

    /// Last-position logits of a prompt.
    pub fn logits(&self, prompt: &[TokenId], adapter: Option<&str>, precision: Precision) -> Result<Vec<f32>> {
        let a = self.adapter(adapter)?;
        let mut cache = self.model.new_cache();
        let mut lanes = [Lane { cache: &mut cache, tokens: prompt, adapter: a.as_deref(), logits: Logits::Last }];
        let mut out = self.model.forward(&mut lanes, precision)?;
        out.pop().ok_or_else(|| Error::Request("no logits".into()))
    }

    /// Text embeddings from the base model: each text tokenized (no special tokens; BOS per
    /// metadata), cut to `max_tokens`, run without adapters, its final hidden states mean-pooled and
    /// scaled to unit length. Texts run in batches of about 1024 tokens through one forward pass.
    pub fn embed(&self, texts: &[&str], max_tokens: usize) -> Result<Vec<Vec<f32>>> {
        if max_tokens == 0 {
            return Err(Error::Request("max_tokens for an embedding is at least 1".into()));
        }
        let limit = max_tokens.min(self.model.config.n_ctx);
        let ids: Vec<Vec<TokenId>> = texts
            .iter()
            .map(|t| {
                let mut v = self.tokenizer.encode(t, true, false);
                v.truncate(limit);
                if v.is_empty() {
                    // An empty text embeds as the BOS (or first) token alone.
                    v.push(self.tokenizer.bos.unwrap_or(0));
                }
                v
            })
            .collect();
        let mut out = Vec::with_capacity(texts.len());
        let mut start = 0;
        while start < ids.len() {
            let mut end = start + 1;
            let mut tokens = ids[start].len();
            while end < ids.len() && tokens + ids[end].len() <= 1024 {
                tokens += ids[end].len();
                end += 1;
            }
            let mut caches: Vec<KvCache> = (start..end).map(|_| self.model.new_cache()).collect();
            let mut lanes: Vec<Lane<'_>> = caches
                .iter_mut()
                .zip(&ids[start..end])
                .map(|(cache, t)| Lane { cache, tokens: t, adapter: None, logits: Logits::MeanHidden })
                .collect();
            for mut v in self.model.forward(&mut lanes, Precision::Fast)? {
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm > 0.0 {
                    v.iter_mut().for_each(|x| *x /= norm);
                }
                out.push(v);
            }
            start = end;
        }
        Ok(out)
    }

    /// Generates for one request, calling `on_text` with each new piece of text (return false to stop).
    pub fn generate(&self, req: &Request, on_text: &mut dyn FnMut(TokenId, &str) -> bool) -> Result<Generation> {
        let mut cb = |_: usize, t: TokenId, s: &str| on_text(t, s);
        let mut g = self.run(std::slice::from_ref(req), &mut cb)?;
        g.pop().ok_or_else(|| Error::Request("no result".into()))
    }

    /// Generates for several requests in one batch (each with its own adapter and sampler). The
    /// callback gets the request index, token and new text.
    pub fn generate_batch(
        &self,
        reqs: &[Request],
        on_text: &mut dyn FnMut(usize, TokenId, &str) -> bool,
    ) -> Result<Vec<Generation>> {
        self.run(reqs, on_text)
    }

    fn run(&self, reqs: &[Request], on_text: &mut dyn FnMut(usize, TokenId, &str) -> bool) -> Result<Vec<Generation>> {
        let n_ctx = self.model.config.n_ctx;
        let mut seqs = Vec::with_capacity(reqs.len());
        for (i, r) in reqs.iter().enumerate() {
            if r.prompt.is_empty() {
                return Err(Error::Request("empty prompt".into()));
            }
            if r.prompt.len() > n_ctx {
                return Err(Error::Request(format!(
                    "prompt of {} tokens exceeds the {n_ctx}-token context",
                    r.prompt.len()
                )));
            }
            if r.stop.iter().any(String::is_empty) {
                return Err(Error::Request("empty stop string".into()));
            }
            seqs.push(Seq {
                req_idx: i,
                cache: self.model.new_cache(),
                adapter: self.adapter(r.adapter.as_deref())?,
                sampler: Sampler::new(r.sampling.clone())?,
                history: r.prompt.clone(),
                out: Vec::new(),
                bytes: Vec::new(),
                emitted: 0,
                finish: if r.max_tokens == 0 { Some(Finish::Length) } else { None },
                pending: r.prompt.clone(),
            });
        }
        let precision = reqs.first().map_or(Precision::Fast, |r| r.precision);
        if reqs.iter().any(|r| r.precision != precision) {
            return Err(Error::Request("one batch runs at one precision".into()));
        }
        loop {
            let active: Vec<usize> = (0..seqs.len()).filter(|&i| seqs[i].finish.is_none()).collect();
            if active.is_empty() {
                break;
            }
            let logits = {
                let mut lanes: Vec<Lane<'_>> = Vec::with_capacity(active.len());
                let mut refs: Vec<&mut Seq> = seqs.iter_mut().filter(|s| s.finish.is_none()).collect();
                for s in refs.iter_mut() {
                    let s: &mut Seq = s;
                    lanes.push(Lane {
                        cache: &mut s.cache,
                        tokens: &s.pending,
                        adapter: s.adapter.as_deref(),
                        logits: Logits::Last,
                    });
                }
                self.model.forward(&mut lanes, precision)?
            };
            for (&i, lg) in active.iter().zip(logits) {
                let s = &mut seqs[i];
                let r = &reqs[s.req_idx];
                let tok = s.sampler.sample(&lg, &s.history);
                if self.tokenizer.is_stop(tok) {
                    s.finish = Some(Finish::Stop);
                    continue;
                }
                s.out.push(tok);
                s.history.push(tok);
                s.pending = vec![tok];
                s.bytes.extend(self.tokenizer.token_bytes(tok, false));
                // Stop strings are found in bytes; text streams up to any incomplete UTF-8 sequence
                // at the end, held back while a stop string could still be completing.
                if let Some(cut) = r.stop.iter().filter_map(|st| find_bytes(&s.bytes, st.as_bytes())).min() {
                    s.bytes.truncate(cut);
                    if cut > s.emitted {
                        let piece = String::from_utf8_lossy(&s.bytes[s.emitted..cut]).into_owned();
                        on_text(s.req_idx, tok, &piece);
                    }
                    s.emitted = cut;
                    s.finish = Some(Finish::StopString);
                    continue;
                }
                let hold = r.stop.iter().map(|st| partial_suffix(&s.bytes, st.as_bytes())).max().unwrap_or(0);
                let safe = complete_len(&s.bytes[..s.bytes.len() - hold]);
                if safe > s.emitted {
                    let piece = String::from_utf8_lossy(&s.bytes[s.emitted..safe]).into_owned();
                    s.emitted = safe;
                    if !on_text(s.req_idx, tok, &piece) {
                        s.finish = Some(Finish::Cancelled);
                        continue;
                    }
                }
                if s.out.len() >= r.max_tokens {
                    s.finish = Some(Finish::Length);
                } else if s.history.len() >= n_ctx {
                    s.finish = Some(Finish::Context);
                }
            }
        }
        Ok(seqs
            .into_iter()
            .map(|s| Generation {
                prompt_ids: reqs[s.req_idx].prompt.clone(),
                output_ids: s.out,
                text: String::from_utf8_lossy(&s.bytes).into_owned(),
                finish: s.finish.unwrap_or(Finish::Length),
            })
            .collect())
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`.
fn partial_suffix(text: &[u8], stop: &[u8]) -> usize {
    (1..stop.len().min(text.len() + 1)).rev().find(|&k| text.ends_with(&stop[..k])).unwrap_or(0)
}

fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `b.len()` less an incomplete UTF-8 sequence at its end (which the next token may complete).
fn complete_len(b: &[u8]) -> usize {
    for k in 1..=b.len().min(3) {
        let lead = b[b.len() - k];
        if lead & 0xC0 == 0x80 {
            continue;
        }
        let need = match lead {
            0xF0..=0xF7 => 4,
            0xE0..=0xEF => 3,
            0xC0..=0xDF => 2,
            _ => 1,
        };
        return if need > k { b.len() - k } else { b.len() };
    }
    b.len()
}
