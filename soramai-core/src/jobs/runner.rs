//! The job runner: the child process side of a job.
//!
//! It applies its resource limits first, then reads one JSON header line and the job's input from
//! stdin, and writes JSON-line events (`progress`, `metric`, `error`, `result`, and `checkpoint` /
//! `artifact` lines each followed by their raw bytes) to stdout. It sees nothing but its arguments,
//! its stdin and its private working directory.
//!
//! The core runs `checksum` itself; crates with engines add kinds through [`main_with`] (the
//! `soramai` CLI's `job-runner` adds `fine_tune`).

use std::io::{BufRead, Read, Write};

use rlimit::Resource;
use sha2::{Digest, Sha256};

fn arg_value(args: &[String], name: &str) -> Option<u64> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok())
}

/// Writes one event line.
pub fn emit(out: &mut dyn Write, kind: &str, data: serde_json::Value) -> std::io::Result<()> {
    writeln!(out, "{}", serde_json::json!({"type": kind, "data": data}))?;
    out.flush()
}

/// Writes a `checkpoint` or `artifact` line (with `bytes` added to `data`) and the bytes after it.
pub fn emit_bytes(out: &mut dyn Write, kind: &str, mut data: serde_json::Value, bytes: &[u8]) -> std::io::Result<()> {
    data["bytes"] = serde_json::json!(bytes.len());
    writeln!(out, "{}", serde_json::json!({"type": kind, "data": data}))?;
    out.write_all(bytes)?;
    out.flush()
}

/// A job kind added to the runner: given the header, the input after it and stdout.
pub type KindHandler = fn(&serde_json::Value, &mut dyn Read, &mut dyn Write) -> Result<(), String>;

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
    main_with(args, &[])
}

/// Runs one job from stdin with extra kinds; returns the process exit code. A failure is also
/// reported as an `error` event, whose message becomes the job's error: it must name what was
/// wrong (a line number, a field), never echo content.
pub fn main_with(args: &[String], kinds: &[(&str, KindHandler)]) -> i32 {
    match run(args, kinds) {
        Ok(()) => 0,
        Err(e) => {
            let _ = emit(&mut std::io::stdout().lock(), "error", serde_json::json!({"message": e}));
            let _ = writeln!(std::io::stderr(), "job runner: {e}");
            2
        }
    }
}

fn run(args: &[String], kinds: &[(&str, KindHandler)]) -> Result<(), String> {
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
    let kind = header.get("kind").and_then(|k| k.as_str());
    if let Some((_, handler)) = kinds.iter().find(|(k, _)| Some(*k) == kind) {
        return handler(&header, &mut input, &mut out);
    }
    match kind {
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
