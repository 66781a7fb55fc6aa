//! The job runner: the child process side of a job.
//!
//! It applies its resource limits first, then reads one JSON header line and the job's input from
//! stdin, and writes JSON-line events (`progress`, `metric`, `result`) to stdout. It sees nothing
//! but its arguments, its stdin and its private working directory.

use std::io::{BufRead, Read, Write};

use rlimit::Resource;
use sha2::{Digest, Sha256};

fn arg_value(args: &[String], name: &str) -> Option<u64> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok())
}

fn emit(out: &mut impl Write, kind: &str, data: serde_json::Value) -> std::io::Result<()> {
    writeln!(out, "{}", serde_json::json!({"type": kind, "data": data}))?;
    out.flush()
}

/// The soft limits this process runs under, for the job's record.
fn limits_in_force() -> serde_json::Value {
    let get = |r: Resource| r.get().map(|(soft, _)| soft).ok();
    serde_json::json!({
        "address_space_bytes": get(Resource::AS),
        "cpu_seconds": get(Resource::CPU),
        "open_files": get(Resource::NOFILE),
    })
}

/// Runs one job from stdin; returns the process exit code.
pub fn main(args: &[String]) -> i32 {
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "job runner: {e}");
            2
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    for (name, resource) in [
        ("--max-memory-bytes", Resource::AS),
        ("--max-cpu-seconds", Resource::CPU),
        ("--max-open-files", Resource::NOFILE),
    ] {
        if let Some(v) = arg_value(args, name) {
            resource.set(v, v).map_err(|e| format!("setting {name}: {e}"))?;
        }
    }
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut header = String::new();
    input.by_ref().take(64 << 10).read_line(&mut header).map_err(|e| e.to_string())?;
    let header: serde_json::Value = serde_json::from_str(&header).map_err(|e| format!("bad header: {e}"))?;
    let mut out = std::io::stdout().lock();
    match header.get("kind").and_then(|k| k.as_str()) {
        Some("checksum") => {
            let pace =
                std::time::Duration::from_millis(header.get("pace_ms").and_then(|p| p.as_u64()).unwrap_or(0).min(1000));
            let total = header.get("input_len").and_then(|p| p.as_u64()).unwrap_or(0);
            let mut hasher = Sha256::new();
            let (mut bytes, mut lines) = (0u64, 0u64);
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = input.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                bytes += n as u64;
                lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
                let fraction = if total == 0 { 1.0 } else { bytes as f64 / total as f64 };
                emit(&mut out, "progress", serde_json::json!({"fraction": fraction, "bytes": bytes}))
                    .map_err(|e| e.to_string())?;
                std::thread::sleep(pace);
            }
            let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
            let scratch_mode = {
                use std::os::unix::fs::PermissionsExt;
                std::fs::metadata(&cwd).map(|m| m.permissions().mode() & 0o777).unwrap_or(0)
            };
            emit(&mut out, "metric", serde_json::json!({"name": "bytes", "value": bytes}))
                .map_err(|e| e.to_string())?;
            emit(
                &mut out,
                "result",
                serde_json::json!({
                    "sha256": hex::encode(hasher.finalize()),
                    "bytes": bytes,
                    "lines": lines,
                    "environment_variables": std::env::vars_os().count(),
                    "rlimits": limits_in_force(),
                    "scratch_mode": format!("{scratch_mode:o}"),
                }),
            )
            .map_err(|e| e.to_string())
        }
        other => Err(format!("unknown job kind {other:?}")),
    }
}
