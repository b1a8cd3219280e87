//! Cross-origin reads of the live stream (`GET /v1/runs/{id}/live`) for the origins of
//! `--viewer-allowed-origins` alone (decision 0088): a platform page on another origin shows a
//! run's progress through an `EventSource` of that route. Every other route, and every origin
//! not listed, stays closed (no `Access-Control-*` header: the browser keeps the answer from the
//! page). No credentials are allowed: the stream's token travels in `?token=`, never in a
//! cookie the browser would add by itself.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// How long a browser may keep a preflight's answer, in seconds.
const PREFLIGHT_MAX_AGE: &str = "600";

/// The origins whose pages may read the live stream: `scheme://host[:port]`, lower case, as a
/// browser sends `Origin`. Empty: none (the default).
#[derive(Debug, Clone, Default)]
pub struct AllowedOrigins(Arc<[String]>);

impl AllowedOrigins {
    /// The origins of `list`, each checked by [`parse_origin`].
    pub fn new<'a>(list: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let origins: Result<Vec<String>, String> = list.into_iter().map(parse_origin).collect();
        Ok(Self(origins?.into()))
    }

    /// Whether `origin` (a request's `Origin` header) is listed.
    pub fn allows(&self, origin: &str) -> bool {
        self.0.iter().any(|o| o == origin)
    }

    /// The request's `Origin` when it is listed.
    fn listed(&self, request: &Request) -> Option<HeaderValue> {
        let origin = request.headers().get(header::ORIGIN)?;
        self.allows(origin.to_str().ok()?).then(|| origin.clone())
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An origin of `--viewer-allowed-origins`: `http://` or `https://`, a host, an optional port,
/// no path, query, user or wildcard (a trailing `/` is dropped); lower-cased.
pub fn parse_origin(text: &str) -> Result<String, String> {
    let origin = text.trim().trim_end_matches('/').to_ascii_lowercase();
    let refused = || {
        format!(
            "--viewer-allowed-origins {text:?}: an origin is http(s)://host[:port], nothing more"
        )
    };
    let (scheme, rest) = origin.split_once("://").ok_or_else(refused)?;
    let (host, port) = match rest.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (rest, None),
    };
    // A host name or an IPv4 address (an IPv6 literal is not taken).
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    if !matches!(scheme, "http" | "https") || !host_ok || !port_ok {
        return Err(refused());
    }
    Ok(origin)
}

/// The live route's answers: `Access-Control-Allow-Origin` set to the request's `Origin` when it
/// is listed, and `Vary: Origin` whenever any origin is (a cache must not hand one origin's
/// answer to another).
pub async fn allow_listed_origin(
    State(origins): State<AllowedOrigins>,
    request: Request,
    next: Next,
) -> Response {
    let listed = origins.listed(&request);
    let mut response = next.run(request).await;
    if !origins.is_empty() {
        response
            .headers_mut()
            .append(header::VARY, HeaderValue::from_static("origin"));
    }
    if let Some(origin) = listed {
        response
            .headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    response
}

/// `OPTIONS /v1/runs/{id}/live`: a listed origin's preflight (an `EventSource` that reconnects
/// sends `Last-Event-ID`) is allowed `GET` with that header; any other is 405 as before.
pub async fn live_preflight(State(origins): State<AllowedOrigins>, request: Request) -> Response {
    let Some(origin) = origins.listed(&request) else {
        return ApiError::method_not_allowed().into_response();
    };
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("last-event-id"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(PREFLIGHT_MAX_AGE),
    );
    headers.insert(header::VARY, HeaderValue::from_static("origin"));
    response
}
