//! The operator's actions sent over the API (the `operator-actions` injection's half that does
//! not go through the broker): `POST /v1/runs/{id}/cancel|retry|fail` to the primary's viewer,
//! with an operate token of the run's workspace and tenant and the planned command id as
//! `Idempotency-Key`. A request whose answer is lost (the primary SIGKILLed or restarting, the
//! database restarting: no answer, 5xx) is sent again with the same key after a pause, as a
//! client should, until the deadline; the checks then find each action applied once, like a
//! broker command redelivered.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::StatusCode;
use tokio::time::Instant;

use crate::chaos::plan::model::{ApiAction, Message, OPERATOR};

/// How long each token is valid: longer than any run.
const TOKEN_LIFETIME_SECS: u64 = 3600;
/// The first pause before a request is sent again; doubled up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// The longest pause between two tries.
const MAX_PAUSE: Duration = Duration::from_secs(2);
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The API the operator acts through, and what came of it.
pub struct OperatorApi {
    http: reqwest::Client,
    base: String,
    secret: String,
    /// Requests answered 200.
    pub answered: u64,
    /// Tries sent again after a lost answer or a 5xx.
    pub resent: u64,
    /// Answers no correct service gives (the action is then missing and counted as lost).
    pub problems: Vec<String>,
}

impl OperatorApi {
    /// The API of the viewer at `addr`, its tokens signed with `secret`.
    pub fn new(addr: SocketAddr, secret: &str) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        Ok(Self {
            http,
            base: format!("http://{addr}"),
            secret: secret.to_owned(),
            answered: 0,
            resent: 0,
            problems: Vec::new(),
        })
    }

    /// Sends `message`'s action (its `message_id` the key) until it is answered or `deadline`.
    pub async fn send(&mut self, message: &Message, action: &ApiAction, deadline: Instant) {
        let token = match crate::oprun::viewer_token(
            &self.secret,
            action.workspace_id,
            action.tenant_id,
            OPERATOR,
            TOKEN_LIFETIME_SECS,
            Some("operate"),
        ) {
            Ok(token) => token,
            Err(e) => {
                self.problems.push(format!("operator API: no token: {e}"));
                return;
            }
        };
        let url = format!(
            "{}/v1/runs/{}/{}",
            self.base,
            action.run_id,
            action.action.as_str()
        );
        let body = match &action.reason {
            Some(reason) => serde_json::json!({ "reason": reason }).to_string(),
            None => String::new(),
        };
        let mut pause = FIRST_PAUSE;
        loop {
            let sent = self
                .http
                .post(&url)
                .bearer_auth(&token)
                .header("idempotency-key", &message.message_id)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            let why = match sent {
                Ok(r) if r.status() == StatusCode::OK => {
                    self.answered += 1;
                    return;
                }
                Ok(r) if r.status().is_server_error() => format!("{}", r.status()),
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    return self.problem(message, action, format!("answered {status}: {text}"));
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() + pause >= deadline {
                let what = format!("not answered by the deadline: {why}");
                return self.problem(message, action, what);
            }
            self.resent += 1;
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    fn problem(&mut self, message: &Message, action: &ApiAction, what: String) {
        self.problems.push(format!(
            "operator API: {} of run {} ({}) {what}",
            action.action.as_str(),
            action.run_id,
            message.message_id
        ));
    }
}
