//! What the viewer's handlers share: its own pool, the answer slots, the token keys, the live
//! streams and the ports that carry out operator actions on runs and on dead letters.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::auth::TokenKeys;
use super::cors::AllowedOrigins;
use super::dead_letter_actions::DeadLetterActions;
use super::run_actions::RunActions;
use super::streams::LiveStreams;

/// What the viewer's handlers share.
#[derive(Clone, Debug)]
pub struct ViewerState {
    /// The viewer's own database pool (`--viewer-db-connections`, sessions named
    /// `oprun-viewer`), never the pipeline's: every read of the viewer, live streams included,
    /// uses it, so no amount of reading takes a connection a command needs.
    pub pool: PgPool,
    /// The [`super::viewer::ANSWERS_IN_FLIGHT`] slots of answers being built or sent.
    pub answers: Arc<Semaphore>,
    /// Token signing keys.
    pub keys: TokenKeys,
    /// How often an idle SSE stream sends a heartbeat.
    pub heartbeat: Duration,
    /// How often a live stream looks for new events.
    pub poll: Duration,
    /// The live streams open now, and their bounds.
    pub live: Arc<LiveStreams>,
    /// Ends live streams at shutdown.
    pub shutdown: CancellationToken,
    /// Carries out operator actions (the service's, on the viewer's pool).
    pub actions: Arc<dyn RunActions>,
    /// Takes, replays and discards dead letters (the service's, on the viewer's pool).
    pub dead_letters: Arc<dyn DeadLetterActions>,
    /// The origins whose pages may read the live stream (`--viewer-allowed-origins`).
    pub allowed_origins: AllowedOrigins,
}

/// What the cross-origin layer of the live stream reads (`State<AllowedOrigins>`).
impl FromRef<ViewerState> for AllowedOrigins {
    fn from_ref(state: &ViewerState) -> Self {
        state.allowed_origins.clone()
    }
}
