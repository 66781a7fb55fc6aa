//! Datasets: chat fine-tuning data in OpenAI's JSONL format, validated line by line, stored encrypted.
//!
//! Each line is one example: `{"messages": [{"role": "system"|"user"|"assistant", "content": "...",
//! "weight": 0|1 (assistant only, optional)}, ...]}` with at least one user and one assistant turn.
//! The first bad line is reported by number and nothing is stored.

use crate::params;
use crate::store::OptionalExt as _;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::audit::vocabulary::Action;
use crate::auth::{Principal, Scope};
use crate::clock::Millis;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::ids::{DatasetId, ObjectPath};

/// A stored dataset's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatasetInfo {
    /// `file-<hex>`.
    pub id: DatasetId,
    /// The uploaded file name (metadata, shown in listings).
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Number of examples (lines).
    pub examples: u64,
    /// Upload time, Unix ms.
    pub created_at: Millis,
}

/// Statistics of a validated dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DatasetStats {
    /// Examples (non-blank lines).
    pub examples: u64,
    /// Messages across all examples.
    pub messages: u64,
    /// Assistant messages that carry training weight.
    pub trained_turns: u64,
}

fn bad(line: usize, reason: impl Into<String>) -> Error {
    Error::InvalidDataset { line, reason: reason.into() }
}

/// Validates a chat fine-tuning JSONL file. Errors name the 1-based line.
pub fn validate_chat_jsonl(data: &[u8], max_line_bytes: usize) -> Result<DatasetStats> {
    let mut stats = DatasetStats { examples: 0, messages: 0, trained_turns: 0 };
    for (i, raw) in data.split(|&b| b == b'\n').enumerate() {
        let line_no = i + 1;
        if raw.len() > max_line_bytes {
            return Err(bad(line_no, format!("line is longer than {max_line_bytes} bytes")));
        }
        let text = std::str::from_utf8(raw)
            .map_err(|e| bad(line_no, format!("not valid UTF-8 (byte {})", e.valid_up_to())))?;
        let text = text.strip_suffix('\r').unwrap_or(text);
        if text.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(line_no, format!("not valid JSON (column {})", e.column())))?;
        let obj = value.as_object().ok_or_else(|| bad(line_no, "each line must be a JSON object"))?;
        let messages =
            obj.get("messages").and_then(|m| m.as_array()).ok_or_else(|| bad(line_no, "missing \"messages\" array"))?;
        if messages.is_empty() {
            return Err(bad(line_no, "\"messages\" is empty"));
        }
        let (mut users, mut assistants) = (0, 0);
        for (j, m) in messages.iter().enumerate() {
            let m = m.as_object().ok_or_else(|| bad(line_no, format!("message {j} is not an object")))?;
            let role = m
                .get("role")
                .and_then(|r| r.as_str())
                .ok_or_else(|| bad(line_no, format!("message {j} has no \"role\"")))?;
            match role {
                "system" | "user" | "assistant" => {}
                // The value itself is customer content: it is not echoed back.
                _ => {
                    return Err(bad(
                        line_no,
                        format!("message {j} has an unsupported role (use system, user or assistant)"),
                    ));
                }
            }
            if !m.get("content").is_some_and(|c| c.is_string()) {
                return Err(bad(line_no, format!("message {j} needs a string \"content\"")));
            }
            match m.get("weight") {
                None => {
                    if role == "assistant" {
                        stats.trained_turns += 1;
                    }
                }
                Some(_) if role != "assistant" => {
                    return Err(bad(line_no, format!("message {j}: \"weight\" is only allowed on assistant messages")));
                }
                Some(w) => match w.as_u64() {
                    Some(0) => {}
                    Some(1) => stats.trained_turns += 1,
                    _ => {
                        return Err(bad(line_no, format!("message {j}: \"weight\" must be 0 or 1")));
                    }
                },
            }
            users += usize::from(role == "user");
            assistants += usize::from(role == "assistant");
        }
        if users == 0 {
            return Err(bad(line_no, "an example needs at least one user message"));
        }
        if assistants == 0 {
            return Err(bad(line_no, "an example needs at least one assistant message"));
        }
        stats.examples += 1;
        stats.messages += messages.len() as u64;
    }
    if stats.examples == 0 {
        return Err(bad(1, "the dataset has no examples"));
    }
    Ok(stats)
}

fn dataset_path(id: &DatasetId) -> Result<ObjectPath> {
    ObjectPath::new(format!("datasets/{}.jsonl", id.as_str()))
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.chars().count() > 255 || name.chars().any(|c| c.is_control() || c == '/' || c == '\\') {
        return Err(Error::InvalidArgument(
            "a dataset name is 1-255 characters without control characters or slashes".into(),
        ));
    }
    Ok(())
}

impl Core {
    /// Validates and stores a dataset, encrypted under the tenant's key (train scope). On any error
    /// nothing is stored.
    pub fn upload_dataset(&self, principal: &Principal, name: &str, data: &[u8]) -> Result<DatasetInfo> {
        principal.require(Scope::Train)?;
        let tenant = principal.tenant();
        self.tenant(tenant)?;
        check_name(name)?;
        if data.len() as u64 > self.limits().max_dataset_bytes {
            return Err(Error::TooLarge { what: "dataset", limit: self.limits().max_dataset_bytes });
        }
        let stats = validate_chat_jsonl(data, self.limits().max_dataset_line_bytes)?;
        let id = DatasetId::generate();
        let sealed_name = self.seal_name(tenant, name)?;
        let info = DatasetInfo {
            id: id.clone(),
            name: name.to_string(),
            bytes: data.len() as u64,
            examples: stats.examples,
            created_at: self.now(),
        };
        self.put_object_with(tenant, &dataset_path(&id)?, data, |tx| {
            tx.execute(
                "INSERT INTO datasets (id, tenant_id, name, bytes, examples, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![id.as_str(), tenant.as_str(), sealed_name, info.bytes, info.examples, info.created_at],
            )?;
            self.audit_tx(tx, tenant, principal.actor(), Action::DatasetUploaded, id.as_str(), serde_json::json!({"bytes": info.bytes, "examples": info.examples}))
        })?;
        Ok(info)
    }

    /// The principal's tenant's datasets.
    pub fn list_datasets(&self, principal: &Principal) -> Result<Vec<DatasetInfo>> {
        principal.require(Scope::Train)?;
        self.tenant(principal.tenant())?;
        let rows = self.read(|c| {
            let rows = c.query_map("SELECT id, name, bytes, examples, created_at FROM datasets WHERE tenant_id = ?1 ORDER BY created_at, id", [principal.tenant().as_str()], |r| Ok((r.get::<String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?;
            Ok(rows)
        })?;
        rows.into_iter()
            .map(|(id, name, bytes, examples, created_at): (String, String, u64, u64, i64)| {
                let name = self.open_name(principal.tenant(), &name)?;
                Ok(DatasetInfo { id: DatasetId::new(id)?, name, bytes, examples, created_at })
            })
            .collect()
    }

    /// One dataset's metadata; another tenant's id is [`Error::NotFound`].
    pub fn dataset(&self, principal: &Principal, id: &DatasetId) -> Result<DatasetInfo> {
        principal.require(Scope::Train)?;
        self.tenant(principal.tenant())?;
        let row = self.read(|c| {
            c.query_row(
                "SELECT name, bytes, examples, created_at FROM datasets WHERE id = ?1 AND tenant_id = ?2",
                params![id.as_str(), principal.tenant().as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
        })?;
        let (name, bytes, examples, created_at): (String, _, _, _) = row.ok_or(Error::NotFound { kind: "dataset" })?;
        let name = self.open_name(principal.tenant(), &name)?;
        Ok(DatasetInfo { id: id.clone(), name, bytes, examples, created_at })
    }

    /// Decrypts and returns a dataset's content (audited).
    pub fn download_dataset(&self, principal: &Principal, id: &DatasetId) -> Result<Zeroizing<Vec<u8>>> {
        self.dataset(principal, id)?;
        let data = self.get_object(principal.tenant(), &dataset_path(id)?)?;
        self.audit(
            principal.tenant(),
            principal.actor(),
            Action::DatasetDownloaded,
            id.as_str(),
            serde_json::json!({}),
        )?;
        Ok(data)
    }

    /// Internal read for jobs: the dataset of exactly this tenant.
    pub(crate) fn dataset_bytes(&self, tenant: &crate::ids::TenantId, id: &DatasetId) -> Result<Zeroizing<Vec<u8>>> {
        self.dataset(&Principal::operator(tenant), id)?;
        self.get_object(tenant, &dataset_path(id)?)
    }

    /// Deletes a dataset: its metadata, then its encrypted blob.
    pub fn delete_dataset(&self, principal: &Principal, id: &DatasetId) -> Result<()> {
        self.dataset(principal, id)?;
        let tenant = principal.tenant();
        self.delete_object_with(tenant, &dataset_path(id)?, |tx| {
            tx.execute("DELETE FROM datasets WHERE id = ?1 AND tenant_id = ?2", params![id.as_str(), tenant.as_str()])?;
            self.audit_tx(tx, tenant, principal.actor(), Action::DatasetDeleted, id.as_str(), serde_json::json!({}))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn good_examples_pass() {
        let d = line(concat!(
            r#"{"messages":[{"role":"system","content":"s"},{"role":"user","content":"u"},{"role":"assistant","content":"a","weight":0},{"role":"user","content":"u2"},{"role":"assistant","content":"a2"}]}"#,
            "\n\n",
            r#"{"messages":[{"role":"user","content":"u"},{"role":"assistant","content":"a"}]}"#,
            "\r\n"
        ));
        let s = validate_chat_jsonl(&d, 1 << 20).expect("valid");
        assert_eq!((s.examples, s.messages, s.trained_turns), (2, 7, 2));
    }

    #[test]
    fn errors_name_the_line() {
        let ok = r#"{"messages":[{"role":"user","content":"u"},{"role":"assistant","content":"a"}]}"#;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            ([ok.as_bytes(), b"\n", b"{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}"].concat(), "UTF-8"),
            (format!("{ok}\n{{\"messages\":[{{\"role\":\"wizard\",\"content\":\"x\"}}]}}").into_bytes(), "role"),
            (format!("{ok}\n{{\"messages\":[{{\"role\":\"user\",\"content\":\"x\"}}]}}").into_bytes(), "assistant"),
            (format!("{ok}\n{{\"messages\":[{{\"role\":\"user\",\"content\":\"x\"}},{{\"role\":\"assistant\",\"content\":\"a\",\"weight\":2}}]}}").into_bytes(), "weight"),
            (format!("{ok}\nnot json").into_bytes(), "JSON"),
            (format!("{ok}\n[1,2]").into_bytes(), "object"),
            (format!("{ok}\n{{\"messages\":[]}}").into_bytes(), "empty"),
            (format!("{ok}\n{{\"messages\":[{{\"role\":\"user\"}},{{\"role\":\"assistant\",\"content\":\"a\"}}]}}").into_bytes(), "content"),
        ];
        for (data, needle) in cases {
            match validate_chat_jsonl(&data, 1 << 20) {
                Err(Error::InvalidDataset { line: 2, reason }) => {
                    assert!(reason.contains(needle), "{reason}")
                }
                other => panic!("expected an error on line 2 mentioning {needle}, got {other:?}"),
            }
        }
        let long = format!("{ok}\n{}", "x".repeat(2000));
        assert!(matches!(validate_chat_jsonl(long.as_bytes(), 1000), Err(Error::InvalidDataset { line: 2, .. })));
        assert!(matches!(validate_chat_jsonl(b"\n\n", 1000), Err(Error::InvalidDataset { line: 1, .. })));
    }
}
