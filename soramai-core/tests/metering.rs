//! Usage metrics without content, the credit ledger, tier changes, and the retention sweep.

mod common;

use std::time::Duration;

use common::*;
use soramai_core::{Error, ModelId, Tier, UsageEvent, UsageKind, UsageStatus};

fn event(tokens: u64) -> UsageEvent {
    UsageEvent {
        kind: UsageKind::Inference,
        model: ModelId::new("smollm2-135m").expect("id"),
        adapter: Some(ModelId::new("ft:smollm2-135m:acme:support:1").expect("id")),
        input_tokens: tokens,
        output_tokens: tokens / 2,
        latency_ms: 12,
        status: UsageStatus::Ok,
    }
}

#[test]
fn ledger_grants_charges_refuses_at_zero_and_keeps_receipts() {
    let env = Env::new();
    let (t, _) = env.tenant("acme", Tier::Basic);
    assert_eq!(env.core.balance(&t).expect("balance"), 0);
    assert!(matches!(
        env.core.charge_credits(&t, 1, "req-1"),
        Err(Error::InsufficientCredits { balance: 0, needed: 1 })
    ));
    let g = env.core.grant_credits(&t, 1000, "invoice-42").expect("grant");
    assert!(g.receipt.starts_with("rcpt-"));
    env.core.charge_credits(&t, 600, "job-1").expect("charge");
    assert!(matches!(
        env.core.charge_credits(&t, 401, "job-2"),
        Err(Error::InsufficientCredits { balance: 400, needed: 401 })
    ));
    assert_eq!(env.core.balance(&t).expect("balance"), 400, "a refused charge charges nothing");
    env.core.refund_credits(&t, 100, "job-1").expect("refund");
    env.core.charge_credits(&t, 500, "job-3").expect("exact balance");
    assert_eq!(env.core.balance(&t).expect("balance"), 0);
    let receipts = env.core.receipts(&t).expect("receipts");
    assert_eq!(receipts.iter().map(|r| r.amount).collect::<Vec<_>>(), vec![1000, -600, 100, -500]);
    assert_eq!(receipts.last().map(|r| r.balance_after), Some(0));
}

#[test]
fn usage_is_metrics_only_and_summarised() {
    let env = Env::new();
    let (t, p) = env.tenant("acme", Tier::Basic);
    env.core.record_usage(&t, &event(100)).expect("record");
    env.core.record_usage(&t, &event(50)).expect("record");
    let s = env.core.usage_summary(&p, 0).expect("summary");
    assert_eq!((s.requests, s.input_tokens, s.output_tokens), (2, 150, 75));
    // A model id cannot carry free text (a prompt) in the first place.
    assert!(ModelId::new("tell me a secret about the merger").is_err());
    assert!(ModelId::new("x".repeat(500)).is_err());
}

#[test]
fn tier_changes_are_audited_and_change_policy() {
    let env = Env::new();
    let (t, p) = env.tenant("acme", Tier::Free);
    assert_eq!(env.core.set_tier(&t, Tier::Org).expect("upgrade").tier, Tier::Org);
    assert!(env.core.tenant(&t).expect("t").tier.policy().access_log);
    let log = env.core.audit_log(&p).expect("audit");
    let change = log.iter().find(|r| r.action == "tenant.tier_changed").expect("audited");
    assert!(change.detail.contains("free") && change.detail.contains("org"));
    // Reading the whole audit log with a key is an Org-and-up feature; below it a key reads the
    // records of the operator's access only. The operator can always read it all.
    env.core.set_tier(&t, Tier::Basic).expect("downgrade");
    let key =
        env.core.create_api_key(&p, soramai_core::KeyOptions::new("adm", &[soramai_core::Scope::Admin])).expect("key");
    let kp = env.core.authenticate(key.secret()).expect("auth");
    env.core.create_api_key(&kp, soramai_core::KeyOptions::new("own", &[soramai_core::Scope::Admin])).expect("key");
    let view = env.core.audit_log(&kp).expect("operator access view");
    assert!(view.iter().any(|r| r.action == "tenant.tier_changed"), "the operator's changes are shown");
    assert!(view.iter().all(|r| r.actor == "operator"), "the tenant's own actions are not: {view:?}");
    let all = env.core.audit_log(&p).expect("all");
    assert!(all.iter().any(|r| r.actor.starts_with("key:")));
}

#[test]
fn retention_sweep_applies_the_rules() {
    let env = Env::new();
    let (t, p) = env.tenant("acme", Tier::Basic);
    let (gone, _) = env.tenant("gone", Tier::Basic);
    env.core.grant_credits(&t, 10, "old-invoice").expect("grant");
    env.core.record_usage(&t, &event(1)).expect("old usage");
    let ds = env.core.upload_dataset(&p, "keep.jsonl", &dataset(2, "k")).expect("upload");
    env.core.delete_tenant(&gone).expect("close");

    env.clock.advance(Duration::from_secs(91 * 86400));
    env.core.record_usage(&t, &event(2)).expect("new usage");
    let r = env.core.sweep_retention().expect("sweep");
    assert_eq!(r.usage_events, 1, "usage older than 90 days goes");
    assert_eq!(env.core.usage_summary(&p, 0).expect("s").requests, 1);
    assert!(r.audit_records > 0, "a closed tenant's audit trail goes 90 days after closure");
    assert!(env.core.verify_audit(&t).expect("live tenants keep theirs").records > 0);
    assert_eq!(r.ledger_entries, 0, "billing records stay");
    assert_eq!(env.core.receipts(&t).expect("r").len(), 1);
    assert!(env.core.download_dataset(&p, &ds.id).is_ok(), "datasets live until deleted");

    env.clock.advance(Duration::from_secs(7 * 366 * 86400));
    let r = env.core.sweep_retention().expect("sweep");
    assert_eq!(r.ledger_entries, 1, "billing records go after 7 years");
}

#[test]
fn access_log_is_kept_90_days() {
    let env = Env::new();
    let (_, org) = env.tenant("bigorg", Tier::Org);
    assert!(env.core.record_access(&org, "rag:kb", "search", None).expect("record"));
    env.clock.advance(Duration::from_secs(89 * 86400));
    assert_eq!(env.core.sweep_retention().expect("sweep").access_log, 0);
    env.core.record_access(&org, "rag:kb", "search", None).expect("record");
    env.clock.advance(Duration::from_secs(2 * 86400));
    assert_eq!(env.core.sweep_retention().expect("sweep").access_log, 1);
    assert_eq!(env.core.access_log(&org).expect("log").len(), 1);
    // Hostile resource names are refused; tiers without an access log record nothing.
    assert!(env.core.record_access(&org, "bad\nname", "search", None).is_err());
    let (_, basic) = env.tenant("small", Tier::Basic);
    assert!(!env.core.record_access(&basic, "rag:kb", "search", Some("q")).expect("no-op"));
}
