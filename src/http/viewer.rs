//! The run viewer's router: the JSON API under `/v1`, the pages, the sign-in by link, and the
//! headers every answer carries. The token checks are in [`super::claims`].

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::auth::{Claims, TokenKeys};
use super::claims::{cookie, TOKEN_COOKIE};
use super::cors::{self, AllowedOrigins};
use super::dead_letter_actions::DeadLetterActions;
use super::error::ApiError;
use super::run_actions::RunActions;
use super::server::{self, HttpLimits, HttpServer};
use super::state::ViewerState;
use super::{action_pages, api, dead_letter_api, dead_letter_pages, live, operate, pages, streams};

/// Most viewer answers (API and pages, live streams aside) being built or sent at once; more
/// wait for one to finish. Each holds at most about twice [`crate::store::viewer::PAGE_BYTES`]
/// (the page read, then its answer) until its last byte is handed to the socket, so the
/// viewer's answers hold at most 16 × 2 MiB = 32 MiB however many clients read at once.
pub const ANSWERS_IN_FLIGHT: usize = 16;

/// How long an answer waits for one of the [`ANSWERS_IN_FLIGHT`] before it is 503
/// `viewer_busy`.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// The Content-Security-Policy of every answer: scripts and styles only from this server's own
/// files, so nothing from the data can ever run.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Binds `addr` and serves the viewer until `shutdown`, reading through `viewer_pool` (the
/// viewer's own, see [`crate::store::viewer::connect_viewer_pool`]), its live streams within
/// `live`, its operator actions carried out by `actions`, the dead-letters page's by
/// `dead_letters`, its live stream readable from the pages of `allowed_origins`.
#[allow(clippy::too_many_arguments)]
pub async fn spawn(
    addr: SocketAddr,
    viewer_pool: PgPool,
    keys: TokenKeys,
    limits: HttpLimits,
    live: streams::LiveLimits,
    allowed_origins: AllowedOrigins,
    actions: Arc<dyn RunActions>,
    dead_letters: Arc<dyn DeadLetterActions>,
    shutdown: CancellationToken,
) -> std::io::Result<HttpServer> {
    let state = ViewerState {
        actions,
        dead_letters,
        pool: viewer_pool,
        answers: Arc::new(Semaphore::new(ANSWERS_IN_FLIGHT)),
        keys,
        heartbeat: limits.heartbeat(),
        poll: Duration::from_millis(250),
        live: Arc::new(streams::LiveStreams::new(live)),
        shutdown: shutdown.clone(),
        allowed_origins,
    };
    server::spawn(addr, router(state), limits, shutdown).await
}

/// Every route of the viewer. Whatever is refused (an unknown route, a wrong method, a path
/// or query that does not parse) is answered as the API's JSON error under `/v1/` and as the
/// error page elsewhere.
pub fn router(state: ViewerState) -> Router {
    let pages = Router::new()
        .route("/", get(|| async { Redirect::to("/runs") }))
        .route("/runs", get(pages::list))
        .route("/runs/{id}", get(pages::show))
        .route(
            "/runs/bulk",
            get(action_pages::confirm_bulk).post(action_pages::bulk),
        )
        .route("/runs/{id}/cancel", post(action_pages::act_on_run))
        .route("/runs/{id}/retry", post(action_pages::act_on_run))
        .route("/runs/{id}/fail", post(action_pages::act_on_run))
        .route("/legacy/{table}/{id}", get(pages::legacy))
        // A method these routes do not take is answered as an unknown route to anyone who
        // may not see them.
        .route(
            "/dead-letters",
            get(dead_letter_pages::list).fallback(dead_letter_pages::wrong_method),
        )
        .route(
            "/dead-letters/by-code",
            get(dead_letter_pages::confirm_group)
                .post(dead_letter_pages::act_on_group)
                .fallback(dead_letter_pages::wrong_method),
        )
        .route(
            "/dead-letters/{id}",
            get(dead_letter_pages::show).fallback(dead_letter_pages::wrong_method),
        )
        .route(
            "/dead-letters/{id}/replay",
            post(dead_letter_pages::act_on_letter).fallback(dead_letter_pages::wrong_method),
        )
        .route(
            "/dead-letters/{id}/discard",
            post(dead_letter_pages::act_on_letter).fallback(dead_letter_pages::wrong_method),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), sign_in));
    let reads = Router::new()
        .route("/v1/runs", get(api::list))
        .route("/v1/runs/{id}", get(api::show))
        .route("/v1/runs/{id}/events", get(api::events))
        .route("/v1/identities/{hash}", get(api::identity))
        .route("/v1/legacy/{table}/{id}", get(api::legacy))
        .route("/v1/catalog", get(api::catalog))
        .route(
            "/v1/dead-letters",
            get(dead_letter_api::summary).fallback(dead_letter_api::wrong_method),
        )
        .route("/v1/runs/{id}/cancel", post(operate::act))
        .route("/v1/runs/{id}/retry", post(operate::act))
        .route("/v1/runs/{id}/fail", post(operate::act))
        .merge(pages)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            bounded_answer,
        ));
    // The one route a page of another origin may read, and only a listed one (cors).
    let live = Router::new()
        .route(
            "/v1/runs/{id}/live",
            get(live::live).options(cors::live_preflight),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            cors::allow_listed_origin,
        ));
    Router::new()
        .merge(live)
        .route("/assets/viewer.css", get(pages::css))
        .route("/assets/viewer.js", get(pages::js))
        .route("/sign-in", post(switch_sign_in))
        .merge(reads)
        .fallback(|uri: Uri| async move { refused(&uri, ApiError::no_route()) })
        .method_not_allowed_fallback(|uri: Uri| async move {
            refused(&uri, ApiError::method_not_allowed())
        })
        .layer(middleware::map_response(security_headers))
        .with_state(state)
}

/// `e` as the API's JSON error under `/v1/`, else as the error page.
fn refused(uri: &Uri, e: ApiError) -> Response {
    if uri.path().starts_with("/v1/") || uri.path() == "/v1" {
        e.into_response()
    } else {
        pages::error_page(e)
    }
}

/// Holds one of the [`ANSWERS_IN_FLIGHT`] slots from before the handler runs until the
/// answer's last byte is sent (or the client goes away), so that answers held for slow
/// clients count too.
async fn bounded_answer(
    State(state): State<ViewerState>,
    request: Request,
    next: Next,
) -> Response {
    let slot = tokio::time::timeout(ANSWER_WAIT, state.answers.clone().acquire_owned()).await;
    let Ok(Ok(slot)) = slot else {
        let busy = ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "viewer_busy",
            "the viewer is answering as many requests as it may at once; retry",
        );
        let mut response = refused(request.uri(), busy);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    let (parts, body) = next.run(request).await.into_parts();
    Response::from_parts(parts, Body::new(WithSlot { body, _slot: slot }))
}

/// An answer's body that keeps its slot until it is sent or dropped.
struct WithSlot {
    body: Body,
    _slot: OwnedSemaphorePermit,
}

impl HttpBody for WithSlot {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
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
    // Unless the answer chose its own (the sign-in choice page: its form's POST must carry
    // its origin).
    headers
        .entry(header::REFERRER_POLICY)
        .or_insert(HeaderValue::from_static("no-referrer"));
    response
}

/// How long the "switch sign-in" form of [`sign_in`]'s choice page may be sent.
pub const SWITCH_FORM_LIFETIME: Duration = Duration::from_secs(600);

/// The largest body of the sign-in form (a token, its proof and a path).
const SWITCH_FORM_BYTES: usize = 16 * 1024;

/// Pages: `?token=…` signs the browser in (an HttpOnly, SameSite=Lax cookie, so that a "View
/// run" link followed from another site signs in and shows the run at once; the pages only
/// read) and redirects to the same URL without the token, so a "View run" link is one URL and
/// the token does not stay in the address bar or the history.
///
/// A link never silently replaces a browser's sign-in with another one (login CSRF: someone
/// else's link would show their data as if it were the reader's): when the cookie holds a
/// valid token of another bearer or scope, the page names both and lets the reader choose;
/// switching is a same-origin POST ([`switch_sign_in`]). A cookie of the same bearer and scope
/// is renewed when the link's token lasts longer; an expired or invalid one is replaced. Of the
/// same bearer and tenants but another run claim, a sign-in for every run stays (it shows the
/// link's run too) and a sign-in for one run is replaced by the link's.
async fn sign_in(State(state): State<ViewerState>, request: Request, next: Next) -> Response {
    let uri = request.uri().clone();
    let Some(token) = query_param(&uri, "token") else {
        return next.run(request).await;
    };
    let claims = match state.keys.verify(&token) {
        Ok(c) => c,
        Err(e) => return pages::unauthorized(&e, pages::TokenFrom::Link).into_response(),
    };
    let target = without_token(&uri);
    let current = cookie(request.headers(), TOKEN_COOKIE);
    let signed_in = current
        .as_deref()
        .and_then(|c| Some((c, state.keys.verify(c).ok()?)));
    match signed_in {
        Some((current, _)) if current == token => Redirect::to(&target).into_response(),
        Some((_, current_claims))
            if same_bearer(&current_claims, &claims) && current_claims.run_id != claims.run_id =>
        {
            // The same bearer and tenants: a sign-in for every run already shows the link's
            // run; a sign-in for one run gives way to the link's (another run, or all of them).
            if current_claims.run_id.is_none() {
                Redirect::to(&target).into_response()
            } else {
                signed_in_to(&token, &claims, &target)
            }
        }
        Some((_, current_claims)) if same_bearer(&current_claims, &claims) => {
            if claims.exp > current_claims.exp {
                signed_in_to(&token, &claims, &target)
            } else {
                Redirect::to(&target).into_response()
            }
        }
        Some((current, current_claims)) => {
            let until = now_secs() + SWITCH_FORM_LIFETIME.as_secs();
            let proof = state.keys.switch_proof(current, &token, until);
            pages::choose_sign_in(&current_claims, &claims, &token, &proof, &target)
        }
        None => signed_in_to(&token, &claims, &target),
    }
}

/// `POST /sign-in`: the choice page's "switch" form. Refused (403) unless the browser says the
/// form came from this origin (`Sec-Fetch-Site`, `Origin`) and its proof was made by this
/// server for exactly the browser's current token and the link's, within
/// [`SWITCH_FORM_LIFETIME`]; a form another site posts carries neither (nor, SameSite=Lax, the
/// cookie).
pub async fn switch_sign_in(State(state): State<ViewerState>, request: Request) -> Response {
    let refused = |code: &'static str, message: &str| {
        pages::error_page(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            code,
            message,
        ))
    };
    if !same_origin(request.headers()) {
        return refused(
            "cross_origin_request",
            "the sign-in form may only be sent from this viewer's own pages",
        );
    }
    let current = cookie(request.headers(), TOKEN_COOKIE).unwrap_or_default();
    let Ok(body) = axum::body::to_bytes(request.into_body(), SWITCH_FORM_BYTES).await else {
        return refused("invalid_sign_in_form", "the sign-in form is too large");
    };
    let field = |name: &str| {
        url::form_urlencoded::parse(&body)
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let (Some(token), Some(proof)) = (field("token"), field("proof")) else {
        return refused(
            "invalid_sign_in_form",
            "the sign-in form lacks its token or its proof; open the link again",
        );
    };
    if !state
        .keys
        .check_switch_proof(&proof, &current, &token, now_secs())
    {
        return refused(
            "invalid_sign_in_form",
            "this sign-in form has run out or was made for another browser; open the link again",
        );
    }
    let claims = match state.keys.verify(&token) {
        Ok(c) => c,
        Err(e) => return pages::unauthorized(&e, pages::TokenFrom::Link).into_response(),
    };
    let next = field("next")
        .filter(|p| local_path(p))
        .unwrap_or_else(|| "/runs".to_owned());
    signed_in_to(&token, &claims, &next)
}

/// Whether two tokens sign in the same bearer with the same workspace, tenants and right to act
/// (then either may stand for the other as far as whose data is shown and what it may do; a run
/// claim only narrows that). A link never silently adds or takes away the right to act.
fn same_bearer(a: &Claims, b: &Claims) -> bool {
    (a.workspace_id, &a.tenant_ids, &a.sub, a.may_operate())
        == (b.workspace_id, &b.tenant_ids, &b.sub, b.may_operate())
}

/// Whether the browser says this request comes from a page of this origin: by fetch metadata
/// (`Sec-Fetch-Site: same-origin`, set by the browser alone) when it sends it, else by an
/// `Origin` naming this host. An `Origin` of another host is refused either way; `Origin:
/// null` is what Chromium sends under `Referrer-Policy: no-referrer`, so it counts only with
/// the fetch metadata. Neither header: refused (every current browser sends one of them with a
/// form's POST).
fn same_origin(headers: &HeaderMap) -> bool {
    let origin = headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("null"))
        .filter(|o| *o != "null");
    let origin_is_here = origin.map(|o| {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let authority = o.split_once("://").map(|(_, a)| a);
        matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
    });
    match headers.get("sec-fetch-site").map(|v| v.as_bytes()) {
        Some(site) => site == b"same-origin" && origin_is_here != Some(false),
        None => origin_is_here == Some(true),
    }
}

/// Whether `path` is a path on this server (so a form cannot redirect elsewhere).
fn local_path(path: &str) -> bool {
    path.starts_with('/') && !path.starts_with("//") && !path.starts_with("/\\")
}

/// `uri`'s path and query without the `token` parameter.
fn without_token(uri: &Uri) -> String {
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
    target
}

/// A redirect (303) to `target` that stores `token` in the sign-in cookie until it expires.
fn signed_in_to(token: &str, claims: &Claims, target: &str) -> Response {
    let max_age = claims.exp.saturating_sub(now_secs());
    let cookie =
        format!("{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}");
    let mut response = Redirect::to(target).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

fn now_secs() -> u64 {
    chrono::Utc::now().timestamp().max(0) as u64
}

/// The first value of query parameter `name`.
pub fn query_param(uri: &Uri, name: &str) -> Option<String> {
    url::form_urlencoded::parse(uri.query()?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
