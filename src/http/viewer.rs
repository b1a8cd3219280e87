//! The run viewer's router: the JSON API under `/v1`, the pages, the token checks shared by
//! both, and the headers every answer carries.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::auth::{AuthError, Claims, TokenKeys};
use super::server::{self, HttpLimits, HttpServer};
use super::{api, live, pages};

/// The cookie a browser carries after signing in with `?token=`.
pub const TOKEN_COOKIE: &str = "oprun_token";

/// The Content-Security-Policy of every answer: scripts and styles only from this server's own
/// files, so nothing from the data can ever run.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// What the viewer's handlers share.
#[derive(Clone, Debug)]
pub struct ViewerState {
    /// The database.
    pub pool: PgPool,
    /// Token signing keys.
    pub keys: TokenKeys,
    /// How often an idle SSE stream sends a heartbeat.
    pub heartbeat: Duration,
    /// How often a live stream looks for new events.
    pub poll: Duration,
    /// Ends live streams at shutdown.
    pub shutdown: CancellationToken,
}

/// Binds `addr` and serves the viewer until `shutdown`.
pub async fn spawn(
    addr: SocketAddr,
    pool: PgPool,
    keys: TokenKeys,
    limits: HttpLimits,
    shutdown: CancellationToken,
) -> std::io::Result<HttpServer> {
    let state = ViewerState {
        pool,
        keys,
        heartbeat: limits.heartbeat(),
        poll: Duration::from_millis(250),
        shutdown: shutdown.clone(),
    };
    server::spawn(addr, router(state), limits, shutdown).await
}

/// Every route of the viewer.
pub fn router(state: ViewerState) -> Router {
    let pages = Router::new()
        .route("/", get(|| async { Redirect::to("/runs") }))
        .route("/runs", get(pages::list))
        .route("/runs/{id}", get(pages::show))
        .route("/legacy/{table}/{id}", get(pages::legacy))
        .route_layer(middleware::from_fn_with_state(state.clone(), sign_in));
    Router::new()
        .route("/v1/runs", get(api::list))
        .route("/v1/runs/{id}", get(api::show))
        .route("/v1/runs/{id}/events", get(api::events))
        .route("/v1/runs/{id}/live", get(live::live))
        .route("/v1/legacy/{table}/{id}", get(api::legacy))
        .route("/v1/catalog", get(api::catalog))
        .route("/assets/viewer.css", get(pages::css))
        .route("/assets/viewer.js", get(pages::js))
        .merge(pages)
        .fallback(|| async {
            super::error::ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
        })
        .layer(middleware::map_response(security_headers))
        .with_state(state)
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The claims of the request's token: `Authorization: Bearer …`, else the sign-in cookie.
pub fn authenticate(keys: &TokenKeys, headers: &HeaderMap) -> Result<Claims, AuthError> {
    let token = bearer(headers)
        .or_else(|| cookie(headers, TOKEN_COOKIE))
        .ok_or(AuthError::Missing)?;
    let claims = keys.verify(&token)?;
    tracing::debug!(
        sub = claims.sub.as_deref(),
        workspace_id = claims.workspace_id,
        "viewer request"
    );
    Ok(claims)
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Pages: `?token=…` signs the browser in (an HttpOnly, SameSite=Strict cookie) and redirects to
/// the same URL without the token, so a "View run" link is one URL and the token does not stay
/// in the address bar or the history.
async fn sign_in(State(state): State<ViewerState>, request: Request, next: Next) -> Response {
    let uri = request.uri().clone();
    let Some(token) = query_param(&uri, "token") else {
        return next.run(request).await;
    };
    let claims = match state.keys.verify(&token) {
        Ok(c) => c,
        Err(e) => return pages::unauthorized(&e).into_response(),
    };
    let max_age = claims
        .exp
        .saturating_sub(chrono::Utc::now().timestamp().max(0) as u64);
    let rest: Vec<(String, String)> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .filter(|(k, _)| k != "token")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let mut target = uri.path().to_owned();
    if !rest.is_empty() {
        target.push('?');
        target.push_str(
            &url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(rest)
                .finish(),
        );
    }
    let cookie =
        format!("{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}");
    let mut response = Redirect::to(&target).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// The first value of query parameter `name`.
pub fn query_param(uri: &Uri, name: &str) -> Option<String> {
    url::form_urlencoded::parse(uri.query()?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
