//! The token's claims as extractors, so that no handler verifies a token by hand: a page's
//! [`PageClaims`] is refused with the sign-in page (401), the API's [`ApiClaims`] with its JSON
//! error (401 `missing_token`, `invalid_token`, `expired_token`).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use super::auth::{AuthError, Claims};
use super::error::ApiError;
use super::pages;
use super::viewer::{authenticate, ViewerState};

/// The claims of a page's request (`Authorization: Bearer …`, else the sign-in cookie).
#[derive(Debug, Clone)]
pub struct PageClaims(pub Claims);

/// Why a page was refused: rendered as the sign-in page.
#[derive(Debug)]
pub struct SignInRequired(pub AuthError);

impl IntoResponse for SignInRequired {
    fn into_response(self) -> Response {
        pages::unauthorized(&self.0, pages::TokenFrom::Request).into_response()
    }
}

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
