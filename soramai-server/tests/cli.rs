//! The CLI's quickstart runs end to end on a fresh data directory, and the hidden job runner
//! refuses garbage.

use std::process::{Command, Stdio};

mod common;
use common::{cli, ok_json};

#[path = "../../soramai-kernels/tests/common/reference_model.rs"]
mod reference_model;
use reference_model::reference_model;

#[test]
fn quickstart_runs_on_a_fresh_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // The first run is the whole pipeline on the reference model (when present); the second
    // reopens the same directory.
    let model = std::env::var_os("SORAMAI_TEST_MODEL").map(std::path::PathBuf::from).filter(|p| p.is_file());
    for run in 0..2 {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_soramai"));
        cmd.args(["quickstart", "--data-dir"]).arg(&data).env_remove("SORAMAI_ROOT_KEY");
        if run == 0
            && let Some(m) = &model
        {
            cmd.arg("--model").arg(m);
        }
        let out = cmd.output().expect("run");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "run {run}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("audit chain verified"), "{stdout}");
        assert!(stdout.contains("plaintext: 0"), "{stdout}");
        assert!(!stdout.contains("plaintext: 1"), "{stdout}");
        if run == 0 && model.is_some() {
            for step in ["succeeded: loss", "ft:smollm2-135m-instruct:", "sources in the prompt", "model.accessed"] {
                assert!(stdout.contains(step), "missing {step:?} in {stdout}");
            }
        }
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

/// `soramai merge|export-lora --model M --adapter A --out O`.
fn files_cmd(
    cmd: &str,
    model: &std::path::Path,
    adapter: &std::path::Path,
    out: &std::path::Path,
) -> std::process::Output {
    soramai(&[
        std::ffi::OsStr::new(cmd),
        std::ffi::OsStr::new("--model"),
        model.as_os_str(),
        std::ffi::OsStr::new("--adapter"),
        adapter.as_os_str(),
        std::ffi::OsStr::new("--out"),
        out.as_os_str(),
    ])
}

fn soramai(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_soramai")).args(args).stdin(Stdio::null()).output().expect("run")
}

#[test]
fn train_writes_a_peft_adapter_a_report_and_a_loss_curve_that_generate_loads() {
    let Some(model) = reference_model() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("train.jsonl");
    let line = |q: &str, a: &str| {
        format!(
            "{{\"messages\":[{{\"role\":\"system\",\"content\":\"Be brief.\"}},{{\"role\":\"user\",\"content\":\"{q}\"}},{{\"role\":\"assistant\",\"content\":\"{a}\"}}]}}\n"
        )
    };
    let body = [
        line("Who is the Soramai mascot?", "Kumo, a blue heron."),
        line("Name the Soramai mascot.", "Kumo the blue heron."),
        line("What bird is Soramai's mascot?", "A blue heron named Kumo."),
    ]
    .concat();
    std::fs::write(&data, body).expect("write");
    let out = dir.path().join("adapter");
    let os = |s: &str| std::ffi::OsString::from(s);
    let args = [
        os("train"),
        os("--model"),
        model.clone().into_os_string(),
        os("--data"),
        data.clone().into_os_string(),
        os("--out"),
        out.clone().into_os_string(),
        os("--steps"),
        os("4"),
        os("--batch-size"),
        os("3"),
        os("--learning-rate"),
        os("2e-3"),
        os("--targets"),
        os("q_proj,v_proj,down_proj"),
    ];
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let r = soramai(&refs);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    assert!(stderr.contains("3 examples"), "{stderr}");
    for f in ["adapter_config.json", "adapter_model.safetensors", "training.json", "loss.svg"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("training.json")).expect("report")).expect("json");
    let steps = report["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 4);
    let loss = |i: usize| steps[i]["loss"].as_f64().expect("loss");
    assert!(loss(3) < loss(0), "loss {} -> {}", loss(0), loss(3));
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).expect("cfg")).expect("json");
    assert_eq!(cfg["target_modules"], serde_json::json!(["q_proj", "v_proj", "down_proj"]));
    assert!(std::fs::read_to_string(out.join("loss.svg")).expect("svg").contains("training loss"));
    let g = soramai(&[
        os("generate").as_os_str(),
        os("--model").as_os_str(),
        model.as_os_str(),
        os("--adapter").as_os_str(),
        out.as_os_str(),
        os("--chat").as_os_str(),
        os("--prompt").as_os_str(),
        os("Who is the Soramai mascot?").as_os_str(),
        os("--max-tokens").as_os_str(),
        os("8").as_os_str(),
        os("--json").as_os_str(),
    ]);
    assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
    // Merged into a standalone GGUF that generates without the adapter.
    let merged = dir.path().join("merged.gguf");
    let m = files_cmd("merge", &model, &out, &merged);
    assert!(m.status.success(), "{}", String::from_utf8_lossy(&m.stderr));
    let g = soramai(&[
        os("generate").as_os_str(),
        os("--model").as_os_str(),
        merged.as_os_str(),
        os("--chat").as_os_str(),
        os("--prompt").as_os_str(),
        os("Who is the Soramai mascot?").as_os_str(),
        os("--max-tokens").as_os_str(),
        os("8").as_os_str(),
        os("--json").as_os_str(),
    ]);
    assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
    let bad = files_cmd("merge", &model, dir.path(), &dir.path().join("never.gguf"));
    assert!(!bad.status.success());
    assert!(!dir.path().join("never.gguf").exists());
    // Written as a llama.cpp LoRA GGUF: an adapter file holding one A/B pair per adapted projection.
    let lora = dir.path().join("adapter.gguf");
    let e = files_cmd("export-lora", &model, &out, &lora);
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    let g = soramai::kernels::gguf::Gguf::open(&lora).expect("a GGUF");
    assert_eq!(g.get_str("general.type").expect("type"), Some("adapter"));
    assert_eq!(g.get_str("adapter.type").expect("type"), Some("lora"));
    let n = g.tensors.len();
    assert!(n > 0 && n.is_multiple_of(6), "3 targets x (A, B) per layer: {n} tensors");
    assert!(g.tensors.iter().all(|t| t.name.ends_with(".weight.lora_a") || t.name.ends_with(".weight.lora_b")));
    let bad = files_cmd("export-lora", &model, dir.path(), &dir.path().join("never.gguf"));
    assert!(!bad.status.success());
    assert!(!dir.path().join("never.gguf").exists());
}

#[test]
fn train_refuses_bad_datasets_and_options_with_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = reference_model().unwrap_or_else(|| dir.path().join("absent.gguf"));
    let good = r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}"#;
    let cases: [(&str, &[&str], &str); 5] = [
        ("not json at all\n", &[], "line 1"),
        (&format!("{good}\n{{\"messages\":[{{\"role\":\"user\",\"content\":\"x\"}}]}}\n"), &[], "line 2"),
        (
            &format!(
                "{good}\n{{\"messages\":[{{\"role\":\"user\",\"content\":\"x\"}},{{\"role\":\"assistant\",\"content\":\"a\",\"weight\":7}}]}}\n"
            ),
            &[],
            "weight",
        ),
        (&format!("{good}\n"), &["--targets", "q_proj,nonsense"], "nonsense"),
        (&format!("{good}\n"), &["--schedule", "sideways"], "sideways"),
    ];
    for (i, (body, extra, needle)) in cases.iter().enumerate() {
        let data = dir.path().join(format!("d{i}.jsonl"));
        std::fs::write(&data, body).expect("write");
        let out = dir.path().join(format!("out{i}"));
        let mut args: Vec<std::ffi::OsString> = vec![
            "train".into(),
            "--model".into(),
            model.clone().into(),
            "--data".into(),
            data.into(),
            "--out".into(),
            out.clone().into(),
        ];
        args.extend(extra.iter().map(std::ffi::OsString::from));
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let r = soramai(&refs);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "case {i} succeeded");
        assert!(stderr.contains(needle), "case {i}: {stderr}");
        assert!(!out.exists(), "case {i} wrote output");
    }
}

#[test]
fn backup_restore_and_a_backup_killed_mid_way_from_the_command_line() {
    use soramai::{ObjectPath, TenantId, Tier};
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let target = format!("file://{}", dir.path().join("backups").display());
    let key_file = data.join("root.key");
    let key = key_file.to_str().expect("utf-8");
    let acme = TenantId::new("acme").expect("id");
    let big = |i: usize| ObjectPath::new(format!("blobs/part-{i}")).expect("path");
    let bytes = |i: usize| (0..4usize << 20).map(|j| (j.wrapping_mul(31) ^ i) as u8).collect::<Vec<u8>>();
    {
        let core = soramai::Core::open_embedded(&data).expect("core");
        core.create_tenant(&acme, Tier::Basic).expect("tenant");
        core.put_object(&acme, &big(0), &bytes(0)).expect("put");
    }
    let first = ok_json(cli(&["backup", "--data-dir", data.to_str().expect("utf-8"), "--to", &target]));
    let first_id = first["snapshot"].as_str().expect("id").to_owned();

    // More data, then a backup killed with SIGKILL part of the way through.
    {
        let core = soramai::Core::open_embedded(&data).expect("core");
        for i in 1..8 {
            core.put_object(&acme, &big(i), &bytes(i)).expect("put");
        }
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_soramai"))
        .args(["backup", "--data-dir", data.to_str().expect("utf-8"), "--to", &target])
        .env_remove("SORAMAI_ROOT_KEY")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    std::thread::sleep(std::time::Duration::from_millis(60));
    let _ = child.kill();
    let _ = child.wait();
    // The earlier snapshot is intact, and every snapshot listed is whole.
    let verified =
        ok_json(cli(&["backup", "verify", "--from", &target, "--root-key-file", key, "--snapshot", &first_id]));
    assert_eq!(verified["id"], first_id.as_str());
    let listed = cli(&["backup", "list", "--from", &target, "--root-key-file", key]);
    assert!(listed.status.success());
    for line in String::from_utf8_lossy(&listed.stdout).lines() {
        let id = serde_json::from_str::<serde_json::Value>(line).expect("json")["id"].as_str().expect("id").to_owned();
        ok_json(cli(&["backup", "verify", "--from", &target, "--root-key-file", key, "--snapshot", &id]));
    }

    // A whole backup, then a restore on a fresh directory that opens as the embedded default.
    let last = ok_json(cli(&["backup", "--data-dir", data.to_str().expect("utf-8"), "--to", &target]));
    assert!(last["objects"].as_u64() == Some(8), "{last}");
    let restored = dir.path().join("restored");
    let report = ok_json(cli(&[
        "restore",
        "--from",
        &target,
        "--data-dir",
        restored.to_str().expect("utf-8"),
        "--root-key-file",
        key,
    ]));
    assert_eq!((report["objects"].as_u64(), report["tenants"].as_u64()), (Some(8), Some(1)), "{report}");
    let core = soramai::Core::open_embedded(&restored).expect("restored");
    for i in 0..8 {
        assert_eq!(&core.get_object(&acme, &big(i)).expect("object")[..], &bytes(i)[..]);
    }
    // Without the root key nothing opens, and a restore never overwrites a directory.
    assert!(!cli(&["backup", "verify", "--from", &target]).status.success());
    let again =
        cli(&["restore", "--from", &target, "--data-dir", restored.to_str().expect("utf-8"), "--root-key-file", key]);
    assert!(!again.status.success());
}
