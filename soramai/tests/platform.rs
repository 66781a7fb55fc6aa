//! The SDK's `Platform` on the reference model: concurrent requests of several tenants share one
//! batch and each gets what it would alone; credits are reserved up front and settled exactly;
//! a stream dropped early is cancelled and refunded; tier limits hold.

use std::sync::Arc;

use soramai::platform::OPERATOR_TENANT;
use soramai::{
    ChatMessage, Core, GenerationOptions, KeyOptions, ModelId, Platform, PlatformError, PlatformOptions, Principal,
    Prompt, Scope, StreamEvent, TenantId, Tier,
};

#[path = "../../soramai-kernels/tests/common/reference_model.rs"]
mod reference_model;
use reference_model::reference_model;

const MODEL: &str = "smollm2";

fn platform(dir: &std::path::Path, model: &std::path::Path) -> Platform {
    let core = Arc::new(Core::open_embedded(dir).expect("core"));
    core.register_base_model(&ModelId::new(MODEL).expect("id"), model).expect("register");
    Platform::with_core(core, PlatformOptions::default()).expect("platform")
}

fn tenant(p: &Platform, name: &str, credits: i64) -> Principal {
    let t = TenantId::new(name).expect("id");
    p.core().create_tenant(&t, Tier::Basic).expect("tenant");
    if credits > 0 {
        p.core().grant_credits(&t, credits, "test").expect("grant");
    }
    let key =
        p.core().create_api_key(&Principal::operator(&t), KeyOptions::new("k", &[Scope::Inference])).expect("key");
    p.authenticate(key.secret()).expect("auth")
}

fn ask(q: &str) -> Prompt {
    Prompt::Chat(vec![ChatMessage::new("user", q)])
}

#[test]
fn concurrent_requests_share_a_batch_and_settle_their_credits_exactly() {
    let Some(model) = reference_model() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let p = platform(dir.path(), &model);
    let a = tenant(&p, "acme", 100_000);
    let b = tenant(&p, "globex", 100_000);
    let greedy = GenerationOptions { max_tokens: Some(12), temperature: Some(0.0), ..GenerationOptions::default() };
    let sampled = GenerationOptions { max_tokens: Some(10), temperature: Some(0.8), seed: Some(7), ..greedy.clone() };

    // Alone, one after the other.
    let alone_a = p.generate(&a, MODEL, &ask("Name a color."), &greedy).expect("a").collect().expect("a");
    let alone_b = p.generate(&b, MODEL, &ask("Name a fruit."), &sampled).expect("b").collect().expect("b");
    // Together: both streams are open before either is read, so they run in one batch.
    let sa = p.generate(&a, MODEL, &ask("Name a color."), &greedy).expect("a");
    let sb = p.generate(&b, MODEL, &ask("Name a fruit."), &sampled).expect("b");
    let hb = std::thread::spawn(move || sb.collect());
    let together_a = sa.collect().expect("a");
    let together_b = hb.join().expect("join").expect("b");
    assert_eq!(together_a.text, alone_a.text);
    assert_eq!(together_b.text, alone_b.text, "a seeded request is reproducible in a shared batch");
    assert!(together_a.usage.completion_tokens <= 12 && together_a.usage.prompt_tokens > 0);

    // Credits: exactly the tokens used, after the reservations are settled.
    let spent_a = 2 * alone_a.usage.total_tokens as i64;
    let spent_b = 2 * alone_b.usage.total_tokens as i64;
    assert_eq!(p.core().balance(a.tenant()).expect("balance"), 100_000 - spent_a);
    assert_eq!(p.core().balance(b.tenant()).expect("balance"), 100_000 - spent_b);

    // A stream dropped after its first token is cancelled and refunded all but what it used.
    let before = p.core().balance(a.tenant()).expect("balance");
    let long = GenerationOptions { max_tokens: Some(200), temperature: Some(0.0), ..GenerationOptions::default() };
    let mut s = p.generate(&a, MODEL, &ask("Write a long story about the sea."), &long).expect("start");
    let prompt_tokens = s.prompt_tokens() as i64;
    assert!(matches!(s.next(), Some(Ok(StreamEvent::Delta { .. }))));
    drop(s);
    let used = before - p.core().balance(a.tenant()).expect("balance");
    assert!(used > prompt_tokens && used <= prompt_tokens + 2, "charged {used} for a prompt of {prompt_tokens}");

    // Usage rows hold counts: acme made three requests (one cancelled).
    let admin = Principal::operator(a.tenant());
    let summary = p.core().usage_summary(&admin, 0).expect("usage");
    assert_eq!(summary.requests, 3);

    // The balance bounds max_tokens; an empty balance refuses before anything runs.
    let poor = tenant(&p, "poor", 40);
    let c = p.generate(&poor, MODEL, &ask("Hi"), &GenerationOptions::default()).expect("runs").collect().expect("c");
    assert!(c.usage.total_tokens <= 40);
    let broke = tenant(&p, "broke", 0);
    assert!(matches!(
        p.generate(&broke, MODEL, &ask("Hi"), &greedy),
        Err(PlatformError::Core(soramai::Error::InsufficientCredits { .. }))
    ));
    assert_eq!(p.core().balance(broke.tenant()).expect("balance"), 0);
}

#[test]
fn bad_requests_are_refused_before_anything_is_charged() {
    let Some(model) = reference_model() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let p = platform(dir.path(), &model);
    let a = tenant(&p, "acme", 100_000);
    let ok = GenerationOptions::default();
    let bad = [
        (MODEL, ask("x"), GenerationOptions { temperature: Some(-1.0), ..ok.clone() }),
        (MODEL, ask("x"), GenerationOptions { top_p: Some(0.0), ..ok.clone() }),
        (MODEL, ask("x"), GenerationOptions { stop: vec![String::new()], ..ok.clone() }),
        (MODEL, ask("x"), GenerationOptions { stop: vec!["a".into(); 5], ..ok.clone() }),
        (MODEL, ask("x"), GenerationOptions { logprobs: Some(21), ..ok.clone() }),
        (MODEL, ask("x"), GenerationOptions { max_tokens: Some(0), ..ok.clone() }),
        (MODEL, Prompt::Chat(vec![]), ok.clone()),
        (MODEL, Prompt::Chat(vec![ChatMessage::new("tool", "x")]), ok.clone()),
        (MODEL, Prompt::Text(String::new()), ok.clone()),
        (MODEL, Prompt::Text("word ".repeat(9000)), ok.clone()),
        ("nope", ask("x"), ok.clone()),
        ("ft:smollm2:globex:x:00", ask("x"), ok.clone()),
    ];
    for (model, prompt, options) in bad {
        let err = p.generate(&a, model, &prompt, &options).expect_err("refused");
        assert!(
            matches!(
                err,
                PlatformError::InvalidArgument(_)
                    | PlatformError::InvalidParameter { .. }
                    | PlatformError::ContextLength { .. }
                    | PlatformError::Core(soramai::Error::NotFound { .. })
            ),
            "{err:?}"
        );
    }
    assert_eq!(p.core().balance(a.tenant()).expect("balance"), 100_000);

    // Tier limits: a basic tenant runs at most 2 requests at once.
    let p1 = p.admit(&a).expect("1");
    let p2 = p.admit(&a).expect("2");
    assert!(matches!(p.admit(&a), Err(PlatformError::RateLimited(_))));
    drop(p1);
    let _p3 = p.admit(&a).expect("a place was freed");
    drop(p2);

    // Only the operator's admins administer the platform.
    assert!(p.create_tenant(&a, "evil", Tier::Org).is_err());
    let key = p.bootstrap_operator().expect("bootstrap").expect("first time");
    assert!(p.bootstrap_operator().expect("again").is_none(), "the bootstrap key is issued once");
    let op = p.authenticate(key.secret()).expect("auth");
    assert_eq!(op.tenant().as_str(), OPERATOR_TENANT);
    p.create_tenant(&op, "newco", Tier::Free).expect("tenant");
    let k = p.create_api_key(&op, "newco", KeyOptions::new("first", &[Scope::Inference])).expect("key");
    assert_eq!(p.authenticate(k.secret()).expect("auth").tenant().as_str(), "newco");
    assert!(p.create_api_key(&a, "newco", KeyOptions::new("x", &[Scope::Inference])).is_err());
}
