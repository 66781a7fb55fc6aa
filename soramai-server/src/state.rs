//! The server's shared state: the platform, the metrics, the password-attempt limiter, and the
//! settings of passkeys and single sign-on. It imports no other module of the server, so every
//! router (the API, the web pages, the dashboard, the operator console, passkeys, single sign-on)
//! can build on it without depending on the others.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use soramai::Platform;

/// Largest request body (a dataset upload included).
pub const MAX_BODY_BYTES: usize = 32 << 20;

/// Shared state of the routes.
#[derive(Clone)]
pub struct AppState {
    pub(crate) platform: Arc<Platform>,
    pub(crate) metrics: Arc<Metrics>,
    sign_ins: Arc<AttemptLimiter>,
    sign_up: bool,
    passkeys: Option<Arc<soramai::accounts::PasskeyConfig>>,
    sso: Option<SsoOptions>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("platform", &self.platform)
            .field("sign_up", &self.sign_up)
            .field("passkeys", &self.passkeys.is_some())
            .field("sso", &self.sso)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State over a platform (web sign-up closed).
    pub fn new(platform: Arc<Platform>) -> Self {
        Self {
            platform,
            metrics: Arc::new(Metrics::default()),
            sign_ins: Arc::default(),
            sign_up: false,
            passkeys: None,
            sso: None,
        }
    }

    /// Password attempts one client address gets in a burst, and back per minute.
    pub fn with_password_attempts(mut self, per_minute: u32) -> Self {
        self.sign_ins = Arc::new(AttemptLimiter::new(per_minute));
        self
    }

    /// Opens (or closes) `/sign_up`: anyone may then make an account with a Free tenant.
    pub fn with_sign_up(mut self, open: bool) -> Self {
        self.sign_up = open;
        self
    }

    /// Turns passkeys on, for the site at the config's origin.
    pub fn with_passkeys(mut self, config: soramai::accounts::PasskeyConfig) -> Self {
        self.passkeys = Some(Arc::new(config));
        self
    }

    /// The passkeys' relying party, when they are on.
    pub(crate) fn passkeys(&self) -> Option<&Arc<soramai::accounts::PasskeyConfig>> {
        self.passkeys.as_ref()
    }

    /// Turns single sign-on on, with providers sending people back to `options.redirect`.
    pub fn with_sso(mut self, options: SsoOptions) -> Self {
        self.sso = Some(options);
        self
    }

    /// How single sign-on reaches providers, when it is on.
    pub(crate) fn sso(&self) -> Option<&SsoOptions> {
        self.sso.as_ref()
    }

    /// Whether `/sign_up` is open.
    pub(crate) fn sign_up_open(&self) -> bool {
        self.sign_up
    }

    /// The platform the routes serve.
    pub(crate) fn platform(&self) -> &Arc<Platform> {
        &self.platform
    }

    /// Sign-in attempts per client address.
    pub(crate) fn sign_ins(&self) -> &AttemptLimiter {
        &self.sign_ins
    }
}

/// Aggregates only: counts and sums, never ids of tenants, never content.
#[derive(Default)]
pub(crate) struct Metrics {
    pub(crate) requests: AtomicU64,
    pub(crate) errors_4xx: AtomicU64,
    pub(crate) errors_5xx: AtomicU64,
    pub(crate) completions: AtomicU64,
    pub(crate) prompt_tokens: AtomicU64,
    pub(crate) completion_tokens: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    /// Error answers by their code (`integrity_error`, `rate_limit_exceeded`, …): a fixed set
    /// of codes, never anything from the request.
    pub(crate) errors_by_code: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

/// Password attempts (sign-in, sign-up, invitation acceptance) one client address may make in a
/// burst, and how many come back each minute, unless the server is told otherwise.
pub const ATTEMPTS_PER_ADDRESS: u32 = 10;

/// Password attempts per client address, a token bucket each: guessing many accounts' passwords
/// from one address is slowed however the per-email lockout counts.
#[derive(Debug)]
pub struct AttemptLimiter {
    /// Attempts in a burst, and refilled per minute.
    per_minute: f64,
    buckets: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (f64, std::time::Instant)>>,
}

impl Default for AttemptLimiter {
    fn default() -> Self {
        Self::new(ATTEMPTS_PER_ADDRESS)
    }
}

impl AttemptLimiter {
    /// `per_minute` attempts in a burst, refilled at that rate.
    pub fn new(per_minute: u32) -> Self {
        Self { per_minute: f64::from(per_minute.max(1)), buckets: Default::default() }
    }

    /// Takes one attempt for `addr`; `false` when its bucket is empty.
    pub fn take(&self, addr: std::net::IpAddr) -> bool {
        let now = std::time::Instant::now();
        let refilled = |tokens: f64, at: std::time::Instant| {
            (tokens + now.duration_since(at).as_secs_f64() * self.per_minute / 60.0).min(self.per_minute)
        };
        let Ok(mut buckets) = self.buckets.lock() else { return false };
        if buckets.len() > 100_000 {
            // Full buckets hold nothing worth keeping.
            buckets.retain(|_, (tokens, at)| refilled(*tokens, *at) < self.per_minute);
        }
        let (tokens, at) = buckets.entry(addr).or_insert((self.per_minute, now));
        *tokens = refilled(*tokens, *at);
        *at = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }
}

/// How the server reaches providers.
#[derive(Clone, Debug)]
pub struct SsoOptions {
    /// The callback address providers send people back to.
    pub redirect: String,
    /// Whether `http://` issuers on loopback hosts are allowed (tests, a provider on this machine).
    pub allow_http_loopback: bool,
}
