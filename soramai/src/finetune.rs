//! Fine-tuning data: an OpenAI chat fine-tuning JSONL file (validated by the same rules as an
//! uploaded dataset) turned into training examples for a model, with the validation report a job
//! shows before it trains: example and token counts, and which examples were cut to `max_seq`.

use serde::Serialize;
use soramai_kernels::Engine;
use soramai_kernels::train::{Example, TrainMessage, data};

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
