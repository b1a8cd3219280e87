//! The token's claims as extractors, so that no handler verifies a token by hand: a page's
//! [`PageClaims`] is refused with the sign-in page (401), the API's [`ApiClaims`] with its JSON
//! error (401 `missing_token`, `invalid_token`, `expired_token`), and the API's actions'
//! [`OperatorClaims`] (a bearer header only, granting `operate`) with it too (or 403
//! `forbidden`).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};

use super::auth::{AuthError, Claims, TokenKeys};
use super::error::ApiError;
use super::state::ViewerState;

/// The claims of a page's request (`Authorization: Bearer …`, else the sign-in cookie).
#[derive(Debug, Clone)]
pub struct PageClaims(pub Claims);

/// Why a page was refused: rendered as the sign-in page.
#[derive(Debug)]
pub struct SignInRequired(pub AuthError);

impl FromRequestParts<ViewerState> for PageClaims {
    type Rejection = SignInRequired;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ViewerState,
    ) -> Result<Self, Self::Rejection> {
        authenticate(&state.keys, &parts.headers)
            .map(Self)
            .map_err(SignInRequired)
    }
}

/// The claims of an API request (`Authorization: Bearer …`, else the sign-in cookie).
#[derive(Debug, Clone)]
pub struct ApiClaims(pub Claims);

impl FromRequestParts<ViewerState> for ApiClaims {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ViewerState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(authenticate(&state.keys, &parts.headers)?))
    }
}

/// The claims of an API request that changes state: a token of `Authorization: Bearer …` only
/// (the sign-in cookie alone never changes anything: a browser sends it with requests other
/// sites make it send), whose `scope` claim grants `operate`. Refused with the API's JSON
/// error: 401 as [`ApiClaims`] (`missing_token` when only a cookie came), 403 `forbidden` for a
/// token that may only read.
#[derive(Debug, Clone)]
pub struct OperatorClaims(pub Claims);

impl FromRequestParts<ViewerState> for OperatorClaims {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ViewerState,
    ) -> Result<Self, Self::Rejection> {
        let Some(token) = bearer(&parts.headers) else {
            let mut e = ApiError::from(AuthError::Missing);
            e.message = "acting on a run takes a token in Authorization: Bearer …; \
                         the sign-in cookie alone never changes anything"
                .into();
            return Err(e);
        };
        let claims = state.keys.verify(&token)?;
        if !claims.may_operate() {
            return Err(ApiError::forbidden(
                "this token may only read: acting on runs takes a token whose scope claim \
                 grants operate (oprun token --operate)",
            ));
        }
        tracing::debug!(
            sub = claims.sub.as_deref(),
            workspace_id = claims.workspace_id,
            "viewer action request"
        );
        Ok(Self(claims))
    }
}

/// The claims of a live stream's request (`GET /v1/runs/{id}/live`) and the token they came
/// from: `Authorization: Bearer …`, else `?token=` (`query_token`), else the sign-in cookie.
/// An `EventSource` cannot send a header, and a page on the platform's origin holds no sign-in
/// cookie of the viewer's, so the progress component of a platform page passes its token in the
/// URL; a URL may be logged or kept in a history, so only a token that reads one run may travel
/// there: one with a `run_id` claim and no `operate` grant (decision 0088). Any other is 401
/// `invalid_token`.
pub fn live_claims(
    keys: &TokenKeys,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<(Claims, String), ApiError> {
    let from_url = bearer(headers).is_none() && query_token.is_some_and(|t| !t.is_empty());
    let token = if from_url {
        query_token.map(str::to_owned)
    } else {
        request_token(headers)
    };
    let token = token.ok_or(AuthError::Missing)?;
    let claims = keys.verify(&token)?;
    if from_url && (claims.run_id.is_none() || claims.may_operate()) {
        return Err(AuthError::Invalid(
            "a token in ?token= must read one run only (a run_id claim, no operate grant): \
             the URL may be logged"
                .into(),
        )
        .into());
    }
    tracing::debug!(
        sub = claims.sub.as_deref(),
        workspace_id = claims.workspace_id,
        from_url,
        "viewer live request"
    );
    Ok((claims, token))
}

/// The cookie a browser carries after signing in with `?token=`.
pub const TOKEN_COOKIE: &str = "oprun_token";

/// The claims of the request's token: `Authorization: Bearer …`, else the sign-in cookie.
fn authenticate(keys: &TokenKeys, headers: &HeaderMap) -> Result<Claims, AuthError> {
    let token = request_token(headers).ok_or(AuthError::Missing)?;
    let claims = keys.verify(&token)?;
    tracing::debug!(
        sub = claims.sub.as_deref(),
        workspace_id = claims.workspace_id,
        "viewer request"
    );
    Ok(claims)
}

/// The request's token as sent (`Authorization: Bearer …`, else the sign-in cookie), unverified:
/// what [`authenticate`] verifies.
pub fn request_token(headers: &HeaderMap) -> Option<String> {
    bearer(headers).or_else(|| cookie(headers, TOKEN_COOKIE))
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// The value of cookie `name`.
pub(super) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}
