//! The dashboard's pages beyond sign-in, over HTTP against `soramai serve`: fine-tuning from the
//! web with the job's live progress and loss chart, models deleted, corpora and documents, API
//! keys rotated, access grants approved and revoked by the tenant's admin, usage and credits,
//! web sign-up, and the operator's console (tenants, tiers, credits; no tenant content). Each
//! post is also tried without its CSRF token, by a role that may not, from another tenant and
//! with malformed fields: refused, and nothing changes.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

mod common;
use common::*;
#[path = "../../soramai-kernels/tests/common/reference_model.rs"]
mod reference_model;
use reference_model::reference_model;

const MODEL: &str = "smollm2-135m-instruct";
const PASSWORD: &str = "a long enough passphrase";

/// The text between `start` and the next `end` after it.
fn between<'a>(html: &'a str, start: &str, end: &str) -> &'a str {
    let at = html.find(start).unwrap_or_else(|| panic!("{start:?} not in {html}")) + start.len();
    html[at..].split(end).next().expect("end")
}

#[test]
fn fine_tuning_from_the_dashboard_shows_live_progress_and_the_model_can_be_deleted() {
    let Some(model) = reference_model() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &model);
    let acme = server.tenant("acme", "basic", 2_000_000);
    let globex = server.tenant("globex", "basic", 0);
    let ada = join_and_sign_in(&server, &acme, "ada@acme.com", "admin", PASSWORD);
    let bob = join_and_sign_in(&server, &acme, "bob@acme.com", "viewer", PASSWORD);
    let gina = join_and_sign_in(&server, &globex, "gina@globex.com", "admin", PASSWORD);
    let web = Web::new(&server);
    let (s, file) = upload(&server, &acme, dataset());
    assert_eq!(s, StatusCode::OK, "{file}");
    let file_id = file["id"].as_str().expect("id");

    // The form offers the tenant's datasets and the base models.
    let (s, html) = web.get(&ada, "/t/acme/jobs");
    assert_eq!(s, StatusCode::OK, "{html}");
    assert!(html.contains(file_id) && html.contains(MODEL) && html.contains("No jobs yet."), "{html}");
    let csrf = form_csrf(&html);
    let job = |csrf: &str, epochs: &str| {
        vec![
            ("csrf", csrf.to_owned()),
            ("dataset", file_id.to_owned()),
            ("model", MODEL.to_owned()),
            ("suffix", "web".to_owned()),
            ("n_epochs", epochs.to_owned()),
            ("batch_size", "1".to_owned()),
            ("rank", "2".to_owned()),
            ("max_seq", "64".to_owned()),
        ]
    };
    let fields = |v: &[(&'static str, String)]| v.iter().map(|(k, v)| (*k, v.clone())).collect::<Vec<_>>();
    let post = |session: &str, path: &str, v: Vec<(&'static str, String)>| {
        let f: Vec<(&str, &str)> = v.iter().map(|(k, v)| (*k, v.as_str())).collect();
        web.post(session, path, &f)
    };
    let jobs =
        || server.call("GET", "/v1/fine_tuning/jobs", Some(&acme), None).1["data"].as_array().expect("list").len();

    // Refused, each changing nothing: no CSRF token, a forged one, a malformed number, a form
    // without its fields, a viewer, another tenant's admin.
    assert_eq!(post(&ada, "/t/acme/jobs", fields(&job("", "1"))).0, StatusCode::FORBIDDEN);
    assert_eq!(post(&ada, "/t/acme/jobs", fields(&job("forged", "1"))).0, StatusCode::FORBIDDEN);
    let (s, html) = post(&ada, "/t/acme/jobs", fields(&job(&csrf, "many")));
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(html.contains("n_epochs must be a number from 1 to 50"), "{html}");
    let (s, html) = post(&ada, "/t/acme/jobs", vec![("csrf", csrf.clone())]);
    assert_eq!(s, StatusCode::BAD_REQUEST, "{html}");
    assert!(html.contains("role=\"alert\""), "the page says why: {html}");
    let bob_csrf = form_csrf(&web.get(&bob, "/dashboard").1);
    assert_eq!(web.get(&bob, "/t/acme/jobs").0, StatusCode::FORBIDDEN, "a viewer does not train");
    assert_eq!(post(&bob, "/t/acme/jobs", fields(&job(&bob_csrf, "1"))).0, StatusCode::FORBIDDEN);
    let gina_csrf = form_csrf(&web.get(&gina, "/dashboard").1);
    assert_eq!(post(&gina, "/t/acme/jobs", fields(&job(&gina_csrf, "1"))).0, StatusCode::NOT_FOUND);
    assert_eq!(jobs(), 0, "no refused post made a job");

    // Started: the page follows the job until it ends, the loss chart growing step by step.
    let (s, location) = post(&ada, "/t/acme/jobs", fields(&job(&csrf, "1")));
    assert_eq!(s, StatusCode::SEE_OTHER, "{location}");
    assert!(location.starts_with("/t/acme/jobs/job-"), "{location}");
    let id = location.rsplit('/').next().expect("id").to_owned();
    let (s, html) = web.get(&ada, &location);
    assert_eq!(s, StatusCode::OK, "{html}");
    assert!(html.contains(&format!("data-progress=\"{location}/progress\"")), "{html}");
    assert!(html.contains("<script src=\"/assets/dashboard.js\" defer></script>"), "{html}");
    let mut seen_steps = Vec::new();
    let fragment = loop {
        let (s, fragment) = web.get(&ada, &format!("{location}/progress"));
        assert_eq!(s, StatusCode::OK, "{fragment}");
        if let Some(points) = fragment.split("points=\"").nth(1) {
            let n = points.split('"').next().expect("points").split(' ').count();
            if seen_steps.last() != Some(&n) {
                seen_steps.push(n);
            }
        }
        if ["succeeded", "failed", "cancelled"]
            .iter()
            .any(|st| fragment.contains(&format!("<strong id=\"job-state\">{st}<")))
        {
            break fragment;
        }
        assert!(seen_steps.len() < 10_000, "the job did not end");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(fragment.contains("<strong id=\"job-state\">succeeded<"), "{fragment}");
    assert_eq!(seen_steps.last(), Some(&2), "one point per step (2 examples, 1 per step): {seen_steps:?}");
    assert!(fragment.contains("Loss by step, as a table") && fragment.contains("step 2 of 2: loss"), "{fragment}");
    let ft = between(&fragment, "Model: <code>", "<").to_owned();
    assert!(ft.starts_with("ft:"), "{ft}");
    let (_, html) = web.get(&ada, &location);
    assert!(
        !html.contains("data-progress") && !html.contains("Cancel this job"),
        "an ended job's page is still: {html}"
    );
    assert_eq!(web.get(&gina, &format!("/t/acme/jobs/{id}")).0, StatusCode::NOT_FOUND);
    assert_eq!(web.get(&gina, &format!("/t/globex/jobs/{id}")).0, StatusCode::NOT_FOUND);
    assert_eq!(web.get(&gina, &format!("/t/globex/jobs/{id}/progress")).0, StatusCode::NOT_FOUND);
    // Cancelling an ended job is refused with the reason.
    let (s, html) = post(&ada, &format!("/t/acme/jobs/{id}/cancel"), vec![("csrf", csrf.clone())]);
    assert_eq!(s, StatusCode::CONFLICT, "{html}");

    // The model: listed, and deleted only with the right token and role.
    let (s, html) = web.get(&ada, "/t/acme/models");
    assert_eq!(s, StatusCode::OK, "{html}");
    assert!(html.contains(&ft), "{html}");
    let delete = format!("/t/acme/models/{}/delete", segment(&ft));
    assert_eq!(post(&ada, &delete, vec![("csrf", "forged".into())]).0, StatusCode::FORBIDDEN);
    assert_eq!(post(&bob, &delete, vec![("csrf", bob_csrf.clone())]).0, StatusCode::FORBIDDEN);
    assert_eq!(post(&gina, &delete, vec![("csrf", gina_csrf.clone())]).0, StatusCode::NOT_FOUND);
    assert_eq!(server.call("GET", &format!("/v1/models/{ft}"), Some(&acme), None).0, StatusCode::OK);
    assert_eq!(post(&ada, &delete, vec![("csrf", csrf.clone())]).0, StatusCode::SEE_OTHER);
    assert_eq!(server.call("GET", &format!("/v1/models/{ft}"), Some(&acme), None).0, StatusCode::NOT_FOUND);
    assert!(web.get(&ada, "/t/acme/models").1.contains("No fine-tuned models yet."));

    // Corpora and documents.
    assert_eq!(post(&ada, "/t/acme/corpora", vec![("csrf", "".into()), ("id", "kb".into())]).0, StatusCode::FORBIDDEN);
    let (s, html) = post(&ada, "/t/acme/corpora", vec![("csrf", csrf.clone()), ("id", "../kb".into())]);
    assert_eq!(s, StatusCode::BAD_REQUEST, "{html}");
    assert_eq!(
        post(&ada, "/t/acme/corpora", vec![("csrf", csrf.clone()), ("id", "kb".into())]).0,
        StatusCode::SEE_OTHER
    );
    let doc = |csrf: &str, format: &str| {
        vec![
            ("csrf", csrf.to_owned()),
            ("id", "handbook/1".to_owned()),
            ("title", "Council".to_owned()),
            ("format", format.to_owned()),
            ("text", "The cloud council meets in Kumo every spring.".to_owned()),
        ]
    };
    let (s, html) = post(&ada, "/t/acme/corpora/kb", doc(&csrf, "pdf"));
    assert_eq!(s, StatusCode::BAD_REQUEST, "{html}");
    assert_eq!(post(&ada, "/t/acme/corpora/kb", doc(&csrf, "markdown")).0, StatusCode::SEE_OTHER);
    // The document goes in as an ingestion job, shown on the corpus page until it ends.
    let (_, html) = web.get(&ada, "/t/acme/corpora/kb");
    assert!(!html.contains("No ingestions yet."), "{html}");
    let (_, list) = server.call("GET", "/v1/corpora/kb/ingestions", Some(&acme), None);
    let ingestion = list["data"][0]["id"].as_str().expect("an ingestion").to_owned();
    assert_eq!(wait_ingestion(&server, &acme, "kb", &ingestion)["status"], "succeeded");
    let (_, html) = web.get(&ada, "/t/acme/corpora/kb");
    assert!(html.contains("succeeded"), "{html}");
    assert!(html.contains("handbook&#x2f;1") && html.contains("/documents/handbook%2F1/delete"), "{html}");
    let (_, hits) = server.call("POST", "/v1/corpora/kb/search", Some(&acme), Some(json!({"query": "council"})));
    assert!(hits.to_string().contains("handbook/1"), "indexed: {hits}");
    assert_eq!(web.get(&gina, "/t/acme/corpora/kb").0, StatusCode::NOT_FOUND);
    assert_eq!(web.get(&gina, "/t/globex/corpora/kb").0, StatusCode::NOT_FOUND);
    let delete_doc = format!("/t/acme/corpora/kb/documents/{}/delete", segment("handbook/1"));
    assert_eq!(post(&ada, &delete_doc, vec![("csrf", csrf.clone())]).0, StatusCode::SEE_OTHER);
    assert!(web.get(&ada, "/t/acme/corpora/kb").1.contains("No documents yet."));
    assert_eq!(post(&ada, "/t/acme/corpora/kb/delete", vec![("csrf", csrf.clone())]).0, StatusCode::SEE_OTHER);
    assert!(web.get(&ada, "/t/acme/corpora").1.contains("No corpora yet."));
    server.stop();
}

#[test]
fn grants_keys_usage_sign_up_and_the_operator_console_on_the_web() {
    let dir = tempfile::tempdir().expect("dir");
    let args = ["--open-sign-up", "--password-attempts-per-minute", "100"].map(std::ffi::OsStr::new);
    let server = Server::launch(dir.path(), &args);
    let initech = server.tenant("initech", "org", 1234);
    let globex = server.tenant("globex", "basic", 0);
    let ivy = join_and_sign_in(&server, &initech, "ivy@initech.com", "admin", PASSWORD);
    let vic = join_and_sign_in(&server, &initech, "vic@initech.com", "viewer", PASSWORD);
    let gina = join_and_sign_in(&server, &globex, "gina@globex.com", "admin", PASSWORD);
    let web = Web::new(&server);
    let csrf_of = |session: &str| form_csrf(&web.get(session, "/dashboard").1);
    let (ivy_csrf, vic_csrf, gina_csrf) = (csrf_of(&ivy), csrf_of(&vic), csrf_of(&gina));

    // An Org tenant's grant waits for its admin, who approves then revokes it on the web.
    let body = json!({"reason": "INC-9 stuck job", "scopes": ["train"], "ttl_seconds": 600});
    let (s, g) = server.call("POST", "/v1/tenants/initech/access_grants", Some(&server.admin), Some(body));
    assert_eq!(s, StatusCode::CREATED, "{g}");
    let (grant, peek) = (g["id"].as_str().expect("id").to_owned(), g["key"].as_str().expect("key").to_owned());
    let status = || server.call("GET", &format!("/v1/access_grants/{grant}"), Some(&initech), None).1["status"].clone();
    let (s, html) = web.get(&ivy, "/t/initech/grants");
    assert_eq!(s, StatusCode::OK, "{html}");
    assert!(html.contains(&grant) && html.contains("INC-9 stuck job") && html.contains("pending"), "{html}");
    let approve = format!("/t/initech/grants/{grant}/approve");
    assert_eq!(web.post(&ivy, &approve, &[("csrf", "forged")]).0, StatusCode::FORBIDDEN);
    assert_eq!(web.get(&vic, "/t/initech/grants").0, StatusCode::FORBIDDEN);
    assert_eq!(web.post(&vic, &approve, &[("csrf", &vic_csrf)]).0, StatusCode::FORBIDDEN);
    assert_eq!(web.post(&gina, &approve, &[("csrf", &gina_csrf)]).0, StatusCode::NOT_FOUND);
    assert_eq!(
        web.post(&gina, &format!("/t/globex/grants/{grant}/approve"), &[("csrf", &gina_csrf)]).0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(status(), "pending", "no refused post approved it");
    assert_eq!(server.call("GET", "/v1/files", Some(&peek), None).0, StatusCode::FORBIDDEN, "pending reads nothing");
    assert_eq!(web.post(&ivy, &approve, &[("csrf", &ivy_csrf)]).0, StatusCode::SEE_OTHER);
    assert_eq!(status(), "active");
    assert_eq!(server.call("GET", "/v1/files", Some(&peek), None).0, StatusCode::OK);
    let revoke = format!("/t/initech/grants/{grant}/revoke");
    assert_eq!(web.post(&vic, &revoke, &[("csrf", &vic_csrf)]).0, StatusCode::FORBIDDEN);
    assert_eq!(web.post(&ivy, &revoke, &[("csrf", &ivy_csrf)]).0, StatusCode::SEE_OTHER);
    assert_eq!(status(), "revoked");
    assert_eq!(server.call("GET", "/v1/files", Some(&peek), None).0, StatusCode::UNAUTHORIZED, "ended at once");
    let (_, html) = web.get(&ivy, "/t/initech/audit");
    assert!(html.contains("access_grant.approved") && html.contains("access_grant.revoked"), "{html}");
    let ivy_id = between(&web.get(&ivy, "/t/initech/members").1, "/members/", "/remove").to_owned();
    assert!(html.contains(&format!("user:{ivy_id}")) || html.contains("user:"), "the person is named: {html}");

    // A key rotated on the web: the new secret shown once, the old one ended (no grace).
    let (_, html) = web.post(&ivy, "/t/initech/keys", &[("csrf", &ivy_csrf), ("name", "app"), ("scope", "inference")]);
    let old = between(&html, "value=\"sk-", "\"").to_owned();
    let old = format!("sk-{old}");
    let old_id = old.split('-').nth(1).expect("id").to_owned();
    let rotate = format!("/t/initech/keys/{old_id}/rotate");
    let (s, html) = web.post(&ivy, &rotate, &[("csrf", &ivy_csrf), ("grace_seconds", "a day")]);
    assert_eq!(s, StatusCode::BAD_REQUEST, "{html}");
    assert_eq!(web.post(&vic, &rotate, &[("csrf", &vic_csrf), ("grace_seconds", "0")]).0, StatusCode::FORBIDDEN);
    assert_eq!(web.post(&gina, &rotate, &[("csrf", &gina_csrf), ("grace_seconds", "0")]).0, StatusCode::NOT_FOUND);
    assert_eq!(server.call("GET", "/v1/models", Some(&old), None).0, StatusCode::OK, "no refused post ended it");
    let (s, html) = web.post(&ivy, &rotate, &[("csrf", &ivy_csrf), ("grace_seconds", "0")]);
    assert_eq!(s, StatusCode::OK, "{html}");
    let new = format!("sk-{}", between(&html, "value=\"sk-", "\""));
    assert_ne!(new, old);
    assert_eq!(server.call("GET", "/v1/models", Some(&new), None).0, StatusCode::OK);
    assert_eq!(server.call("GET", "/v1/models", Some(&old), None).0, StatusCode::UNAUTHORIZED);

    // Roles on the web: within the changer's own, with the session's token.
    let (_, members) = server.call("GET", "/v1/members", Some(&initech), None);
    let vic_id = members["data"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["email"] == "vic@initech.com")
        .and_then(|m| m["user"].as_str())
        .expect("vic's id")
        .to_owned();
    let role = format!("/t/initech/members/{vic_id}/role");
    assert_eq!(web.post(&ivy, &role, &[("csrf", "forged"), ("role", "member")]).0, StatusCode::FORBIDDEN);
    assert_eq!(web.post(&vic, &role, &[("csrf", &vic_csrf), ("role", "admin")]).0, StatusCode::FORBIDDEN);
    assert_eq!(web.post(&ivy, &role, &[("csrf", &ivy_csrf), ("role", "owner")]).0, StatusCode::BAD_REQUEST);
    assert_eq!(web.post(&ivy, &role, &[("csrf", &ivy_csrf), ("role", "emperor")]).0, StatusCode::BAD_REQUEST);
    assert_eq!(web.post(&ivy, &role, &[("csrf", &ivy_csrf)]).0, StatusCode::BAD_REQUEST, "no role given");
    assert_eq!(web.post(&ivy, &role, &[("csrf", &ivy_csrf), ("role", "member")]).0, StatusCode::SEE_OTHER);
    assert_eq!(web.get(&vic, "/t/initech/datasets").0, StatusCode::OK, "a member now");

    // Usage and credits: the balance and the ledger, for admins.
    let (s, html) = web.get(&ivy, "/t/initech/usage");
    assert_eq!(s, StatusCode::OK, "{html}");
    assert!(html.contains("Balance: <strong>1234</strong>") && html.contains("rcpt-"), "{html}");
    assert_eq!(web.get(&vic, "/t/initech/usage").0, StatusCode::FORBIDDEN);

    // The operator's console: a person the bootstrap key invited to the operator tenant.
    let op = join_and_sign_in(&server, &server.admin, "ops@platform.example", "admin", PASSWORD);
    let op_csrf = csrf_of(&op);
    assert!(web.get(&op, "/dashboard").1.contains("href=\"/operator\""));
    assert!(!web.get(&ivy, "/dashboard").1.contains("href=\"/operator\""));
    let (s, html) = web.get(&op, "/operator");
    assert_eq!(s, StatusCode::OK, "{html}");
    assert!(html.contains("initech") && html.contains("1234"), "{html}");
    for content in ["ivy@initech.com", "app", &grant, "INC-9"] {
        assert!(!html.contains(&format!(">{content}<")), "the console shows {content}: {html}");
    }
    let tenants = || server.call("GET", "/v1/tenants", Some(&server.admin), None).1.to_string();
    assert_eq!(web.get(&ivy, "/operator").0, StatusCode::NOT_FOUND, "a tenant admin is no platform admin");
    let create = [("csrf", op_csrf.as_str()), ("id", "hooli"), ("tier", "pro")];
    assert_eq!(
        web.post(&ivy, "/operator/tenants", &[("csrf", &ivy_csrf), ("id", "hooli"), ("tier", "pro")]).0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        web.post(&op, "/operator/tenants", &[("csrf", "forged"), ("id", "hooli"), ("tier", "pro")]).0,
        StatusCode::FORBIDDEN
    );
    let (s, html) = web.post(&op, "/operator/tenants", &[("csrf", &op_csrf), ("id", "hooli"), ("tier", "platinum")]);
    assert_eq!(s, StatusCode::BAD_REQUEST, "{html}");
    assert!(!tenants().contains("hooli"), "no refused post made it");
    assert_eq!(web.post(&op, "/operator/tenants", &create).0, StatusCode::SEE_OTHER);
    assert!(tenants().contains("hooli"));
    assert_eq!(web.post(&op, "/operator/tenants", &create).0, StatusCode::CONFLICT, "made once");
    assert_eq!(
        web.post(&op, "/operator/tenants/hooli/tier", &[("csrf", &op_csrf), ("tier", "org")]).0,
        StatusCode::SEE_OTHER
    );
    let (_, t) = server.call("GET", "/v1/tenants", Some(&server.admin), None);
    assert!(
        t.to_string().contains("\"id\":\"hooli\",\"tier\":\"org\"")
            || t["data"].as_array().expect("list").iter().any(|t| t["id"] == "hooli" && t["tier"] == "org"),
        "{t}"
    );
    let credits = "/operator/tenants/hooli/credits";
    for bad in ["-5", "0", "lots", ""] {
        let (s, html) = web.post(&op, credits, &[("csrf", &op_csrf), ("amount", bad), ("reference", "x")]);
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {html}");
    }
    assert_eq!(
        web.post(&op, credits, &[("csrf", &op_csrf), ("amount", "500"), ("reference", "console")]).0,
        StatusCode::SEE_OTHER
    );
    assert!(web.get(&op, "/operator").1.contains("500"));

    // Web sign-up: a Free tenant the person owns, signed in at once; refused without the
    // pre-session token, with a weak password, or for a name taken.
    let anon = client_builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let page = anon.get(format!("{}/sign_up", server.url)).send().expect("page");
    let seed = cookie_value(&page, "soramai_csrf").expect("csrf cookie");
    let csrf = form_csrf(&page.text().expect("html"));
    let sign_up = |fields: &[(&str, &str)]| {
        anon.post(format!("{}/sign_up", server.url))
            .header("cookie", format!("soramai_csrf={seed}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(fields))
            .send()
            .expect("sign up")
    };
    let good = [("csrf", csrf.as_str()), ("email", "new@umbrella.com"), ("password", PASSWORD), ("team", "umbrella")];
    assert_eq!(
        sign_up(&[("email", "new@umbrella.com"), ("password", PASSWORD), ("team", "umbrella")]).status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        sign_up(&[("csrf", &csrf), ("email", "new@umbrella.com"), ("password", "short"), ("team", "umbrella")])
            .status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        sign_up(&[("csrf", &csrf), ("email", "new@umbrella.com"), ("password", PASSWORD), ("team", "initech")])
            .status(),
        StatusCode::CONFLICT
    );
    assert_eq!(sign_up(&[("csrf", &csrf)]).status(), StatusCode::BAD_REQUEST, "a form without its fields");
    assert!(!tenants().contains("umbrella"), "no refused sign-up made a tenant");
    let res = sign_up(&good);
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/t/umbrella/datasets");
    let session = cookie_value(&res, "soramai_session").expect("signed in");
    let (s, html) = web.get(&session, "/t/umbrella/datasets");
    assert_eq!(s, StatusCode::OK, "{html}");
    assert!(html.contains("owner of umbrella, free tier"), "{html}");
    assert_eq!(web.get(&session, "/t/initech/datasets").0, StatusCode::NOT_FOUND);

    // A password-reset link (its token from the library, as the operator's mailer gets it)
    // sets a new password once and ends every session.
    let core = soramai::Core::open_embedded(dir.path().join("data")).expect("core");
    let token = core.request_password_reset("ivy@initech.com").expect("reset").expect("known");
    let page = anon.get(format!("{}/reset_password?token={}", server.url, token.secret())).send().expect("page");
    let seed = cookie_value(&page, "soramai_csrf").expect("seed");
    let csrf = form_csrf(&page.text().expect("html"));
    let reset = |fields: &[(&str, &str)]| {
        anon.post(format!("{}/reset_password", server.url))
            .header("cookie", format!("soramai_csrf={seed}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(fields))
            .send()
            .expect("reset")
            .status()
    };
    let new_password = "another long passphrase";
    assert_eq!(reset(&[("token", token.secret()), ("password", new_password)]), StatusCode::FORBIDDEN, "no CSRF");
    assert_eq!(reset(&[("csrf", &csrf), ("token", token.secret()), ("password", "short")]), StatusCode::BAD_REQUEST);
    assert_eq!(reset(&[("csrf", &csrf), ("token", "pr-forged"), ("password", new_password)]), StatusCode::UNAUTHORIZED);
    assert_eq!(reset(&[("csrf", &csrf)]), StatusCode::UNAUTHORIZED, "a form without its fields");
    assert_eq!(web.get(&ivy, "/t/initech/keys").0, StatusCode::OK, "no refused reset ended a session");
    assert_eq!(reset(&[("csrf", &csrf), ("token", token.secret()), ("password", new_password)]), StatusCode::SEE_OTHER);
    assert_eq!(
        reset(&[("csrf", &csrf), ("token", token.secret()), ("password", new_password)]),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(web.get(&ivy, "/t/initech/keys").0, StatusCode::SEE_OTHER, "every session ended");
    drop(core);
    server.stop();

    // Closed unless the operator opens it.
    let dir = tempfile::tempdir().expect("dir");
    let closed = Server::launch(dir.path(), &[]);
    let res = anon.get(format!("{}/sign_up", closed.url)).send().expect("page");
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert!(
        !anon.get(format!("{}/sign_in", closed.url)).send().expect("page").text().expect("html").contains("/sign_up")
    );
    closed.stop();
}

#[test]
fn passkey_endpoints_refuse_what_is_not_their_own_ceremony() {
    let dir = tempfile::tempdir().expect("dir");
    let args = ["--public-url", "http://localhost:8080"].map(std::ffi::OsStr::new);
    let server = Server::launch(dir.path(), &args);
    let acme = server.tenant("acme", "basic", 0);
    let ada = join_and_sign_in(&server, &acme, "ada@acme.com", "admin", PASSWORD);
    let web = Web::new(&server);
    let csrf = form_csrf(&web.get(&ada, "/account").1);
    let http = client_builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let call = |path: &str, cookies: &str, csrf: &str, body: &str| {
        let res = http
            .post(format!("{}{path}", server.url))
            .header("cookie", cookies)
            .header("x-csrf-token", csrf)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .expect("post");
        let status = res.status();
        (status, res.json::<serde_json::Value>().unwrap_or_default())
    };
    let session = format!("soramai_session={ada}");

    // Registration: the session's CSRF token is required; the options name this site.
    assert_eq!(call("/account/passkeys/options", &session, "forged", "{}").0, StatusCode::FORBIDDEN);
    assert_eq!(call("/account/passkeys/options", "", &csrf, "{}").0, StatusCode::UNAUTHORIZED);
    let (s, options) = call("/account/passkeys/options", &session, &csrf, "{}");
    assert_eq!(s, StatusCode::OK, "{options}");
    assert_eq!(options["publicKey"]["rp"]["id"], "localhost", "{options}");
    assert_eq!(options["publicKey"]["authenticatorSelection"]["userVerification"], "required", "{options}");
    let handle = options["publicKey"]["user"]["id"].as_str().expect("user handle");
    assert_eq!(handle.len(), 22, "a 16-byte handle derived from the user id, not the email: {options}");
    for body in ["", "[]", "{\"name\": \"x\"}", "{\"name\": \"x\", \"credential\": {\"id\": \"AAAA\"}}"] {
        assert_eq!(call("/account/passkeys", &session, &csrf, body).0.as_u16() / 100, 4, "{body}");
    }
    let forged = json!({"name": "x", "credential": {"id": "AAAA", "rawId": "AAAA", "type": "public-key",
        "response": {"attestationObject": "AAAA", "clientDataJSON": "AAAA"}, "extensions": {}}});
    let (s, v) = call("/account/passkeys", &session, &csrf, &forged.to_string());
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // The ceremony was used by that answer: a second try finds none.
    let (s, v) = call("/account/passkeys", &session, &csrf, &forged.to_string());
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(!web.get(&ada, "/account").1.contains("Remove passkey"), "nothing was registered");

    // Sign-in: the pre-session token; an email with no passkey, known or not, gets one answer.
    let anon = client_builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let page = anon.get(format!("{}/sign_in", server.url)).send().expect("page");
    let seed = cookie_value(&page, "soramai_csrf").expect("seed");
    let html = page.text().expect("html");
    assert!(html.contains("Sign in with a passkey") && html.contains("/assets/dashboard.js"), "{html}");
    let pre = form_csrf(&html);
    let pre_cookie = format!("soramai_csrf={seed}");
    let email = |e: &str| json!({"email": e}).to_string();
    assert_eq!(call("/sign_in/passkey/options", "", &pre, &email("ada@acme.com")).0, StatusCode::FORBIDDEN);
    assert_eq!(
        call("/sign_in/passkey/options", &pre_cookie, "forged", &email("ada@acme.com")).0,
        StatusCode::FORBIDDEN
    );
    let known = call("/sign_in/passkey/options", &pre_cookie, &pre, &email("ada@acme.com"));
    let unknown = call("/sign_in/passkey/options", &pre_cookie, &pre, &email("nobody@acme.com"));
    assert_eq!(known.0, StatusCode::UNAUTHORIZED);
    assert_eq!(known, unknown, "no account is told apart");
    assert_eq!(call("/sign_in/passkey/options", &pre_cookie, &pre, "{\"mail\": 1}").0, StatusCode::BAD_REQUEST);
    let answer = json!({"id": "AAAA", "rawId": "AAAA", "type": "public-key", "response": {"authenticatorData": "AAAA",
        "clientDataJSON": "AAAA", "signature": "AAAA", "userHandle": null}, "extensions": {}})
    .to_string();
    assert_eq!(call("/sign_in/passkey", "", "", &answer).0, StatusCode::UNAUTHORIZED, "no ceremony");
    let (s, v) = call("/sign_in/passkey", "soramai_passkey=wa-0000", "", &answer);
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(call("/sign_in/passkey", "soramai_passkey=wa-0000", "", "{}").0, StatusCode::BAD_REQUEST);
    server.stop();

    // Off without a public address: no routes, no button; an address passkeys cannot use stops
    // the server at start.
    let dir = tempfile::tempdir().expect("dir");
    let off = Server::launch(dir.path(), &[]);
    let (s, _) = {
        let res = http
            .post(format!("{}/sign_in/passkey/options", off.url))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .expect("post");
        (res.status(), ())
    };
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(!http.get(format!("{}/sign_in", off.url)).send().expect("page").text().expect("html").contains("passkey"));
    off.stop();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_soramai"))
        .args(["serve", "--addr", "127.0.0.1:0", "--public-url", "http://example.com", "--data-dir"])
        .arg(dir.path().join("other"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no origin passkeys can be bound to"), "{out:?}");
}

#[test]
fn single_sign_on_endpoints_refuse_what_is_not_their_own_sign_in() {
    let dir = tempfile::tempdir().expect("dir");
    let args = ["--public-url", "http://localhost:8080"].map(std::ffi::OsStr::new);
    let server = Server::launch(dir.path(), &args);
    let initech = server.tenant("initech", "org", 0);
    let hooli = server.tenant("hooli", "pro", 0);
    let ivy = join_and_sign_in(&server, &initech, "ivy@initech.com", "admin", PASSWORD);
    let mo = join_and_sign_in(&server, &initech, "mo@initech.com", "member", PASSWORD);
    let hal = join_and_sign_in(&server, &hooli, "hal@hooli.com", "admin", PASSWORD);
    let web = Web::new(&server);
    let csrf_of = |session: &str| form_csrf(&web.get(session, "/dashboard").1);
    let settings = |csrf: &str, issuer: &str| {
        vec![
            ("csrf", csrf.to_owned()),
            ("issuer", issuer.to_owned()),
            ("client_id", "soramai".to_owned()),
            ("client_secret", "zq5-sso-secret".to_owned()),
            ("default_role", "member".to_owned()),
        ]
    };
    let post = |session: &str, path: &str, v: Vec<(&str, String)>| {
        let f: Vec<(&str, &str)> = v.iter().map(|(k, v)| (*k, v.as_str())).collect();
        web.post(session, path, &f)
    };

    // Settings: admins of Org and up, with the session's token; a bad issuer changes nothing.
    let (ivy_csrf, mo_csrf, hal_csrf) = (csrf_of(&ivy), csrf_of(&mo), csrf_of(&hal));
    assert_eq!(post(&ivy, "/t/initech/sso", settings("forged", "https://idp.example")).0, StatusCode::FORBIDDEN);
    assert_eq!(post(&mo, "/t/initech/sso", settings(&mo_csrf, "https://idp.example")).0, StatusCode::FORBIDDEN);
    assert_eq!(post(&hal, "/t/hooli/sso", settings(&hal_csrf, "https://idp.example")).0, StatusCode::FORBIDDEN);
    assert_eq!(post(&hal, "/t/initech/sso", settings(&hal_csrf, "https://idp.example")).0, StatusCode::NOT_FOUND);
    let (s, html) = post(&ivy, "/t/initech/sso", settings(&ivy_csrf, "javascript:alert(1)"));
    assert_eq!(s, StatusCode::BAD_REQUEST, "{html}");
    assert!(web.get(&ivy, "/t/initech/sso").1.contains("value=\"\""), "nothing stored");
    assert_eq!(post(&ivy, "/t/initech/sso", settings(&ivy_csrf, "https://idp.example")).0, StatusCode::SEE_OTHER);
    let (_, html) = web.get(&ivy, "/t/initech/sso");
    assert!(html.contains("On: https:&#x2f;&#x2f;idp.example") && !html.contains("zq5-sso-secret"), "{html}");

    // Starting: an unknown team or one without single sign-on is a 404; an https provider that
    // cannot be reached is a 502 page, and nothing is sent anywhere.
    let anon = client_builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let get = |path: &str, cookie: &str| {
        let res = anon.get(format!("{}{path}", server.url)).header("cookie", cookie).send().expect("get");
        (res.status(), res.text().expect("html"))
    };
    assert_eq!(get("/sso/start?tenant=nobody", "").0, StatusCode::NOT_FOUND);
    assert_eq!(get("/sso/start?tenant=hooli", "").0, StatusCode::NOT_FOUND);
    assert_eq!(get("/sso/start?tenant=../x", "").0, StatusCode::NOT_FOUND);
    let (s, html) = get("/sso/start?tenant=initech", "");
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{html}");
    assert!(html.contains("discovery failed"), "{html}");

    // Callbacks: the state must be this browser's own and still waiting.
    assert_eq!(get("/sso/callback?code=c&state=s1", "").0, StatusCode::FORBIDDEN, "no cookie: login CSRF");
    assert_eq!(get("/sso/callback?code=c&state=s1", "soramai_sso=s2").0, StatusCode::FORBIDDEN);
    assert_eq!(get("/sso/callback?code=c&state=", "soramai_sso=").0, StatusCode::FORBIDDEN);
    let (s, html) = get("/sso/callback?code=c&state=s1", "soramai_sso=s1");
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{html}");
    assert_eq!(get("/sso/callback?error=access_denied&state=s1", "soramai_sso=s1").0, StatusCode::UNAUTHORIZED);
    let out = server.stop();
    assert!(!out.contains("zq5-sso-secret"), "the secret reached a log");
}
