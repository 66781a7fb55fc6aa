//! The Soramai reference server as a library: [`router`] over an [`AppState`] is the whole HTTP
//! surface (the OpenAI-compatible API, the web pages for people, the dashboard, the operator
//! console, passkeys and single sign-on), and [`serve`] runs it with TLS, connection limits and a
//! graceful shutdown. The `soramai` binary is the command line around it. Everything goes through
//! the `soramai` facade; no module reaches the layers under it.
//!
//! Modules, each importing only those listed before it: `state` (no other module), `conn`,
//! `site` (what web pages share), then the sibling routers `http`, `web`, `dashboard`,
//! `operator`, `passkeys` and `sso`, joined in `app`, which `serve` runs.
#![forbid(unsafe_code)]

pub mod app;
pub mod conn;
mod dashboard;
pub mod http;
mod operator;
mod passkeys;
mod serve;
mod site;
pub mod sso;
pub mod state;
pub mod web;

pub use app::router;
pub use serve::{serve, tls_config};
pub use state::{AppState, AttemptLimiter, MAX_BODY_BYTES, SsoOptions};
