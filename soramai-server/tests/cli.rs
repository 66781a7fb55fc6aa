//! The CLI's quickstart runs end to end on a fresh data directory, and the hidden job runner
//! refuses garbage.

use std::process::{Command, Stdio};

#[test]
fn quickstart_runs_on_a_fresh_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    for run in 0..2 {
        let out = Command::new(env!("CARGO_BIN_EXE_soramai"))
            .args(["quickstart", "--data-dir"])
            .arg(&data)
            .env_remove("SORAMAI_ROOT_KEY")
            .output()
            .expect("run");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "run {run}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("audit chain verified"), "{stdout}");
        assert!(stdout.contains("plaintext: 0"), "{stdout}");
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&data).expect("meta").permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(data.join("root.key")).expect("key").permissions().mode() & 0o777, 0o600);
}

#[test]
fn job_runner_rejects_garbage_input() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_soramai"))
        .arg("job-runner")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    use std::io::Write;
    child.stdin.take().expect("stdin").write_all(b"\xff\xfe not a header\n").expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("result"));
}
