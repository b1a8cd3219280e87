//! The viewer's bearer tokens: HS256 JWTs whose claims say which workspace, and optionally
//! which tenants, the bearer may read, and whether it may also act on those runs (`"scope":
//! "operate"`). Only HS256 is accepted (`alg: none` and every other
//! algorithm fail verification); `exp` is required, `nbf` and `iat` are honoured when present,
//! and a claim that would widen the scope when garbled (`"tenant_ids": null`) is refused.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

use crate::store::viewer::ViewerScope;

/// The smallest accepted secret, in bytes (HS256 wants at least the hash size).
pub const MIN_SECRET_LEN: usize = 32;

/// Leeway on every time claim (`exp`, `nbf`, `iat`), in seconds, for clock skew between issuer
/// and server: a token is accepted until `exp` plus this, and a live stream it opened ends then.
pub const LEEWAY_SECS: u64 = 5;

/// The claims of a viewer token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The workspace the bearer may read.
    pub workspace_id: i64,
    /// When present, only these tenants' runs (and no workspace-scoped run); absent: the whole
    /// workspace. `null` is refused, never read as absent: an issuer whose tenant list failed
    /// to load must not mint a token for the whole workspace by accident.
    #[serde(
        default,
        deserialize_with = "tenants_not_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub tenant_ids: Option<Vec<i64>>,
    /// When present, only this one run (inside the workspace and tenants above): its detail,
    /// events, live stream and page; every other run, list or record is outside the token.
    /// `null` is refused like a null `tenant_ids`: it would widen the token when garbled.
    #[serde(
        default,
        deserialize_with = "run_not_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub run_id: Option<i64>,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Who the bearer is (logged, and recorded as the actor of its actions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The `scope` claim: space-separated grants. With [`OPERATE_SCOPE`] among them the bearer
    /// may also cancel, retry and fail the runs it may read; absent (or anything else), it only
    /// reads.
    #[serde(rename = "scope", default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<String>,
}

/// The grant of the `scope` claim that lets a token act on runs (cancel, retry, fail).
pub const OPERATE_SCOPE: &str = "operate";

impl Claims {
    /// What the token may see.
    pub fn scope(&self) -> ViewerScope {
        ViewerScope {
            workspace_id: self.workspace_id,
            tenant_ids: self.tenant_ids.clone(),
            run_id: self.run_id,
        }
    }

    /// Whether the token may act on the runs it may read (its `scope` claim grants
    /// [`OPERATE_SCOPE`]).
    pub fn may_operate(&self) -> bool {
        self.grants
            .as_deref()
            .is_some_and(|g| g.split_whitespace().any(|w| w == OPERATE_SCOPE))
    }

    /// Whether the token may see and act on the dead letters: it grants [`OPERATE_SCOPE`] for
    /// its whole workspace (no tenant list, no run claim). A letter's tenant is only what its
    /// producer wrote in the body, and a letter may name another workspace or none, so no
    /// narrower token can be shown some letters and not others.
    pub fn may_work_dead_letters(&self) -> bool {
        self.may_operate() && self.tenant_ids.is_none() && self.run_id.is_none()
    }
}

/// `tenant_ids` when the claim is present: a list, never `null` (serde calls this only for a
/// present claim; an absent one is `None` by `default`).
fn tenants_not_null<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<i64>>, D::Error> {
    match Option::<Vec<i64>>::deserialize(d)? {
        Some(tenants) => Ok(Some(tenants)),
        None => Err(serde::de::Error::custom(
            "tenant_ids is null: list the tenants, or leave the claim out for the whole workspace",
        )),
    }
}

/// `run_id` when the claim is present: a run id, never `null`.
fn run_not_null<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match Option::<i64>::deserialize(d)? {
        Some(run) => Ok(Some(run)),
        None => Err(serde::de::Error::custom(
            "run_id is null: name the run, or leave the claim out for every run of the scope",
        )),
    }
}

/// The registered time claims besides `exp`, read from the same verified payload.
#[derive(Deserialize)]
struct TimeClaims {
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    iat: Option<u64>,
}

/// What is verified: the claims and the time claims `Claims` does not carry.
#[derive(Deserialize)]
struct Verified {
    #[serde(flatten)]
    claims: Claims,
    #[serde(flatten)]
    times: TimeClaims,
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
    /// The token is not valid yet: its `nbf` (not before) or `iat` (issued at) is in the future,
    /// beyond the leeway.
    #[error("the token is not valid yet: its {claim} is {secs} s in the future")]
    NotYetValid {
        /// `nbf` or `iat`.
        claim: &'static str,
        /// How far in the future.
        secs: u64,
    },
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
    /// The secret again, as the key of the sign-in form's anti-forgery values
    /// ([`TokenKeys::switch_proof`]); its messages never collide with a JWT's signing input.
    mac_key: std::sync::Arc<[u8]>,
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
            mac_key: secret.as_bytes().into(),
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

    /// The claims of `token` when it is signed with this secret by HS256, not expired, and
    /// already valid (`nbf` and `iat` not in the future), each time claim with [`LEEWAY_SECS`].
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp"]);
        // Checked below with `iat`, so that both give the same answer.
        validation.validate_nbf = false;
        let verified = jsonwebtoken::decode::<Verified>(token, &self.decoding, &validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            })?;
        let now = jsonwebtoken::get_current_timestamp();
        for (claim, at) in [("nbf", verified.times.nbf), ("iat", verified.times.iat)] {
            if let Some(at) = at.filter(|at| *at > now + LEEWAY_SECS) {
                return Err(AuthError::NotYetValid {
                    claim,
                    secs: at - now,
                });
            }
        }
        Ok(verified.claims)
    }

    /// The anti-forgery value of the form that switches a browser signed in with `current`
    /// to `next`, valid until `until` (seconds since the epoch): `until.hex(HMAC-SHA256)` over
    /// both tokens' hashes, so it is worth nothing for any other pair, and only this server
    /// can make one.
    pub fn switch_proof(&self, current: &str, next: &str, until: u64) -> String {
        format!(
            "{until}.{}",
            hex::encode(self.switch_mac(current, next, until))
        )
    }

    /// Whether `proof` is a [`TokenKeys::switch_proof`] of `current` and `next` that has not
    /// run out at `now` (compared in constant time).
    pub fn check_switch_proof(&self, proof: &str, current: &str, next: &str, now: u64) -> bool {
        let Some((until, mac)) = proof.split_once('.') else {
            return false;
        };
        let (Ok(until), Ok(mac)) = (until.parse::<u64>(), hex::decode(mac)) else {
            return false;
        };
        until >= now
            && self
                .switch_mac_state(current, next, until)
                .verify_slice(&mac)
                .is_ok()
    }

    fn switch_mac(&self, current: &str, next: &str, until: u64) -> Vec<u8> {
        self.switch_mac_state(current, next, until)
            .finalize()
            .into_bytes()
            .to_vec()
    }

    fn switch_mac_state(&self, current: &str, next: &str, until: u64) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.mac_key).expect("HMAC takes a key of any length");
        // A NUL never occurs in a JWT's signing input (base64url and '.'), so these messages
        // cannot be mistaken for one.
        mac.update(b"oprun sign-in switch\0");
        mac.update(&Sha256::digest(current.as_bytes()));
        mac.update(&Sha256::digest(next.as_bytes()));
        mac.update(until.to_string().as_bytes());
        mac
    }
}

impl TokenKeys {
    /// The anti-forgery value of the pages' action forms for a browser signed in with `token`:
    /// hex(HMAC-SHA256) of the token's hash, so it is worth nothing for another sign-in, only
    /// this server can make one, and it ends with the sign-in (a renewed token makes another).
    pub fn action_proof(&self, token: &str) -> String {
        hex::encode(self.action_mac(token).finalize().into_bytes())
    }

    /// Whether `proof` is the [`TokenKeys::action_proof`] of `token` (compared in constant
    /// time).
    pub fn check_action_proof(&self, proof: &str, token: &str) -> bool {
        let Ok(mac) = hex::decode(proof) else {
            return false;
        };
        !token.is_empty() && self.action_mac(token).verify_slice(&mac).is_ok()
    }

    fn action_mac(&self, token: &str) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.mac_key).expect("HMAC takes a key of any length");
        // Another prefix than the sign-in switch's, so neither proof stands for the other.
        mac.update(b"oprun action form\0");
        mac.update(&Sha256::digest(token.as_bytes()));
        mac
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
            run_id: None,
            exp,
            sub: Some("ada".into()),
            grants: None,
        }
    }

    /// A token of these raw claims, signed like [`TokenKeys::issue`] does.
    fn raw(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret("k".repeat(32).as_bytes()),
        )
        .unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn null_tenants_are_refused_while_absent_means_the_workspace_and_empty_means_none() {
        let exp = now() + 60;
        let null = raw(serde_json::json!({"workspace_id": 1, "tenant_ids": null, "exp": exp}));
        match keys().verify(&null) {
            Err(AuthError::Invalid(message)) => {
                assert!(message.contains("tenant_ids is null"), "{message}")
            }
            other => panic!("a null tenant list was not refused: {other:?}"),
        }
        let absent = raw(serde_json::json!({"workspace_id": 1, "exp": exp}));
        assert_eq!(keys().verify(&absent).unwrap().tenant_ids, None);
        let empty = raw(serde_json::json!({"workspace_id": 1, "tenant_ids": [], "exp": exp}));
        assert_eq!(keys().verify(&empty).unwrap().tenant_ids, Some(vec![]));
        let wrong = raw(serde_json::json!({"workspace_id": 1, "tenant_ids": "10", "exp": exp}));
        assert!(matches!(keys().verify(&wrong), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn a_run_claim_narrows_the_scope_to_that_run_and_a_null_one_is_refused() {
        let exp = now() + 60;
        let one = raw(serde_json::json!({"workspace_id": 1, "run_id": 7, "exp": exp}));
        let scope = keys().verify(&one).unwrap().scope();
        assert_eq!((scope.workspace_id, scope.run_id), (1, Some(7)));
        let absent = raw(serde_json::json!({"workspace_id": 1, "exp": exp}));
        assert_eq!(keys().verify(&absent).unwrap().scope().run_id, None);
        let null = raw(serde_json::json!({"workspace_id": 1, "run_id": null, "exp": exp}));
        match keys().verify(&null) {
            Err(AuthError::Invalid(message)) => {
                assert!(message.contains("run_id is null"), "{message}")
            }
            other => panic!("a null run was not refused: {other:?}"),
        }
        let text = raw(serde_json::json!({"workspace_id": 1, "run_id": "7", "exp": exp}));
        assert!(matches!(keys().verify(&text), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn only_a_scope_claim_granting_operate_lets_a_token_act() {
        let exp = now() + 60;
        let with = |scope: serde_json::Value| {
            let token = raw(serde_json::json!({"workspace_id": 1, "exp": exp, "scope": scope}));
            keys().verify(&token).unwrap().may_operate()
        };
        assert!(with(serde_json::json!("operate")));
        assert!(with(serde_json::json!("read operate")));
        for no in ["", "read", "operator", "OPERATE"] {
            assert!(!with(serde_json::json!(no)), "{no:?}");
        }
        assert!(!with(serde_json::Value::Null));
        let absent = raw(serde_json::json!({"workspace_id": 1, "exp": exp}));
        assert!(!keys().verify(&absent).unwrap().may_operate());
    }

    #[test]
    fn a_token_not_valid_yet_is_refused_with_the_same_leeway_as_expiry() {
        let (now, exp) = (now(), now() + 3600);
        for claim in ["nbf", "iat"] {
            let later = raw(serde_json::json!({"workspace_id": 1, "exp": exp, claim: now + 3600}));
            let refused = keys().verify(&later).unwrap_err();
            assert!(
                matches!(refused, AuthError::NotYetValid { claim: c, .. } if c == claim),
                "{claim}: {refused:?}"
            );
            assert!(refused.to_string().contains("not valid yet"), "{refused}");
            // Within the leeway (as `exp` is): accepted.
            let skewed = raw(serde_json::json!({"workspace_id": 1, "exp": exp, claim: now + 2}));
            assert!(keys().verify(&skewed).is_ok(), "{claim} within the leeway");
            let past = raw(serde_json::json!({"workspace_id": 1, "exp": exp, claim: now - 60}));
            assert!(keys().verify(&past).is_ok(), "{claim} in the past");
            let garbled = raw(serde_json::json!({"workspace_id": 1, "exp": exp, claim: "soon"}));
            assert!(matches!(
                keys().verify(&garbled),
                Err(AuthError::Invalid(_))
            ));
        }
        // The expiry's leeway is the same.
        let just_expired = raw(serde_json::json!({"workspace_id": 1, "exp": now - 2}));
        assert!(keys().verify(&just_expired).is_ok());
    }

    #[test]
    fn a_switch_proof_holds_only_for_its_two_tokens_its_server_and_its_lifetime() {
        let (a, b, now) = ("token-a", "token-b", now());
        let proof = keys().switch_proof(a, b, now + 60);
        assert!(keys().check_switch_proof(&proof, a, b, now));
        assert!(!keys().check_switch_proof(&proof, b, a, now));
        assert!(!keys().check_switch_proof(&proof, a, "token-c", now));
        assert!(!keys().check_switch_proof(&proof, "", b, now));
        assert!(!keys().check_switch_proof(&proof, a, b, now + 61));
        let other = TokenKeys::new(&"x".repeat(32)).unwrap();
        assert!(!other.check_switch_proof(&proof, a, b, now));
        let (_, mac) = proof.split_once('.').unwrap();
        let stretched = format!("{}.{mac}", now + 86_400);
        assert!(!keys().check_switch_proof(&stretched, a, b, now));
        for garbage in ["", ".", "1.zz", "abc"] {
            assert!(!keys().check_switch_proof(garbage, a, b, now));
        }
    }

    #[test]
    fn an_action_proof_holds_only_for_its_sign_in_and_its_server() {
        let proof = keys().action_proof("token-a");
        assert!(keys().check_action_proof(&proof, "token-a"));
        assert!(!keys().check_action_proof(&proof, "token-b"));
        assert!(!keys().check_action_proof(&proof, ""));
        assert!(!keys().check_action_proof(&keys().action_proof(""), ""));
        let other = TokenKeys::new(&"x".repeat(32)).unwrap();
        assert!(!other.check_action_proof(&proof, "token-a"));
        let switch = keys().switch_proof("token-a", "token-a", now() + 60);
        let (_, mac) = switch.split_once('.').unwrap();
        assert!(!keys().check_action_proof(mac, "token-a"));
        for garbage in ["", "zz", "00"] {
            assert!(!keys().check_action_proof(garbage, "token-a"));
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
