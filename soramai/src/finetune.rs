//! Fine-tuning data: an OpenAI chat fine-tuning JSONL file (validated by the same rules as an
//! uploaded dataset) turned into training examples for a model, with the validation report a job
//! shows before it trains: example and token counts, and which examples were cut to `max_seq`.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use soramai_core::jobs::runner::{emit, emit_bytes};
use soramai_core::jobs::{BASE_LEARNING_RATE, Hyperparameters};
use soramai_kernels::Engine;
use soramai_kernels::lora::Target;
use soramai_kernels::train::{AdamW, Example, Schedule, TrainConfig, TrainMessage, Trainer, batch_plan, data};
use zeroize::Zeroizing;

use crate::PlatformError;

/// Longest JSONL line accepted (as for uploaded datasets).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// What validation found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DataReport {
    /// Examples.
    pub examples: usize,
    /// Tokens over all examples, after truncation.
    pub tokens: usize,
    /// Tokens that carry loss, after truncation.
    pub trained_tokens: usize,
    /// Longest example before truncation, in tokens.
    pub longest: usize,
    /// 1-based line numbers of the examples cut to `max_seq` tokens.
    pub truncated_lines: Vec<usize>,
}

/// OpenAI's `hyperparameters` as a request gives them: each of `n_epochs`, `batch_size` and
/// `learning_rate_multiplier` a value or `"auto"` — left out is `"auto"`, as in OpenAI's API —
/// chosen from the dataset's size when the job is created ([`HyperparametersRequest::resolve`],
/// and the job reports what was chosen); Soramai's LoRA settings as values, with defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct HyperparametersRequest {
    /// The values given (for the `"auto"` ones, placeholders until they are chosen).
    pub values: Hyperparameters,
    /// Which of the three are `"auto"`.
    pub auto: AutoHyperparameters,
}

/// Which of OpenAI's three hyperparameters are left to the platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AutoHyperparameters {
    /// Passes over the data.
    pub n_epochs: bool,
    /// Examples per step.
    pub batch_size: bool,
    /// The learning rate's multiplier.
    pub learning_rate_multiplier: bool,
}

impl Default for HyperparametersRequest {
    /// Everything left out: the three chosen from the data, the LoRA settings' defaults.
    fn default() -> Self {
        let auto = AutoHyperparameters { n_epochs: true, batch_size: true, learning_rate_multiplier: true };
        HyperparametersRequest { values: Hyperparameters::default(), auto }
    }
}

impl From<Hyperparameters> for HyperparametersRequest {
    /// Every value given.
    fn from(values: Hyperparameters) -> Self {
        let auto = AutoHyperparameters { n_epochs: false, batch_size: false, learning_rate_multiplier: false };
        HyperparametersRequest { values, auto }
    }
}

impl<'de> Deserialize<'de> for HyperparametersRequest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut fields = serde_json::Map::<String, Value>::deserialize(d)?;
        let mut auto = [true; 3];
        for (k, key) in ["n_epochs", "batch_size", "learning_rate_multiplier"].into_iter().enumerate() {
            match fields.remove(key) {
                None | Some(Value::Null) => {}
                Some(Value::String(w)) if w == "auto" => {}
                Some(Value::String(_)) => return Err(D::Error::custom(format!("{key} is a number or \"auto\""))),
                Some(v) => {
                    auto[k] = false;
                    fields.insert(key.to_owned(), v);
                }
            }
        }
        let values = Hyperparameters::deserialize(Value::Object(fields)).map_err(D::Error::custom)?;
        let [n_epochs, batch_size, learning_rate_multiplier] = auto;
        Ok(HyperparametersRequest {
            values,
            auto: AutoHyperparameters { n_epochs, batch_size, learning_rate_multiplier },
        })
    }
}

impl HyperparametersRequest {
    /// The hyperparameters a job on `examples` training examples runs with: the `"auto"` ones
    /// chosen by [`auto_epochs`], [`auto_batch_size`] and [`auto_learning_rate_multiplier`].
    pub fn resolve(&self, examples: u64) -> Hyperparameters {
        let mut h = self.values.clone();
        if self.auto.n_epochs {
            h.n_epochs = auto_epochs(examples);
        }
        if self.auto.batch_size {
            h.batch_size = auto_batch_size(examples);
        }
        if self.auto.learning_rate_multiplier {
            h.learning_rate_multiplier = auto_learning_rate_multiplier(h.batch_size);
        }
        h
    }
}

/// `n_epochs: "auto"`, as OpenAI documents it: 3 passes, more for a small dataset so that about
/// 100 examples are seen (at most 25 passes), fewer for a large one so that about 25,000 are (at
/// least 1).
pub fn auto_epochs(examples: u64) -> u32 {
    const TARGET: u64 = 3;
    let n = examples.max(1);
    let epochs = if n * TARGET < 100 {
        (100 / n).min(25)
    } else if n * TARGET > 25_000 {
        (25_000 / n).max(1)
    } else {
        TARGET
    };
    epochs as u32
}

/// `batch_size: "auto"`, as OpenAI documents it: about 0.2% of the examples, at least 1 and at
/// most 256.
pub fn auto_batch_size(examples: u64) -> u32 {
    ((examples as f64 * 0.002).round() as u64).clamp(1, 256) as u32
}

/// `learning_rate_multiplier: "auto"`: larger with larger batches, as OpenAI's is (it picks 0.05,
/// 0.1 or 0.2 of its own base rate by batch size). Soramai's multiplier scales the LoRA rate
/// [`BASE_LEARNING_RATE`] (2e-4), so OpenAI's figures do not carry over; "auto" grows it with
/// the square root of the batch size, 1.0 at a batch of 4, within 0.5 to 8.
pub fn auto_learning_rate_multiplier(batch_size: u32) -> f64 {
    (f64::from(batch_size.max(1)) / 4.0).sqrt().clamp(0.5, 8.0)
}

/// Parses a chat JSONL file into conversations. Validation comes first, with the rules (and
/// line-numbered errors, which never echo content) of [`soramai_core::datasets::validate_chat_jsonl`].
pub fn parse_chat_jsonl(bytes: &[u8]) -> Result<Vec<(usize, Vec<TrainMessage>)>, PlatformError> {
    soramai_core::datasets::validate_chat_jsonl(bytes, MAX_LINE_BYTES)?;
    let mut out = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let text = std::str::from_utf8(raw)
            .map_err(|_| PlatformError::InvalidArgument(format!("line {}: not UTF-8", i + 1)))?;
        if text.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|_| PlatformError::InvalidArgument(format!("line {}: not JSON", i + 1)))?;
        let messages = v
            .get("messages")
            .and_then(|m| m.as_array())
            .ok_or_else(|| PlatformError::InvalidArgument(format!("line {}: no messages", i + 1)))?;
        let conv = messages
            .iter()
            .map(|m| TrainMessage {
                role: m.get("role").and_then(|r| r.as_str()).unwrap_or_default().to_owned(),
                content: m.get("content").and_then(|c| c.as_str()).unwrap_or_default().to_owned(),
                weight: m.get("weight").and_then(|w| w.as_f64()).map(|w| w as f32),
            })
            .collect();
        out.push((i + 1, conv));
    }
    Ok(out)
}

/// Tokenizes conversations for a model, cutting each to `max_seq` tokens. An example whose every
/// trained token falls past the cut is refused (it would teach nothing), naming its line.
pub fn examples(
    engine: &Engine,
    conversations: &[(usize, Vec<TrainMessage>)],
    max_seq: usize,
) -> Result<(Vec<Example>, DataReport), PlatformError> {
    let mut report = DataReport { examples: 0, tokens: 0, trained_tokens: 0, longest: 0, truncated_lines: Vec::new() };
    let mut out = Vec::with_capacity(conversations.len());
    for (line, conv) in conversations {
        let mut e = data::chat_example(engine, conv)
            .map_err(|err| PlatformError::InvalidArgument(format!("line {line}: {err}")))?;
        report.longest = report.longest.max(e.tokens.len());
        if e.tokens.len() > max_seq {
            e = e.truncated(max_seq);
            report.truncated_lines.push(*line);
            if e.trained_tokens() == 0 {
                return Err(PlatformError::InvalidArgument(format!(
                    "line {line}: no assistant tokens within the first {max_seq} tokens (raise max_seq or shorten the example)"
                )));
            }
        }
        if e.trained_tokens() == 0 {
            // Every assistant turn has weight 0: context only, nothing to learn from.
            continue;
        }
        report.examples += 1;
        report.tokens += e.tokens.len();
        report.trained_tokens += e.trained_tokens();
        out.push(e);
    }
    if out.is_empty() {
        return Err(PlatformError::InvalidArgument("no example has an assistant turn to train on".into()));
    }
    Ok((out, report))
}

/// The `fine_tune` kind of the job runner (`soramai_core::jobs::runner::main_with`): the child
/// process side of a fine-tuning job.
///
/// Reads the dataset (and, on a resume, the last checkpoint) from stdin, validates and tokenizes
/// the dataset (reporting counts and cut lines as a `validation` metric), trains, and writes
/// `progress` events (step, loss, tokens/s, eta), a `checkpoint` with the whole training state every
/// `checkpoint_every` steps, the adapter's two PEFT files as `artifact`s, and the `result`. The data
/// and state pass through pipes only; nothing is written to disk. Errors name lines and fields,
/// never content.
pub fn run_job(
    header: &serde_json::Value,
    input: &mut dyn std::io::Read,
    out: &mut dyn std::io::Write,
) -> Result<(), String> {
    let job = JobInput::read(header, input)?;
    let engine = load_base(header, input)?;
    let conversations = parse_chat_jsonl(&job.data).map_err(|e| format!("dataset: {e}"))?;
    let (examples, report) =
        examples(&engine, &conversations, job.hp.max_seq as usize).map_err(|e| format!("dataset: {e}"))?;
    drop(conversations);
    emit(out, "metric", serde_json::json!({"name": "validation", "report": report})).map_err(output)?;

    let plan = batch_plan(examples.len(), job.hp.batch_size as usize, job.hp.n_epochs as usize, job.hp.seed);
    let config = train_config(&job.hp, plan.len(), job.base_name.clone())?;
    let mut trainer = trainer_for(&engine, &job.state, config, plan.len())?;
    let run = train(&mut trainer, &plan, &examples, job.hp.checkpoint_every as usize, out)?;
    let (config_json, weights) = trainer.adapter().to_bytes(&engine.model.config).map_err(|e| e.to_string())?;
    let weights = Zeroizing::new(weights);
    emit_bytes(out, "artifact", serde_json::json!({"name": "adapter_config.json"}), &config_json).map_err(output)?;
    emit_bytes(out, "artifact", serde_json::json!({"name": "adapter_model.safetensors"}), &weights).map_err(output)?;
    emit(
        out,
        "result",
        serde_json::json!({
            "steps": plan.len(),
            "resumed_at_step": run.resumed_at,
            "trained_tokens": run.trained,
            "tokens": run.tokens,
            "seconds": run.seconds,
            "first_loss": run.first_loss,
            "final_loss": run.last_loss,
            "trainable_parameters": trainer.trainable_parameters(),
            "validation": report,
        }),
    )
    .map_err(output)
}

fn output(e: std::io::Error) -> String {
    format!("job output: {e}")
}

/// What a fine-tuning job's header and pipe hold before the base model: its hyperparameters (checked),
/// the dataset, and the training state of a resume (empty on a first run).
struct JobInput {
    hp: Hyperparameters,
    base_name: Option<String>,
    data: Zeroizing<Vec<u8>>,
    state: Zeroizing<Vec<u8>>,
}

impl JobInput {
    fn read(header: &serde_json::Value, input: &mut dyn std::io::Read) -> Result<Self, String> {
        let hp: Hyperparameters = serde_json::from_value(header.get("hyperparameters").cloned().unwrap_or_default())
            .map_err(|e| format!("hyperparameters: {e}"))?;
        hp.validate().map_err(|e| e.to_string())?;
        let len = |k: &str| {
            header
                .get(k)
                .and_then(|v| v.as_u64())
                .and_then(|n| usize::try_from(n).ok())
                .ok_or(format!("header: no {k}"))
        };
        let (data_len, state_len) = (len("input_len")?, len("checkpoint_len")?);
        let base_name = header.get("base_model").and_then(|p| p.as_str()).map(str::to_owned);
        let mut data = Zeroizing::new(vec![0u8; data_len]);
        input.read_exact(&mut data).map_err(|e| format!("reading the dataset: {e}"))?;
        let mut state = Zeroizing::new(vec![0u8; state_len]);
        input.read_exact(&mut state).map_err(|e| format!("reading the checkpoint: {e}"))?;
        Ok(Self { hp, base_name, data, state })
    }
}

/// The base: a registered model's public file, mapped; or a customer's own GGUF, which follows on
/// the pipe and stays in memory only (zeroed when the engine goes).
fn load_base(header: &serde_json::Value, input: &mut dyn std::io::Read) -> Result<Engine, String> {
    use std::io::Read as _;
    match header.get("base_model_len").and_then(|v| v.as_u64()) {
        Some(n) => {
            let n = usize::try_from(n).map_err(|_| "header: base_model_len is too large".to_owned())?;
            let mut bytes = Vec::new();
            bytes.try_reserve_exact(n).map_err(|_| "the base model does not fit in memory".to_owned())?;
            input.take(n as u64).read_to_end(&mut bytes).map_err(|e| format!("reading the base model: {e}"))?;
            if bytes.len() != n {
                return Err("the base model ended early".into());
            }
            Engine::from_bytes(bytes)
        }
        None => {
            let path = header.get("base_model_path").and_then(|p| p.as_str()).ok_or("header: no base_model_path")?;
            Engine::load(path)
        }
    }
    .map_err(|e| format!("base model: {e}"))
}

/// The trainer's configuration for the job's hyperparameters over `total` steps.
fn train_config(hp: &Hyperparameters, total: usize, base_model: Option<String>) -> Result<TrainConfig, String> {
    let targets = hp
        .target_modules
        .iter()
        .map(|m| Target::from_module(m).ok_or_else(|| format!("unknown target module {m:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TrainConfig {
        rank: hp.rank as usize,
        alpha: hp.alpha as f32,
        targets,
        learning_rate: (BASE_LEARNING_RATE * hp.learning_rate_multiplier) as f32,
        adamw: AdamW::default(),
        warmup_steps: (total / 10).min(50),
        schedule: Schedule::Linear,
        total_steps: total,
        max_seq: hp.max_seq as usize,
        seed: hp.seed,
        base_model,
        ..TrainConfig::default()
    })
}

/// A new trainer, or the one a checkpoint holds (which must be of this very configuration).
fn trainer_for(engine: &Engine, state: &[u8], config: TrainConfig, total: usize) -> Result<Trainer, String> {
    if state.is_empty() {
        return Trainer::new(std::sync::Arc::clone(&engine.model), config).map_err(|e| e.to_string());
    }
    let t = Trainer::load_state(std::sync::Arc::clone(&engine.model), state).map_err(|e| e.to_string())?;
    if t.config() != &config || t.steps_done() > total {
        return Err("the checkpoint belongs to another training configuration".into());
    }
    Ok(t)
}

/// What a run of the training loop did.
struct Run {
    resumed_at: usize,
    trained: u64,
    tokens: u64,
    seconds: f64,
    first_loss: Option<f32>,
    last_loss: f32,
}

/// The training loop from the trainer's step on: a `progress` event each step and a `checkpoint`
/// every `checkpoint_every` steps (not after the last).
fn train(
    trainer: &mut Trainer,
    plan: &[Vec<usize>],
    examples: &[Example],
    checkpoint_every: usize,
    out: &mut dyn std::io::Write,
) -> Result<Run, String> {
    let total = plan.len();
    let done = trainer.steps_done();
    let count = |steps: std::ops::Range<usize>, f: fn(&Example) -> usize| -> u64 {
        steps.flat_map(|i| plan[i].iter()).map(|&j| f(&examples[j]) as u64).sum()
    };
    let mut trained = count(0..done, Example::trained_tokens);
    let mut tokens = count(0..done, |e| e.tokens.len());
    if done > 0 {
        emit(out, "metric", serde_json::json!({"name": "resumed", "step": done})).map_err(output)?;
    }
    let started = std::time::Instant::now();
    let (mut first_loss, mut last_loss) = (None, 0f32);
    let mut this_run = 0u64;
    for (i, batch_ids) in plan.iter().enumerate().skip(done) {
        let batch: Vec<Example> = batch_ids.iter().map(|&j| examples[j].clone()).collect();
        let s = trainer.step(&batch).map_err(|e| e.to_string())?;
        trained += s.trained_tokens as u64;
        tokens += s.tokens as u64;
        this_run += s.tokens as u64;
        first_loss.get_or_insert(s.loss);
        last_loss = s.loss;
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        let per_step = secs / (i + 1 - done) as f64;
        emit(
            out,
            "progress",
            serde_json::json!({
                "fraction": (i + 1) as f64 / total as f64,
                "step": i + 1,
                "total_steps": total,
                "loss": s.loss,
                "tokens_per_second": this_run as f64 / secs,
                "eta_seconds": per_step * (total - i - 1) as f64,
                "trained_tokens": trained,
            }),
        )
        .map_err(output)?;
        if (i + 1) % checkpoint_every == 0 && i + 1 < total {
            let bytes = Zeroizing::new(trainer.save_state().map_err(|e| e.to_string())?);
            emit_bytes(out, "checkpoint", serde_json::json!({"step": i + 1, "trained_tokens": trained}), &bytes)
                .map_err(output)?;
        }
    }
    Ok(Run { resumed_at: done, trained, tokens, seconds: started.elapsed().as_secs_f64(), first_loss, last_loss })
}

/// Loads one of the principal's tenant's fine-tuned models into an engine serving its base model,
/// under the model id as the adapter name, so that requests can name it. Only the owning tenant
/// resolves the id (another gets `NotFound`); the adapter is decrypted in memory only.
pub fn load_fine_tuned(
    core: &soramai_core::Core,
    principal: &soramai_core::Principal,
    id: &soramai_core::ModelId,
    engine: &Engine,
) -> Result<soramai_core::FineTunedModel, PlatformError> {
    let files = core.fine_tuned_adapter(principal, id)?;
    let adapter = soramai_kernels::lora::Adapter::from_bytes(&files.config, &files.weights, &engine.model.config)?;
    engine.add_adapter(id.as_str(), adapter)?;
    Ok(files.model)
}

/// A chat JSONL dataset's figures (examples, messages, trained turns), by the same check an
/// upload passes.
pub fn dataset_stats(bytes: &[u8]) -> Result<soramai_core::DatasetStats, PlatformError> {
    Ok(soramai_core::datasets::validate_chat_jsonl(bytes, usize::MAX)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_hyperparameters_follow_the_dataset_size() {
        assert_eq!((auto_epochs(4), auto_epochs(20), auto_epochs(1_000), auto_epochs(20_000)), (25, 5, 3, 1));
        assert_eq!((auto_batch_size(10), auto_batch_size(5_000), auto_batch_size(1_000_000)), (1, 10, 256));
        assert_eq!(auto_learning_rate_multiplier(4), 1.0);
        assert!(auto_learning_rate_multiplier(1) < 1.0 && auto_learning_rate_multiplier(64) > 1.0);
        let r: HyperparametersRequest =
            serde_json::from_value(serde_json::json!({"n_epochs": "auto", "batch_size": 2, "rank": 4}))
                .expect("request");
        let h = r.resolve(10);
        assert_eq!((h.n_epochs, h.batch_size, h.rank), (10, 2, 4));
        assert!((h.learning_rate_multiplier - 0.5f64.sqrt()).abs() < 1e-12);
        let given = HyperparametersRequest::from(Hyperparameters::default());
        assert_eq!(given.resolve(10), Hyperparameters::default());
        for bad in [serde_json::json!({"n_epochs": "many"}), serde_json::json!({"bogus": 1}), serde_json::json!(3)] {
            assert!(serde_json::from_value::<HyperparametersRequest>(bad).is_err());
        }
    }
}
