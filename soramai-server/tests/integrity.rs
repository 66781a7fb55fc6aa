//! What an attacker with the disk, and an unlucky operator, find from outside: a flipped byte in
//! a stored blob and an edited audit record each give a typed `integrity_error` (never a bare
//! 500), an operator log line and an audit record naming what failed; `audit/verify` reports the
//! first bad record and `audit` marks every record from it on; `backup` refuses to carry either;
//! a restore that fails (a corrupt snapshot, a full disk) leaves nothing behind; a restart sweeps
//! the `.tmp` blobs and scratch directories a crash left. Every request is logged as one
//! structured line with its request id, route, status, latency, tenant and error code.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

mod common;
use common::*;

#[path = "../../soramai-kernels/tests/common/files.rs"]
mod files;
#[path = "../../soramai-kernels/tests/common/reference_model.rs"]
mod reference_model;
use files::files_under;
use reference_model::reference_model;

/// What a file holds: never in a log line.
const CONTENT_CANARY: &str = "zq7-content-canary-Kumo";

/// The newest blob file of a tenant (the last object written).
fn newest_blob(data: &Path, tenant: &str) -> PathBuf {
    let mut blobs: Vec<PathBuf> = files_under(data)
        .into_iter()
        .filter(|f| f.to_string_lossy().contains(&format!("/t/{tenant}/")) && f.extension().is_none())
        .collect();
    blobs.sort_by_key(|f| std::fs::metadata(f).and_then(|m| m.modified()).expect("mtime"));
    blobs.pop().expect("a blob")
}

#[test]
fn tampering_is_a_typed_error_logged_audited_and_refused_by_backup() {
    let Some(model) = reference_model() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let server = Server::start(dir.path(), &model);
    let key = server.tenant("acme", "org", 0);
    let line = format!(
        "{{\"messages\":[{{\"role\":\"user\",\"content\":\"{CONTENT_CANARY}\"}},{{\"role\":\"assistant\",\"content\":\"ok\"}}]}}\n"
    );
    let (s, file) = upload(&server, &key, line.repeat(400).into_bytes());
    assert_eq!(s, StatusCode::OK, "{file}");
    let id = file["id"].as_str().expect("id").to_owned();
    let (s, _) = server.call("GET", &format!("/v1/files/{id}/content"), Some(&key), None);
    assert_eq!(s, StatusCode::OK);

    // One flipped byte in the stored blob.
    let blob = newest_blob(&data, "acme");
    let mut bytes = std::fs::read(&blob).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&blob, &bytes).expect("write");
    let res = server
        .http
        .get(format!("{}/v1/files/{id}/content", server.url))
        .bearer_auth(&key)
        .header("x-request-id", "probe-flip-1")
        .send()
        .expect("send");
    assert_eq!(res.headers().get("x-request-id").and_then(|v| v.to_str().ok()), Some("probe-flip-1"));
    // A hostile request id (too long, a forged log field, a space) is replaced, never echoed
    // or logged.
    for hostile in ["x".repeat(65), "a error=forged".to_owned(), "id;tenant=other".to_owned()] {
        let res = server
            .http
            .get(format!("{}/v1/models", server.url))
            .bearer_auth(&key)
            .header("x-request-id", hostile.as_str())
            .send()
            .expect("send");
        let echoed = res.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        assert!(echoed.starts_with("req_") && echoed != hostile, "{echoed}");
    }
    let status = res.status();
    let body: Value = res.json().expect("json");
    assert_error((status, body), StatusCode::INTERNAL_SERVER_ERROR, "integrity_error");

    // The tenant's audit log names the object.
    let (s, audit) = server.call("GET", "/v1/audit", Some(&key), None);
    assert_eq!(s, StatusCode::OK, "{audit}");
    let records = audit["data"].as_array().expect("records");
    let failure = records.iter().find(|r| r["action"] == "integrity.failed").expect("an integrity record");
    assert_eq!(failure["target"], format!("datasets/{id}.jsonl").as_str(), "{failure}");
    assert!(records.iter().all(|r| r["verified"] == true), "{audit}");
    let (_, metrics) = server.call("GET", "/metrics", None, None);
    assert!(
        metrics.as_str().expect("text").contains("soramai_http_errors_total{code=\"integrity_error\"} 1"),
        "{metrics}"
    );

    // An edited audit record: a report, not an error, and every record from it on marked.
    rusqlite::Connection::open(data.join("meta.sqlite3"))
        .expect("db")
        .execute_batch("UPDATE audit_log SET target = 'forged' WHERE tenant_id = 'acme' AND seq = 2")
        .expect("edit");
    let (s, verify) = server.call("GET", "/v1/audit/verify", Some(&key), None);
    assert_eq!(s, StatusCode::OK, "{verify}");
    let report = &verify["report"];
    assert_eq!(report["valid"], false, "{verify}");
    assert_eq!(report["first_bad_record"], 2, "{verify}");
    assert_eq!(report["reason"], "the record was edited after it was written", "{verify}");
    let (_, audit) = server.call("GET", "/v1/audit", Some(&key), None);
    let marks: Vec<(u64, bool)> = audit["data"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| (r["seq"].as_u64().expect("seq"), r["verified"].as_bool().expect("flag")))
        .collect();
    assert!(marks.len() > 3 && marks[0] == (1, true), "{marks:?}");
    assert!(marks[1..].iter().all(|&(_, ok)| !ok), "{marks:?}");
    // The dashboard's audit page says where and why, and marks the records.
    let session = join_and_sign_in(&server, &key, "ada@acme.com", "admin", "correct horse battery staple 7");
    let (s, html) = Web::new(&server).get(&session, "/t/acme/audit");
    assert_eq!(s, StatusCode::OK, "{html}");
    assert!(html.contains("Verification failed") && html.contains("record 2: the record was edited"), "{html}");
    assert!(html.contains("(unverified)"), "{html}");
    let admin = server.admin.clone();
    let logs = server.stop();

    // The operator's log: a line for the blob (tenant and blob only), one for the chain, and a
    // request line with the request id, route template, status, tenant and error code; never
    // the file's content, its name or a key.
    let integrity: Vec<&str> = logs.lines().filter(|l| l.contains("soramai::integrity")).collect();
    assert!(
        integrity.iter().any(|l| l.contains("stored data failed its integrity check") && l.contains("tenant=acme")),
        "{logs}"
    );
    assert!(integrity.iter().any(|l| l.contains("audit chain") && l.contains("record=2")), "{logs}");
    let request = logs.lines().find(|l| l.contains("probe-flip-1")).expect("the request's log line");
    for part in [
        "soramai::http",
        "route=/v1/files/{id}/content",
        "status=500",
        "tenant=acme",
        "error=integrity_error",
        "latency_ms=",
    ] {
        assert!(request.contains(part), "{part} missing from {request}");
    }
    for secret in [CONTENT_CANARY, "train.jsonl", key.as_str(), admin.as_str(), "error=forged", "tenant=other"] {
        assert!(!logs.contains(secret), "{secret} is in the server's output");
    }

    // `backup` refuses to carry either, and names them.
    let target = format!("file://{}", dir.path().join("backups").display());
    let out = cli(&["backup", "--data-dir", data.to_str().expect("utf-8"), "--to", &target]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("acme/datasets/{id}.jsonl")), "{stderr}");
    assert!(stderr.contains("broken audit chain") && stderr.contains("tenant acme at record 2"), "{stderr}");
    assert!(
        !dir.path().join("backups").join("snapshots").exists()
            || files_under(&dir.path().join("backups").join("snapshots")).iter().all(|f| !f.ends_with("manifest"))
    );
}

#[test]
fn a_restart_sweeps_orphaned_tmp_blobs_and_dead_jobs_scratch_directories() {
    let Some(model) = reference_model() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let server = Server::start(dir.path(), &model);
    let key = server.tenant("acme", "basic", 0);
    let (s, _) = upload(&server, &key, dataset());
    assert_eq!(s, StatusCode::OK);
    server.stop();

    // What a kill -9 mid-upload and mid-job leaves: a half-written blob and a scratch directory.
    let blob_dir = newest_blob(&data, "acme").parent().expect("dir").to_path_buf();
    let stale = blob_dir.join("5f3a9c.tmp");
    std::fs::write(&stale, vec![1u8; 3 << 20]).expect("write");
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options().write(true).open(&stale).expect("open").set_modified(old).expect("mtime");
    let scratch = data.join("scratch").join("job-0a1b2c3d4e5f-1");
    std::fs::create_dir_all(&scratch).expect("mkdir");
    std::fs::write(scratch.join("checkpoint.bin"), b"partial").expect("write");

    let server = Server::start(dir.path(), &model);
    let (s, files) = server.call("GET", "/v1/files", Some(&key), None);
    assert_eq!(s, StatusCode::OK, "{files}");
    let logs = server.stop();
    assert!(!stale.exists(), "the orphaned .tmp blob is gone");
    assert!(!scratch.exists(), "the dead job's scratch directory is gone");
    let line = logs.lines().find(|l| l.contains("soramai::recovery")).expect("a recovery line");
    assert!(line.contains("blobs=1") && line.contains("scratch_entries=1"), "{line}");
}

#[test]
fn a_restore_onto_a_full_disk_fails_and_leaves_nothing_behind() {
    use soramai::{ObjectPath, TenantId, Tier};
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let target = format!("file://{}", dir.path().join("backups").display());
    let key = data.join("root.key");
    let acme = TenantId::new("acme").expect("id");
    {
        let core = soramai::Core::open_embedded(&data).expect("core");
        core.create_tenant(&acme, Tier::Basic).expect("tenant");
        for i in 0..3 {
            let path = ObjectPath::new(format!("blobs/part-{i}")).expect("path");
            core.put_object(&acme, &path, &vec![i as u8; 2 << 20]).expect("put");
        }
    }
    let out = cli(&["backup", "--data-dir", data.to_str().expect("utf-8"), "--to", &target]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A file size limit stands in for a full disk: writes past 1 MiB fail with EFBIG (the
    // signal that would kill the process is ignored, as a full disk's ENOSPC would not kill it).
    let restored = dir.path().join("restored");
    let out = Command::new("bash")
        .args(["-c", "trap '' XFSZ; ulimit -f 1024; exec \"$@\"", "restore"])
        .arg(env!("CARGO_BIN_EXE_soramai"))
        .args(["restore", "--from", &target, "--data-dir"])
        .arg(&restored)
        .arg("--root-key-file")
        .arg(&key)
        .env_remove("SORAMAI_ROOT_KEY")
        .output()
        .expect("run");
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(!restored.exists(), "a failed restore leaves no data directory");
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("restoring"))
        .collect();
    assert!(left.is_empty(), "staging left behind: {left:?}");
    // With room, the same restore succeeds.
    let out = cli(&[
        "restore",
        "--from",
        &target,
        "--data-dir",
        restored.to_str().expect("utf-8"),
        "--root-key-file",
        key.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let core = soramai::Core::open_embedded(&restored).expect("restored");
    assert_eq!(core.get_object(&acme, &ObjectPath::new("blobs/part-2").expect("path")).expect("object").len(), 2 << 20);
}
