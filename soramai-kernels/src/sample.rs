//! Token sampling: greedy, temperature, top-k, top-p, min-p, repetition penalty, OpenAI's
//! presence and frequency penalties and logit bias, seeded.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tokenizer::TokenId;

/// Most tokens a request may bias.
pub const MAX_LOGIT_BIAS: usize = 1024;

/// Sampling settings. `temperature <= 0` is greedy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Softmax temperature; 0 picks the most likely token.
    pub temperature: f32,
    /// Keep the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1: all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` × the most likely (0: none).
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of recent tokens by this (1: off).
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    /// Subtracted once from the logit of every token already generated (-2 to 2; 0: off).
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated (-2 to 2; 0: off).
    pub frequency_penalty: f32,
    /// Added to the logits of these tokens (each -100 to 100; -100 bans a token in practice,
    /// 100 all but forces it), at most [`MAX_LOGIT_BIAS`] entries.
    pub logit_bias: Vec<(TokenId, f32)>,
    /// RNG seed: the same seed and inputs give the same output.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self::default()
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        let ok = self.temperature.is_finite()
            && self.temperature >= 0.0
            && (0.0..=1.0).contains(&self.top_p)
            && (0.0..=1.0).contains(&self.min_p)
            && self.repeat_penalty.is_finite()
            && self.repeat_penalty > 0.0;
        if !ok {
            return Err(Error::Request(format!(
                "invalid sampling parameters (temperature {}, top_p {}, min_p {}, repeat_penalty {})",
                self.temperature, self.top_p, self.min_p, self.repeat_penalty
            )));
        }
        let penalty = |v: f32| v.is_finite() && (-2.0..=2.0).contains(&v);
        if !penalty(self.presence_penalty) || !penalty(self.frequency_penalty) {
            return Err(Error::Request("presence_penalty and frequency_penalty are -2 to 2".into()));
        }
        if self.logit_bias.len() > MAX_LOGIT_BIAS {
            return Err(Error::Request(format!("logit_bias has at most {MAX_LOGIT_BIAS} tokens")));
        }
        if self.logit_bias.iter().any(|&(_, b)| !(b.is_finite() && (-100.0..=100.0).contains(&b))) {
            return Err(Error::Request("a logit_bias value is -100 to 100".into()));
        }
        Ok(())
    }

    /// Checks the biased tokens against a vocabulary of `vocab` tokens.
    pub fn validate_for(&self, vocab: usize) -> Result<()> {
        self.validate()?;
        match self.logit_bias.iter().find(|&&(t, _)| t as usize >= vocab) {
            Some((t, _)) => {
                Err(Error::Request(format!("logit_bias token {t} is outside the {vocab}-token vocabulary")))
            }
            None => Ok(()),
        }
    }
}

/// A sampler with its RNG.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// How often this sampler chose each token (what the presence and frequency penalties see).
    chosen: std::collections::HashMap<TokenId, u32>,
}

impl Sampler {
    /// A sampler seeded from the params.
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = ChaCha8Rng::seed_from_u64(params.seed);
        Ok(Sampler { params, rng, chosen: std::collections::HashMap::new() })
    }

    /// Picks the next token from one position's logits, given the tokens so far (prompt and
    /// output); the presence and frequency penalties count the tokens this sampler chose.
    pub fn sample(&mut self, logits: &[f32], history: &[TokenId]) -> TokenId {
        let t = self.pick(logits, history);
        *self.chosen.entry(t).or_default() += 1;
        t
    }

    fn pick(&mut self, logits: &[f32], history: &[TokenId]) -> TokenId {
        let p = &self.params;
        let mut cand: Vec<(TokenId, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as TokenId, l)).collect();
        for &(t, bias) in &p.logit_bias {
            if let Some(c) = cand.get_mut(t as usize) {
                c.1 += bias;
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&t, &n) in &self.chosen {
                if let Some(c) = cand.get_mut(t as usize) {
                    c.1 -= p.presence_penalty + p.frequency_penalty * n as f32;
                }
            }
        }
        if p.repeat_penalty != 1.0 {
            let recent = &history[history.len().saturating_sub(p.repeat_last_n)..];
            let mut seen = std::collections::HashSet::new();
            for &t in recent {
                if seen.insert(t)
                    && let Some(c) = cand.get_mut(t as usize)
                {
                    c.1 = if c.1 > 0.0 { c.1 / p.repeat_penalty } else { c.1 * p.repeat_penalty };
                }
            }
        }
        if p.temperature <= 0.0 {
            return argmax(&cand);
        }
        // Most likely first; ties by lower id, so the order is deterministic.
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 {
            cand.truncate(p.top_k);
        }
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|c| ((c.1 - max) / p.temperature).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);
        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, &pr) in probs.iter().enumerate() {
                acc += pr;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p;
            keep = keep.min(probs.iter().take_while(|&&x| x >= floor).count().max(1));
        }
        let total: f32 = probs[..keep].iter().sum();
        let r = (self.rng.next_u32() as f64 / (u32::MAX as f64 + 1.0)) as f32 * total;
        let mut acc = 0.0;
        for i in 0..keep {
            acc += probs[i];
            if r < acc {
                return cand[i].0;
            }
        }
        cand[keep - 1].0
    }
}

/// Index of the largest logit (lowest id on ties).
pub fn argmax(cand: &[(TokenId, f32)]) -> TokenId {
    let mut best = cand[0];
    for &c in &cand[1..] {
        if c.1 > best.1 {
            best = c;
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![3.0, 2.5, 1.0, 0.5]
    }

    #[test]
    fn a_logit_bias_moves_the_greedy_choice_and_bans_a_token() {
        let greedy = |bias: Vec<(TokenId, f32)>| {
            Sampler::new(SamplingParams { logit_bias: bias, ..SamplingParams::greedy() })
                .expect("params")
                .sample(&logits(), &[])
        };
        assert_eq!(greedy(vec![]), 0);
        assert_eq!(greedy(vec![(3, 100.0)]), 3);
        assert_eq!(greedy(vec![(0, -100.0)]), 1);
        // A token outside the logits is ignored here; the engine refuses it against the vocabulary.
        assert_eq!(greedy(vec![(99, 100.0)]), 0);
    }

    #[test]
    fn penalties_count_what_the_sampler_chose() {
        // Frequency: the first choice is penalized once per time it was chosen.
        let mut s = Sampler::new(SamplingParams { frequency_penalty: 0.4, ..SamplingParams::greedy() }).expect("p");
        let picks: Vec<TokenId> = (0..4).map(|_| s.sample(&logits(), &[])).collect();
        assert_eq!(picks, [0, 0, 1, 0], "3.0 > 2.5, 2.6 > 2.5, 2.2 < 2.5, 2.2 > 2.1");
        // Presence: once chosen, a token loses the same amount whatever its count.
        let mut s = Sampler::new(SamplingParams { presence_penalty: 0.6, ..SamplingParams::greedy() }).expect("p");
        let picks: Vec<TokenId> = (0..4).map(|_| s.sample(&logits(), &[])).collect();
        assert_eq!(picks, [0, 1, 0, 0], "after both are penalized, 2.4 > 1.9 every time");
        // The prompt is not penalized: only chosen tokens count.
        let mut s = Sampler::new(SamplingParams { presence_penalty: 2.0, ..SamplingParams::greedy() }).expect("p");
        assert_eq!(s.sample(&logits(), &[0, 0, 0]), 0);
    }

    #[test]
    fn out_of_range_settings_are_refused() {
        let bad = [
            SamplingParams { presence_penalty: 2.5, ..SamplingParams::default() },
            SamplingParams { frequency_penalty: f32::NAN, ..SamplingParams::default() },
            SamplingParams { logit_bias: vec![(1, 101.0)], ..SamplingParams::default() },
            SamplingParams { logit_bias: vec![(1, f32::INFINITY)], ..SamplingParams::default() },
            SamplingParams { logit_bias: vec![(1, 1.0); MAX_LOGIT_BIAS + 1], ..SamplingParams::default() },
        ];
        for p in bad {
            assert!(Sampler::new(p.clone()).is_err(), "{p:?}");
        }
        let biased = SamplingParams { logit_bias: vec![(4, 1.0)], ..SamplingParams::default() };
        assert!(biased.validate_for(5).is_ok());
        assert!(biased.validate_for(4).is_err());
    }
}
