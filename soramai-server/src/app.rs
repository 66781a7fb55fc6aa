//! The whole server as one router: the API, the web pages for people, the dashboard, the
//! operator console, passkeys and single sign-on, each a sibling router over [`AppState`], joined
//! here and wrapped in the API's request log, limits and timeout.

use axum::Router;

use crate::state::AppState;
use crate::{dashboard, http, operator, passkeys, sso, web};

/// Every route of the server over `state`.
pub fn router(state: AppState) -> Router {
    let app = http::routes(&state)
        .merge(web::routes())
        .merge(dashboard::routes())
        .merge(operator::routes())
        .merge(passkeys::routes())
        .merge(sso::routes());
    http::outer(app, state)
}
