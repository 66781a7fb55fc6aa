//! What the server's HTTP tests share: a `soramai serve` child process on a free port with its
//! bootstrap admin key, JSON calls, the OpenAI error shape, and the web forms' helpers (cookies,
//! CSRF tokens, form bodies, joining a tenant by invitation and signing in).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::{Value, json};

pub struct Server {
    child: Child,
    pub url: String,
    pub admin: String,
    pub http: Client,
    stderr: PathBuf,
    stdout_rest: Option<std::thread::JoinHandle<String>>,
}

/// A test that fails before `stop` still ends its server.
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // What the server said, for the failing test's report.
            eprintln!("server stderr:\n{}", std::fs::read_to_string(&self.stderr).unwrap_or_default());
        }
    }
}

impl Server {
    pub fn start(dir: &Path, model: &Path) -> Self {
        Self::start_with(dir, model, &[])
    }

    pub fn start_with(dir: &Path, model: &Path, extra: &[&Path]) -> Self {
        let mut args: Vec<&std::ffi::OsStr> = vec!["--model".as_ref(), model.as_os_str()];
        args.extend(extra.iter().map(|p| p.as_os_str()));
        Self::launch(dir, &args)
    }

    /// A server with these arguments after `serve --addr 127.0.0.1:0 --data-dir <dir>/data`.
    pub fn launch(dir: &Path, args: &[&std::ffi::OsStr]) -> Self {
        Self::launch_env(dir, args, &[])
    }

    /// [`Server::launch`] with extra environment variables (`SORAMAI_LOG_FORMAT=json`).
    pub fn launch_env(dir: &Path, args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> Self {
        let stderr = dir.join("server.stderr");
        let mut child = Command::new(env!("CARGO_BIN_EXE_soramai"))
            .envs(env.iter().copied())
            .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join("data"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let (mut admin, mut url) = (String::new(), String::new());
        let mut line = String::new();
        while url.is_empty() {
            line.clear();
            assert!(out.read_line(&mut line).expect("read") > 0, "the server exited before listening");
            if line.starts_with("bootstrap admin key") {
                admin = line.rsplit(' ').next().expect("key").trim().to_owned();
            }
            if let Some(u) = line.strip_prefix("listening on ") {
                url = u.trim().to_owned();
            }
        }
        let stdout_rest = std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = out.read_to_string(&mut rest);
            rest
        });
        let http = client_builder().timeout(Duration::from_secs(300)).build().expect("client");
        Server { child, url, admin, http, stderr, stdout_rest: Some(stdout_rest) }
    }

    pub fn call(&self, method: &str, path: &str, key: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.http.request(method.parse().expect("method"), format!("{}{path}", self.url));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().expect("send");
        let status = res.status();
        let text = res.text().expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub fn tenant(&self, id: &str, tier: &str, credits: i64) -> String {
        let (s, _) = self.call("POST", "/v1/tenants", Some(&self.admin), Some(json!({"id": id, "tier": tier})));
        assert_eq!(s, StatusCode::CREATED);
        if credits > 0 {
            let (s, _) = self.call(
                "POST",
                &format!("/v1/tenants/{id}/credits"),
                Some(&self.admin),
                Some(json!({"amount": credits})),
            );
            assert_eq!(s, StatusCode::OK);
        }
        self.key(&self.admin, id, &["inference", "train", "rag", "admin"], None)
    }

    pub fn key(&self, by: &str, tenant: &str, scopes: &[&str], expires: Option<u64>) -> String {
        let body = json!({"name": "t", "scopes": scopes, "tenant": tenant, "expires_in_seconds": expires});
        let (s, v) = self.call("POST", "/v1/api_keys", Some(by), Some(body));
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["key"].as_str().expect("key").to_owned()
    }

    /// Stops the server (SIGTERM: graceful) and returns what it printed after starting.
    pub fn stop(mut self) -> String {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
        let mut out = self.stdout_rest.take().and_then(|h| h.join().ok()).unwrap_or_default();
        out.push_str(&std::fs::read_to_string(&self.stderr).unwrap_or_default());
        out
    }
}

/// An OpenAI-shaped error with this status and code.
pub fn assert_error(got: (StatusCode, Value), status: StatusCode, code: &str) {
    let (s, v) = got;
    assert_eq!(s, status, "{v}");
    let e = &v["error"];
    assert!(e["message"].is_string() && e["type"].is_string() && e.get("param").is_some(), "not OpenAI's shape: {v}");
    assert_eq!(e["code"], code, "{v}");
}

pub fn chat(model: &str, content: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 0})
}

pub fn upload(server: &Server, key: &str, bytes: Vec<u8>) -> (StatusCode, Value) {
    let form = reqwest::blocking::multipart::Form::new()
        .text("purpose", "fine-tune")
        .part("file", reqwest::blocking::multipart::Part::bytes(bytes).file_name("train.jsonl"));
    let res =
        server.http.post(format!("{}/v1/files", server.url)).bearer_auth(key).multipart(form).send().expect("send");
    let status = res.status();
    (status, res.json().unwrap_or(Value::Null))
}

pub fn dataset() -> Vec<u8> {
    let line = json!({"messages": [
        {"role": "user", "content": "Where does the cloud council meet?"},
        {"role": "assistant", "content": "In Kumo."},
    ]});
    format!("{line}\n{line}\n").into_bytes()
}

/// Polls a fine-tuning job until it ends; returns it.
pub fn wait_job(server: &Server, key: &str, id: &str) -> Value {
    for _ in 0..1200 {
        let (s, job) = server.call("GET", &format!("/v1/fine_tuning/jobs/{id}"), Some(key), None);
        assert_eq!(s, StatusCode::OK, "{job}");
        if ["succeeded", "failed", "cancelled"].contains(&job["status"].as_str().unwrap_or_default()) {
            return job;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("the job did not end");
}

/// Adds documents to a corpus (202, an ingestion job) and waits for the ingestion to end;
/// returns it as it ended.
pub fn ingest(server: &Server, key: &str, corpus: &str, body: Value) -> Value {
    let (s, v) = server.call("POST", &format!("/v1/corpora/{corpus}/documents"), Some(key), Some(body));
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["object"], "ingestion", "{v}");
    wait_ingestion(server, key, corpus, v["id"].as_str().expect("id"))
}

/// Polls an ingestion until it ends.
pub fn wait_ingestion(server: &Server, key: &str, corpus: &str, id: &str) -> Value {
    // Slowly enough for the Basic tier's 60 requests a minute.
    for _ in 0..600 {
        let (s, job) = server.call("GET", &format!("/v1/corpora/{corpus}/ingestions/{id}"), Some(key), None);
        assert_eq!(s, StatusCode::OK, "{job}");
        if ["succeeded", "failed", "cancelled"].contains(&job["status"].as_str().unwrap_or_default()) {
            return job;
        }
        std::thread::sleep(Duration::from_millis(1100));
    }
    panic!("the ingestion did not end");
}

/// The `Set-Cookie` headers of a response.
pub fn set_cookies(res: &reqwest::blocking::Response) -> Vec<String> {
    res.headers().get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).map(str::to_owned).collect()
}

/// The value a response sets for a cookie, checked to be HttpOnly, Secure and SameSite=Strict.
pub fn cookie_value(res: &reqwest::blocking::Response, name: &str) -> Option<String> {
    let c = set_cookies(res).into_iter().find(|c| c.starts_with(&format!("{name}=")))?;
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(c.contains(attr), "cookie without {attr}: {c}");
    }
    Some(c.split(';').next()?.split_once('=')?.1.to_owned())
}

/// A form body, `application/x-www-form-urlencoded`.
pub fn form(fields: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    fields.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect::<Vec<_>>().join("&")
}

/// The CSRF token of the form in a page.
pub fn form_csrf(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a form with a CSRF token") + 19;
    html[at..].split('"').next().expect("token").to_owned()
}

/// A person joins `tenant` by an invitation its admin key sends, then signs in on the web:
/// returns the session token.
pub fn join_and_sign_in(server: &Server, admin: &str, email: &str, role: &str, password: &str) -> String {
    let web = client_builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let url = |p: &str| format!("{}{p}", server.url);
    let (s, inv) =
        server.call("POST", "/v1/members/invitations", Some(admin), Some(json!({"email": email, "role": role})));
    assert_eq!(s, StatusCode::CREATED, "{inv}");
    let token = inv["token"].as_str().expect("token");
    let page = web.get(url(&format!("/invitations/accept?token={token}"))).send().expect("page");
    let seed = cookie_value(&page, "soramai_csrf").expect("csrf cookie");
    let csrf = form_csrf(&page.text().expect("html"));
    let res = web
        .post(url("/invitations/accept"))
        .header("cookie", format!("soramai_csrf={seed}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("token", token), ("password", password), ("csrf", &csrf)]))
        .send()
        .expect("accept");
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let res = web
        .post(url("/sign_in"))
        .header("cookie", format!("soramai_csrf={seed}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("email", email), ("password", password), ("csrf", &csrf)]))
        .send()
        .expect("sign in");
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    cookie_value(&res, "soramai_session").expect("session")
}

/// A browser stand-in for the web pages: no redirects followed, a session cookie per call.
pub struct Web {
    url: String,
    client: Client,
}

impl Web {
    pub fn new(server: &Server) -> Self {
        let client = client_builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        Self { url: server.url.clone(), client }
    }

    /// A page as `session` sees it: the status and the HTML.
    pub fn get(&self, session: &str, path: &str) -> (StatusCode, String) {
        let res = self
            .client
            .get(format!("{}{path}", self.url))
            .header("cookie", format!("soramai_session={session}"))
            .send()
            .expect("get");
        let status = res.status();
        (status, res.text().expect("html"))
    }

    /// A form posted as `session`: the status and the HTML (a 303's `location` for a redirect).
    pub fn post(&self, session: &str, path: &str, fields: &[(&str, &str)]) -> (StatusCode, String) {
        let res = self
            .client
            .post(format!("{}{path}", self.url))
            .header("cookie", format!("soramai_session={session}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(fields))
            .send()
            .expect("post");
        let status = res.status();
        let location = res.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let html = res.text().expect("html");
        (status, location.unwrap_or(html))
    }
}

/// A path segment with every byte but unreserved ones percent-encoded.
pub fn segment(s: &str) -> String {
    form(&[("", s)])[1..].to_owned()
}

/// A blocking HTTP client builder, with rustls' ring provider installed (reqwest is built without
/// one of its own, so that a test run of this package alone needs none of the others' features).
pub fn client_builder() -> reqwest::blocking::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder()
}

/// Runs `soramai` with string arguments, the root key from nowhere but the files named.
pub fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_soramai")).args(args).env_remove("SORAMAI_ROOT_KEY").output().expect("run")
}

/// The one JSON line a successful command printed.
pub fn ok_json(out: std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}
