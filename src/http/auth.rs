//! The viewer's bearer tokens: HS256 JWTs whose claims say which workspace, and optionally
//! which tenants, the bearer may read. Only HS256 is accepted (`alg: none` and every other
//! algorithm fail verification); `exp` is required.

use serde::{Deserialize, Serialize};

use crate::store::viewer::ViewerScope;

/// The smallest accepted secret, in bytes (HS256 wants at least the hash size).
pub const MIN_SECRET_LEN: usize = 32;

/// Leeway on `exp`, in seconds, for clock skew between issuer and server: a token is accepted
/// until `exp` plus this, and a live stream it opened ends then.
pub const EXP_LEEWAY_SECS: u64 = 5;

/// The claims of a viewer token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The workspace the bearer may read.
    pub workspace_id: i64,
    /// When present, only these tenants' runs (and no workspace-scoped run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_ids: Option<Vec<i64>>,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Who the bearer is (logged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
}

impl Claims {
    /// What the token may see.
    pub fn scope(&self) -> ViewerScope {
        ViewerScope {
            workspace_id: self.workspace_id,
            tenant_ids: self.tenant_ids.clone(),
        }
    }
}

/// Why a token was refused (all answered 401).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token in the request.
    #[error(
        "a bearer token is required (Authorization: Bearer …, or open a page once with ?token=…)"
    )]
    Missing,
    /// The token is malformed, badly signed, of another algorithm, or lacks a required claim.
    #[error("the token is invalid: {0}")]
    Invalid(String),
    /// The token has expired.
    #[error("the token has expired")]
    Expired,
}

/// A secret of the wrong size.
#[derive(Debug, thiserror::Error)]
#[error("the API secret must be at least {MIN_SECRET_LEN} bytes")]
pub struct WeakSecret;

/// Signs and verifies tokens with one HS256 secret.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: jsonwebtoken::EncodingKey,
    decoding: jsonwebtoken::DecodingKey,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(***)")
    }
}

impl TokenKeys {
    /// Keys of `secret`.
    pub fn new(secret: &str) -> Result<Self, WeakSecret> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(WeakSecret);
        }
        Ok(Self {
            encoding: jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
            decoding: jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
        })
    }

    /// A signed token carrying `claims`.
    pub fn issue(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            claims,
            &self.encoding,
        )
        .expect("HS256 signing of serialisable claims cannot fail")
    }

    /// The claims of `token` when it is signed with this secret by HS256 and not expired.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.leeway = EXP_LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            })
    }
}

/// A fresh random secret (64 hex characters) from the operating system's generator.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random generator answers");
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::new(&"k".repeat(32)).unwrap()
    }

    fn claims(exp: u64) -> Claims {
        Claims {
            workspace_id: 1,
            tenant_ids: Some(vec![10]),
            exp,
            sub: Some("ada".into()),
        }
    }

    #[test]
    fn a_token_round_trips_and_an_expired_or_foreign_one_is_refused() {
        let now = chrono::Utc::now().timestamp() as u64;
        let token = keys().issue(&claims(now + 60));
        assert_eq!(keys().verify(&token).unwrap(), claims(now + 60));
        let expired = keys().issue(&claims(now - 600));
        assert!(matches!(keys().verify(&expired), Err(AuthError::Expired)));
        let other = TokenKeys::new(&"x".repeat(32)).unwrap();
        assert!(matches!(other.verify(&token), Err(AuthError::Invalid(_))));
        assert!(TokenKeys::new("short").is_err());
    }
}
