//! Single sign-on over OpenID Connect (the `openidconnect` crate), for tenants on Org and up
//! whose admins named their provider on `/t/{tenant}/sso` (kept by [`soramai::accounts`]).
//! Needs `--public-url`: the provider sends people back to `<public-url>/sso/callback`.
//!
//! - `GET /sso/start?tenant=…`: discovery at the tenant's issuer (the issuer it states must be
//!   the one configured), then a redirect to its authorization endpoint with a fresh `state`,
//!   `nonce` and PKCE challenge (a page that moves on by itself: the sign-in form's CSP keeps
//!   its redirects on this site). The state also goes into an HttpOnly cookie (SameSite=Lax,
//!   on the callback's path only, as it returns from the provider's site): a callback whose
//!   state is not this browser's own is refused (no login CSRF).
//! - `GET /sso/callback?code=…&state=…`: the sign-in is taken (once), the code exchanged with the
//!   client secret and the PKCE verifier, and the ID token checked: signature against the
//!   provider's published keys, issuer, audience, expiry, and the nonce. Only then does the
//!   library decide who it is; the session it opens is confined to the tenant.
//! - Providers are reached over https only, unless the server was started with
//!   `--sso-allow-http-loopback` (tests, and a provider on the same machine), and then on a
//!   loopback host only. No redirect is followed.

use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreIdToken, CoreIdTokenVerifier, CoreProviderMetadata, CoreUserInfoClaims,
};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse as _,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, SubjectIdentifier, TokenResponse as _,
};
use serde::Deserialize;
use soramai::Error;
use soramai::TenantId;

use crate::site::message;
use crate::site::{CSRF_COOKIE, SESSION_COOKIE, blocking, clear_cookie, cookie, onward, set_cookie, set_lax_cookie};
use crate::state::AppState;
pub use crate::state::SsoOptions;

const STATE_COOKIE: &str = "soramai_sso";

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new().route("/sso/start", get(start)).route("/sso/callback", get(callback))
}

/// Why a sign-in through a provider failed: said to the person, never with token contents.
#[derive(Debug)]
pub struct SsoError(pub String);

fn err(what: impl Into<String>) -> SsoError {
    SsoError(what.into())
}

/// The issuer, checked against the server's rule for where providers may be.
fn issuer_url(issuer: &str, options: &SsoOptions) -> Result<IssuerUrl, SsoError> {
    let url = IssuerUrl::new(issuer.to_owned()).map_err(|_| err("the provider's issuer is no URL"))?;
    let parsed = url.url();
    let loopback = matches!(parsed.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    match parsed.scheme() {
        "https" => Ok(url),
        "http" if options.allow_http_loopback && loopback => Ok(url),
        _ => Err(err("the provider must be reached over https")),
    }
}

/// One request to a provider: no redirect followed, 10 s at most, the body capped at 1 MiB.
fn fetch(request: openidconnect::HttpRequest) -> Result<openidconnect::HttpResponse, SsoError> {
    static CLIENT: std::sync::OnceLock<Result<reqwest::blocking::Client, String>> = std::sync::OnceLock::new();
    let client = CLIENT
        .get_or_init(|| {
            reqwest::blocking::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| err(format!("no HTTP client: {e}")))?;
    let (parts, body) = request.into_parts();
    let mut req = client.request(parts.method, parts.uri.to_string()).body(body);
    for (name, value) in &parts.headers {
        req = req.header(name, value);
    }
    let res = req.send().map_err(|_| err("the provider could not be reached"))?;
    let mut builder = http::Response::builder().status(res.status());
    for (name, value) in res.headers() {
        builder = builder.header(name, value);
    }
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(res, 1 << 20), &mut body)
        .map_err(|_| err("the provider's answer was cut off"))?;
    builder.body(body).map_err(|_| err("the provider's answer was malformed"))
}

impl std::fmt::Display for SsoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SsoError {}

/// The provider's metadata (discovery checks that the issuer it states is the configured one)
/// and the callback address.
fn discover(issuer: &str, options: &SsoOptions) -> Result<(CoreProviderMetadata, RedirectUrl), SsoError> {
    let issuer = issuer_url(issuer, options)?;
    let metadata = CoreProviderMetadata::discover(&issuer, &fetch)
        .map_err(|e| err(format!("the provider's discovery failed: {}", discovery_reason(&e))))?;
    let redirect = RedirectUrl::new(options.redirect.clone()).map_err(|_| err("the callback address is no URL"))?;
    Ok((metadata, redirect))
}

fn discovery_reason<E: std::error::Error>(e: &openidconnect::DiscoveryError<E>) -> String {
    match e {
        openidconnect::DiscoveryError::Validation(v) => v.clone(),
        openidconnect::DiscoveryError::Response(status, _, _) => format!("it answered {status}"),
        openidconnect::DiscoveryError::Parse(_) => "its metadata is malformed".into(),
        _ => "it could not be reached".into(),
    }
}

/// Checks an ID token with a verifier (the provider's keys, our client id, its issuer): its
/// signature, issuer, audience, expiry and nonce. Returns the subject and the email the
/// provider verified, if any.
pub fn verify_id_token(
    token: &CoreIdToken,
    verifier: &CoreIdTokenVerifier<'_>,
    nonce: &Nonce,
) -> Result<(String, Option<String>), SsoError> {
    let claims = token.claims(verifier, nonce).map_err(|e| err(format!("the provider's ID token was refused: {e}")))?;
    let email = claims.email().filter(|_| claims.email_verified() == Some(true)).map(|e| e.as_str().to_owned());
    Ok((claims.subject().as_str().to_owned(), email))
}

#[derive(Deserialize)]
struct StartQuery {
    #[serde(default)]
    tenant: String,
}

async fn start(State(s): State<AppState>, Query(q): Query<StartQuery>) -> Response {
    let Some(options) = s.sso().cloned() else { return crate::site::not_found() };
    let core = s.platform().accounts();
    let begun = blocking(move || {
        let tenant = TenantId::new(q.tenant.trim()).map_err(|_| Error::NotFound { kind: "sso configuration" })?;
        let (config, secret) = core.sso_client(&tenant)?;
        let (metadata, redirect) = discover(&config.issuer, &options).map_err(|e| Error::InvalidArgument(e.0))?;
        let oidc = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(config.client_id.clone()),
            Some(ClientSecret::new(secret.to_string())),
        )
        .set_redirect_uri(redirect);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = oidc
            .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
            .add_scope(Scope::new("email".into()))
            .set_pkce_challenge(challenge)
            .url();
        core.begin_sso(&tenant, state.secret(), nonce.secret(), verifier.secret())?;
        Ok((url.to_string(), state.secret().clone()))
    })
    .await;
    match begun {
        Ok((url, state)) => onward(
            &url,
            "Taking you to your organization's sign-in…",
            &[set_lax_cookie(STATE_COOKIE, &state, "/sso/callback", 600)],
        ),
        Err(Error::NotFound { .. }) => {
            message(StatusCode::NOT_FOUND, "That team has no single sign-on. Sign in with your email instead.")
        }
        Err(Error::InvalidArgument(why)) => message(StatusCode::BAD_GATEWAY, &format!("Single sign-on failed: {why}.")),
        Err(_) => message(StatusCode::INTERNAL_SERVER_ERROR, "Single sign-on failed. Please try again."),
    }
}

#[derive(Deserialize)]
struct CallbackQuery {
    #[serde(default)]
    code: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    error: String,
}

async fn callback(State(s): State<AppState>, headers: HeaderMap, Query(q): Query<CallbackQuery>) -> Response {
    let Some(options) = s.sso().cloned() else { return crate::site::not_found() };
    if !q.error.is_empty() {
        return message(StatusCode::UNAUTHORIZED, "The provider did not sign you in.");
    }
    // The state must be this browser's own sign-in (a link from elsewhere is not).
    if q.state.is_empty() || cookie(&headers, STATE_COOKIE).as_deref() != Some(q.state.as_str()) {
        return message(StatusCode::FORBIDDEN, "This sign-in did not start in this browser. Please start again.");
    }
    let core = s.platform().accounts();
    let signed = blocking(move || {
        let login = core.take_sso(&q.state)?;
        let (config, secret) = core.sso_client(&login.tenant)?;
        let refused = |e: SsoError| Error::InvalidArgument(e.0);
        let (metadata, redirect) = discover(&config.issuer, &options).map_err(refused)?;
        let oidc = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(config.client_id.clone()),
            Some(ClientSecret::new(secret.to_string())),
        )
        .set_redirect_uri(redirect);
        let tokens = oidc
            .exchange_code(AuthorizationCode::new(q.code))
            .map_err(|_| refused(err("the provider has no token endpoint")))?
            .set_pkce_verifier(PkceCodeVerifier::new(login.pkce_verifier.to_string()))
            .request(&fetch)
            .map_err(|_| refused(err("the provider refused the code")))?;
        let token = tokens.id_token().ok_or_else(|| refused(err("the provider sent no ID token")))?;
        let (subject, email) =
            verify_id_token(token, &oidc.id_token_verifier(), &Nonce::new(login.nonce.clone())).map_err(refused)?;
        // A provider that keeps the email out of the ID token gives it at its userinfo endpoint,
        // for this same subject (checked).
        let email = match email {
            Some(e) => Some(e),
            None => {
                match oidc.user_info(tokens.access_token().clone(), Some(SubjectIdentifier::new(subject.clone()))) {
                    Ok(request) => {
                        let info: CoreUserInfoClaims =
                            request.request(&fetch).map_err(|_| refused(err("the provider's userinfo was refused")))?;
                        info.email().filter(|_| info.email_verified() == Some(true)).map(|e| e.as_str().to_owned())
                    }
                    Err(_) => None,
                }
            }
        };
        core.sso_sign_in(&login.tenant, &config.issuer, &subject, email.as_deref())
    })
    .await;
    match signed {
        Ok(session) => {
            let max_age = (session.expires_at - s.platform().accounts().now()) / 1000;
            let cookies = [
                set_cookie(SESSION_COOKIE, session.token.secret(), max_age),
                set_lax_cookie(STATE_COOKIE, "", "/sso/callback", 0),
                clear_cookie(CSRF_COOKIE),
            ];
            // Onward from this site's own page: the strict session cookie goes with that request.
            onward("/dashboard", "Signed in.", &cookies)
        }
        Err(Error::InvalidArgument(why)) => {
            message(StatusCode::UNAUTHORIZED, &format!("Single sign-on failed: {why}."))
        }
        Err(Error::Locked { .. }) => message(StatusCode::TOO_MANY_REQUESTS, "This account is locked for 15 minutes."),
        Err(e) => {
            // The kind of refusal only (no token, no email).
            eprintln!("single sign-on refused: {e}");
            message(
                StatusCode::UNAUTHORIZED,
                "Your organization's provider signed you in, but you are not a member of this team (ask an admin for an invitation).",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration as Span, Utc};
    use openidconnect::core::{
        CoreHmacKey, CoreIdToken, CoreIdTokenClaims, CoreIdTokenVerifier, CoreJsonWebKeySet, CoreJwsSigningAlgorithm,
    };
    use openidconnect::{
        Audience, ClientId, ClientSecret, EmptyAdditionalClaims, EndUserEmail, IssuerUrl, Nonce, StandardClaims,
        SubjectIdentifier,
    };

    const ISSUER: &str = "https://idp.example";
    const CLIENT: &str = "soramai";
    const SECRET: &str = "a client secret of the tenant's";

    /// An ID token as a provider signs it (HS256 with the client secret), with one thing changed.
    fn token(issuer: &str, audience: &str, nonce: &str, expires_in: Span, key: &str, verified: bool) -> CoreIdToken {
        let claims = CoreIdTokenClaims::new(
            IssuerUrl::new(issuer.into()).expect("issuer"),
            vec![Audience::new(audience.into())],
            Utc::now() + expires_in,
            Utc::now() - Span::minutes(1),
            StandardClaims::new(SubjectIdentifier::new("user-42".into()))
                .set_email(Some(EndUserEmail::new("sam@umbrella.test".into())))
                .set_email_verified(Some(verified)),
            EmptyAdditionalClaims {},
        )
        .set_nonce(Some(Nonce::new(nonce.into())));
        CoreIdToken::new(claims, &CoreHmacKey::new(key.as_bytes()), CoreJwsSigningAlgorithm::HmacSha256, None, None)
            .expect("signed")
    }

    fn verifier() -> CoreIdTokenVerifier<'static> {
        CoreIdTokenVerifier::new_confidential_client(
            ClientId::new(CLIENT.into()),
            ClientSecret::new(SECRET.into()),
            IssuerUrl::new(ISSUER.into()).expect("issuer"),
            CoreJsonWebKeySet::default(),
        )
        .set_allowed_algs([CoreJwsSigningAlgorithm::HmacSha256])
    }

    #[test]
    fn an_id_token_is_taken_only_from_its_issuer_for_us_with_our_nonce_in_time() {
        let nonce = Nonce::new("n-123".into());
        let hour = Span::hours(1);
        let good = token(ISSUER, CLIENT, "n-123", hour, SECRET, true);
        let (subject, email) = super::verify_id_token(&good, &verifier(), &nonce).expect("good token");
        assert_eq!((subject.as_str(), email.as_deref()), ("user-42", Some("sam@umbrella.test")));
        // An email the provider did not verify is no email.
        let unverified = token(ISSUER, CLIENT, "n-123", hour, SECRET, false);
        assert_eq!(super::verify_id_token(&unverified, &verifier(), &nonce).expect("token").1, None);
        for (what, bad) in [
            ("another issuer", token("https://evil.example", CLIENT, "n-123", hour, SECRET, true)),
            ("another audience", token(ISSUER, "someone-else", "n-123", hour, SECRET, true)),
            ("another nonce (a replayed token)", token(ISSUER, CLIENT, "n-999", hour, SECRET, true)),
            ("expired", token(ISSUER, CLIENT, "n-123", -Span::minutes(5), SECRET, true)),
            ("signed with another key", token(ISSUER, CLIENT, "n-123", hour, "not the secret", true)),
        ] {
            let e = super::verify_id_token(&bad, &verifier(), &nonce).expect_err(what);
            assert!(e.0.starts_with("the provider's ID token was refused"), "{what}: {e}");
        }
        // A token with no signature at all (alg none) is refused too.
        let parts: Vec<String> = good.to_string().split('.').map(str::to_owned).collect();
        let unsigned: CoreIdToken = format!("eyJhbGciOiJub25lIn0.{}.", parts[1]).parse().expect("parses");
        assert!(super::verify_id_token(&unsigned, &verifier(), &nonce).is_err());
    }

    #[test]
    fn providers_are_reached_over_https_or_on_loopback_when_allowed() {
        let opts = |allow| super::SsoOptions {
            redirect: "https://soramai.example/sso/callback".into(),
            allow_http_loopback: allow,
        };
        assert!(super::issuer_url("https://accounts.google.com", &opts(false)).is_ok());
        assert!(super::issuer_url("http://localhost:8080", &opts(false)).is_err());
        assert!(super::issuer_url("http://localhost:8080", &opts(true)).is_ok());
        assert!(super::issuer_url("http://127.0.0.1:8080", &opts(true)).is_ok());
        assert!(super::issuer_url("http://10.0.0.5", &opts(true)).is_err(), "not loopback");
        assert!(super::issuer_url("ftp://idp.example", &opts(true)).is_err());
        assert!(super::issuer_url("not a url", &opts(true)).is_err());
    }
}
