//! Administration: members, tenants, tiers, credits, API keys, access grants, audit and usage.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use soramai::accounts::Membership;
use soramai::{PlatformError, Scope, Session, Tier};

use super::*;

fn member_json(m: &Membership) -> Value {
    json!({"object": "member", "user": m.user.as_str(), "email": m.email, "role": m.role.as_str(),
           "created_at": m.created_at / 1000})
}

pub(super) async fn list_members(State(s): State<AppState>, Caller(p): Caller) -> ApiResult<Response> {
    let members = blocking(move || Session::for_request(s.platform, p).members()).await?;
    Ok(axum::Json(json!({"object": "list", "data": members.iter().map(member_json).collect::<Vec<_>>()}))
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InviteBody {
    email: String,
    role: String,
}

pub(super) async fn invite_member(
    State(s): State<AppState>,
    Caller(p): Caller,
    JsonBody(b): JsonBody<InviteBody>,
) -> ApiResult<Response> {
    let issued = blocking(move || Session::for_request(s.platform, p).invite(&b.email, &b.role)).await?;
    let i = &issued.invitation;
    let body = json!({"id": i.id.as_str(), "object": "invitation", "email": i.email, "role": i.role.as_str(),
                      "expires_at": i.expires_at / 1000, "token": issued.token.secret(),
                      "accept_url": format!("/invitations/accept?token={}", issued.token.secret())});
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RoleBody {
    role: String,
}

pub(super) async fn set_member_role(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<RoleBody>,
) -> ApiResult<Response> {
    let m = blocking(move || Session::for_request(s.platform, p).set_member_role(&id, &b.role)).await?;
    Ok(axum::Json(member_json(&m)).into_response())
}

pub(super) async fn remove_member(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let shown = id.clone();
    blocking(move || Session::for_request(s.platform, p).remove_member(&id)).await?;
    Ok(axum::Json(json!({"user": shown, "object": "member", "deleted": true})).into_response())
}

pub(super) fn tier(name: &str) -> ApiResult<Tier> {
    Tier::ALL
        .into_iter()
        .find(|t| t.as_str() == name)
        .ok_or_else(|| ApiError::invalid("tier is free, basic, pro, org or enterprise.").param("tier"))
}

fn tenant_json(t: &soramai::Tenant) -> Value {
    json!({"id": t.id.as_str(), "object": "tenant", "tier": t.tier.as_str()})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TenantBody {
    id: String,
    tier: String,
}

pub(super) async fn create_tenant(
    State(s): State<AppState>,
    Caller(p): Caller,
    JsonBody(b): JsonBody<TenantBody>,
) -> ApiResult<Response> {
    let tier = tier(&b.tier)?;
    let t = blocking(move || s.platform.create_tenant(&p, &b.id, tier)).await?;
    Ok((StatusCode::CREATED, axum::Json(tenant_json(&t))).into_response())
}

pub(super) async fn list_tenants(State(s): State<AppState>, Caller(p): Caller) -> ApiResult<Response> {
    let ts = blocking(move || s.platform.tenants(&p)).await?;
    Ok(axum::Json(json!({"object": "list", "data": ts.iter().map(tenant_json).collect::<Vec<_>>()})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TierBody {
    tier: String,
}

pub(super) async fn set_tier(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<TierBody>,
) -> ApiResult<Response> {
    let tier = tier(&b.tier)?;
    let t = blocking(move || s.platform.set_tier(&p, &id, tier)).await?;
    Ok(axum::Json(tenant_json(&t)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreditsBody {
    amount: i64,
    #[serde(default)]
    reference: Option<String>,
}

pub(super) async fn grant_credits(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<CreditsBody>,
) -> ApiResult<Response> {
    let r = blocking(move || s.platform.grant_credits(&p, &id, b.amount, b.reference.as_deref().unwrap_or("grant")))
        .await?;
    Ok(axum::Json(json!({"object": "receipt", "receipt": r.receipt, "amount": r.amount, "balance": r.balance_after}))
        .into_response())
}

fn key_json(k: &soramai::ApiKeyInfo) -> Value {
    json!({"id": k.id.as_str(), "object": "api_key", "tenant": k.tenant.as_str(), "name": k.name,
           "scopes": k.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
           "created_at": ms_to_s(k.created_at), "expires_at": k.expires_at.map(ms_to_s),
           "revoked_at": k.revoked_at.map(ms_to_s), "replaced_by": k.replaced_by.as_ref().map(|r| r.as_str()),
           "grant": k.grant.as_ref().map(|g| g.as_str())})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeyBody {
    name: String,
    scopes: Vec<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    expires_in_seconds: Option<u64>,
}

fn scope(name: &str) -> ApiResult<Scope> {
    [Scope::Inference, Scope::Train, Scope::Rag, Scope::Admin]
        .into_iter()
        .find(|s| s.as_str() == name)
        .ok_or_else(|| ApiError::invalid("A scope is inference, train, rag or admin.").param("scopes"))
}

pub(super) async fn create_key(
    State(s): State<AppState>,
    Caller(p): Caller,
    JsonBody(b): JsonBody<KeyBody>,
) -> ApiResult<Response> {
    // Scopes are checked here to answer with `param: scopes`; the SDK does the rest.
    let scopes = b.scopes.iter().map(|n| scope(n)).collect::<ApiResult<Vec<_>>>()?;
    let request =
        soramai::KeyRequest { name: b.name, scopes, tenant: b.tenant, expires_in_seconds: b.expires_in_seconds };
    let key = blocking(move || Session::for_request(s.platform, p).create_api_key(request)).await?;
    let mut v = key_json(&key.info);
    v["key"] = json!(key.secret());
    Ok((StatusCode::CREATED, axum::Json(v)).into_response())
}

pub(super) async fn list_keys(State(s): State<AppState>, Caller(p): Caller) -> ApiResult<Response> {
    let keys = blocking(move || Session::for_request(s.platform, p).api_keys()).await?;
    Ok(axum::Json(json!({"object": "list", "data": keys.iter().map(key_json).collect::<Vec<_>>()})).into_response())
}

fn key_id(id: &str) -> ApiResult<soramai::ApiKeyId> {
    soramai::ApiKeyId::new(id).map_err(|_| PlatformError::Core(soramai::Error::NotFound { kind: "api key" }).into())
}

pub(super) async fn revoke_key(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let shown = key_id(&id)?.as_str().to_owned();
    blocking(move || Session::for_request(s.platform, p).revoke_api_key(&id)).await?;
    Ok(axum::Json(json!({"id": shown, "object": "api_key", "revoked": true})).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    #[serde(default)]
    grace_seconds: Option<u64>,
}

pub(super) async fn rotate_key(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    key_id(&id)?;
    let b: RotateBody = optional_body(&body)?;
    let grace = Duration::from_secs(b.grace_seconds.unwrap_or(0));
    let key = blocking(move || Session::for_request(s.platform, p).rotate_api_key(&id, grace)).await?;
    let mut v = key_json(&key.info);
    v["key"] = json!(key.secret());
    Ok((StatusCode::CREATED, axum::Json(v)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CloseBody {
    #[serde(default)]
    immediate: bool,
    #[serde(default)]
    window_days: Option<u32>,
}

pub(super) async fn close_tenant(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let b: CloseBody = optional_body(&body)?;
    let c = blocking(move || Session::for_request(s.platform, p).close_tenant(&id, b.immediate, b.window_days)).await?;
    Ok(axum::Json(
        json!({"object": "tenant.closure", "tenant": c.tenant.as_str(), "requested_at": ms_to_s(c.requested_at),
                         "purge_at": ms_to_s(c.purge_at), "purged": c.purged}),
    )
    .into_response())
}

pub(super) async fn reopen_tenant(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let shown = id.clone();
    blocking(move || s.platform.reopen_tenant(&p, &id)).await?;
    Ok(axum::Json(json!({"object": "tenant", "id": shown, "reopened": true})).into_response())
}

fn grant_json(g: &soramai::AccessGrant) -> Value {
    json!({"id": g.id.as_str(), "object": "access_grant", "tenant": g.tenant.as_str(),
           "operator_tenant": g.operator_tenant.as_str(), "operator_key": g.operator_key.as_str(),
           "key_id": g.key_id.as_str(), "reason": g.reason,
           "scopes": g.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(), "ttl_seconds": g.ttl_seconds,
           "status": g.status, "requested_at": ms_to_s(g.requested_at), "approved_at": g.approved_at.map(ms_to_s),
           "expires_at": ms_to_s(g.expires_at), "ended_at": g.ended_at.map(ms_to_s), "ended_by": g.ended_by})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GrantBody {
    reason: String,
    scopes: Vec<String>,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

pub(super) async fn request_grant(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(tenant): Path<String>,
    JsonBody(b): JsonBody<GrantBody>,
) -> ApiResult<Response> {
    let scopes = b.scopes.iter().map(|n| scope(n)).collect::<ApiResult<Vec<_>>>()?;
    let input = soramai::GrantInput { reason: b.reason, scopes, ttl_seconds: b.ttl_seconds };
    let issued = blocking(move || Session::for_request(s.platform, p).request_access_grant(&tenant, input)).await?;
    let mut v = grant_json(&issued.grant);
    v["key"] = json!(issued.key.secret());
    Ok((StatusCode::CREATED, axum::Json(v)).into_response())
}

pub(super) async fn list_grants(State(s): State<AppState>, Caller(p): Caller) -> ApiResult<Response> {
    let grants = blocking(move || s.platform.access_grants(&p)).await?;
    Ok(axum::Json(json!({"object": "list", "data": grants.iter().map(grant_json).collect::<Vec<_>>()})).into_response())
}

pub(super) async fn get_grant(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let g = blocking(move || s.platform.access_grant(&p, &id)).await?;
    Ok(axum::Json(grant_json(&g)).into_response())
}

pub(super) async fn approve_grant(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let g = blocking(move || s.platform.approve_access_grant(&p, &id)).await?;
    Ok(axum::Json(grant_json(&g)).into_response())
}

pub(super) async fn revoke_grant(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let g = blocking(move || s.platform.revoke_access_grant(&p, &id)).await?;
    Ok(axum::Json(grant_json(&g)).into_response())
}

pub(super) async fn audit_log(State(s): State<AppState>, Caller(p): Caller) -> ApiResult<Response> {
    let records = blocking(move || Session::for_request(s.platform, p).audit_log()).await?;
    Ok(axum::Json(json!({"object": "list", "data": records})).into_response())
}

pub(super) async fn audit_verify(State(s): State<AppState>, Caller(p): Caller) -> ApiResult<Response> {
    let report = blocking(move || Session::for_request(s.platform, p).audit_verification()).await?;
    Ok(axum::Json(json!({"object": "audit.verification", "report": report})).into_response())
}

#[derive(Deserialize)]
pub(super) struct UsageQuery {
    #[serde(default)]
    since: Option<i64>,
}

pub(super) async fn usage(
    State(s): State<AppState>,
    Caller(p): Caller,
    Query(q): Query<UsageQuery>,
) -> ApiResult<Response> {
    let since = q.since.unwrap_or(0).saturating_mul(1000);
    let report = blocking(move || Session::for_request(s.platform, p).usage(since)).await?;
    Ok(axum::Json(json!({"object": "usage", "usage": report.summary, "credits": report.balance})).into_response())
}
