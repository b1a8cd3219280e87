//! The `viewers` injection: while the progress is published, [`PAGERS`] readers page through
//! `GET /v1/runs/{id}/events` of one large run (the failure flood's, else the run with the most
//! steps) from the start, over and over, and [`STREAMS`] live streams follow
//! `GET /v1/runs/{id}/live`, reconnecting with `Last-Event-ID` whenever a stream ends (the
//! completion, the service's stream lifetime, a SIGKILL), so late events after the completion
//! come too. All use one token of the run's scope, minted with the secret the primary was
//! started with: [`STREAMS`] is within the service's cap of live streams per token.
//!
//! Each reader checks what it gets: sequences strictly increasing (a repeat or a step back, a
//! numbering that restarted, counts as `out_of_order`), and without a gap, unless every number
//! in the gap is no longer stored when the reader looks right after (retention pruned it
//! before it was read; pruning never removes a run's last event). Numbers skipped while still
//! stored count as `skipped`. Both go into the closing line's `viewer_gaps`. Transport errors,
//! 5xx answers (the primary killed or the database restarting) and 429s are counted and
//! retried; a 429 is a problem, since one token holds at most [`STREAMS`] streams.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Readers paging through the events.
pub const PAGERS: usize = 3;
/// Live streams, all of one token (the service allows 8 per token).
pub const STREAMS: usize = 4;
/// Pause before a reader tries again after an error, and between two passes.
const RETRY: Duration = Duration::from_millis(250);
/// Longest wait for one page, or for the next bytes of a live stream (heartbeats included).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Examples kept per report.
const EXAMPLES: usize = 5;
/// How long the viewer's token is valid: longer than any run.
const TOKEN_LIFETIME_SECS: u64 = 3 * 3600;

/// What the readers read, and where.
#[derive(Debug, Clone)]
pub struct ViewerTarget {
    /// `http://addr` of the primary's viewer.
    pub base: String,
    /// A bearer token of the run's scope.
    pub token: String,
    /// The large run.
    pub run_id: i64,
}

impl ViewerTarget {
    /// A target of run `run_id` (of `workspace_id`, `tenant_id`) at `base`, its token signed
    /// with `secret`.
    pub fn new(
        base: String,
        secret: &str,
        run_id: i64,
        workspace_id: i64,
        tenant_id: Option<i64>,
    ) -> Result<Self, String> {
        let token = crate::oprun::viewer_token(
            secret,
            workspace_id,
            tenant_id,
            "oprun-lab chaos",
            TOKEN_LIFETIME_SECS,
            None,
        )?;
        Ok(Self {
            base,
            token,
            run_id,
        })
    }
}

/// What the readers saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViewerReport {
    /// Complete passes of the pagers.
    pub passes: u64,
    /// Pages answered.
    pub pages: u64,
    /// Events read from pages.
    pub paged: u64,
    /// Live streams answered 200.
    pub streams: u64,
    /// Events read from live streams.
    pub streamed: u64,
    /// Gaps whose numbers were all pruned before they could be read.
    pub pruned_gaps: u64,
    /// Numbers skipped although still stored.
    pub skipped: u64,
    /// Sequences not above the one before (a repeat, or a numbering that restarted).
    pub out_of_order: u64,
    /// Live streams answered 429.
    pub refused: u64,
    /// Transport errors and 5xx answers (retried).
    pub errors: u64,
    /// The run answered 404 (a reader stops then).
    pub gone: u64,
    /// Examples of what went wrong.
    pub examples: Vec<String>,
}

impl ViewerReport {
    /// The closing line's `viewer_gaps`.
    pub fn figure(&self) -> u64 {
        self.skipped + self.out_of_order
    }

    /// Failures no figure counts.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.refused > 0 {
            problems.push(format!(
                "viewers: {} live stream(s) refused with 429 although the token held at most {STREAMS}",
                self.refused
            ));
        }
        if self.gone > 0 {
            problems.push(format!(
                "viewers: the large run answered 404 {} time(s)",
                self.gone
            ));
        }
        if self.pages == 0 || self.streams == 0 {
            problems.push(format!(
                "viewers: nothing was read ({} pages, {} live streams)",
                self.pages, self.streams
            ));
        }
        problems
    }

    fn example(&mut self, text: String) {
        if self.examples.len() < EXAMPLES {
            self.examples.push(text);
        }
    }
}

impl std::fmt::Display for ViewerReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "viewers: {} pages ({} events, {} full passes), {} live streams ({} events), {} gaps pruned before they were read, {} skipped, {} out of order, {} refused, {} errors retried",
            self.pages,
            self.paged,
            self.passes,
            self.streams,
            self.streamed,
            self.pruned_gaps,
            self.skipped,
            self.out_of_order,
            self.refused,
            self.errors
        )
    }
}

/// What the next sequence a reader gets means after `last` (0: nothing read yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// `last + 1`.
    InOrder,
    /// Above `last + 1`: the numbers strictly between are missing.
    Gap { after: i64, before: i64 },
    /// Not above `last`.
    Backwards,
}

fn next(last: i64, sequence: i64) -> Next {
    if sequence <= last {
        Next::Backwards
    } else if sequence == last + 1 {
        Next::InOrder
    } else {
        Next::Gap {
            after: last,
            before: sequence,
        }
    }
}

/// One reader's position in the run, and the checks of what comes next.
struct Order<'a> {
    pool: &'a PgPool,
    run_id: i64,
    last: i64,
    stop: &'a CancellationToken,
}

impl Order<'_> {
    /// Checks `sequence` and moves on to it (unless it goes backwards).
    async fn accept(&mut self, sequence: i64, what: &str, report: &Mutex<ViewerReport>) {
        match next(self.last, sequence) {
            Next::InOrder => self.last = sequence,
            Next::Backwards => {
                let mut report = report.lock().expect("not poisoned");
                report.out_of_order += 1;
                report.example(format!("{what}: #{sequence} after #{}", self.last));
            }
            Next::Gap { after, before } => {
                let Some(stored) = self.stored_between(after, before).await else {
                    return;
                };
                let mut report = report.lock().expect("not poisoned");
                if stored == 0 {
                    report.pruned_gaps += 1;
                } else {
                    report.skipped += stored;
                    report.example(format!(
                        "{what}: #{before} after #{after}, {stored} stored between"
                    ));
                }
                self.last = sequence;
            }
        }
    }

    /// Events of the run stored now strictly between `after` and `before`; `None` when stopped
    /// before the database answered.
    async fn stored_between(&self, after: i64, before: i64) -> Option<u64> {
        loop {
            let count = sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM operation_run_events WHERE run_id = $1 AND sequence > $2 AND sequence < $3",
            )
            .bind(self.run_id)
            .bind(after)
            .bind(before)
            .fetch_one(self.pool)
            .await;
            match count {
                Ok(n) => return Some(n as u64),
                Err(_) if !self.stop.is_cancelled() => tokio::time::sleep(RETRY).await,
                Err(_) => return None,
            }
        }
    }
}

/// Runs the pagers and the live streams on `target` until `stop`; their report.
pub async fn read(target: ViewerTarget, pool: PgPool, stop: CancellationToken) -> ViewerReport {
    let report = Arc::new(Mutex::new(ViewerReport::default()));
    let http = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
    {
        Ok(http) => http,
        Err(e) => {
            let mut report = ViewerReport::default();
            report.example(format!("no HTTP client: {e}"));
            return report;
        }
    };
    let mut readers = JoinSet::new();
    for k in 0..PAGERS {
        let (target, pool, stop, report, http) = (
            target.clone(),
            pool.clone(),
            stop.clone(),
            report.clone(),
            http.clone(),
        );
        readers.spawn(async move { page(k, &http, &target, &pool, &stop, &report).await });
    }
    for k in 0..STREAMS {
        let (target, pool, stop, report, http) = (
            target.clone(),
            pool.clone(),
            stop.clone(),
            report.clone(),
            http.clone(),
        );
        readers.spawn(async move { follow(k, &http, &target, &pool, &stop, &report).await });
    }
    while readers.join_next().await.is_some() {}
    let report = report.lock().expect("not poisoned").clone();
    report
}

/// The outcome of one request.
enum Answer<T> {
    Ok(T),
    /// Try again after [`RETRY`].
    Retry,
    /// The run is gone: stop reading.
    Gone,
}

/// Pager `k`: passes from the first event to the last, over and over, until `stop`.
async fn page(
    k: usize,
    http: &reqwest::Client,
    target: &ViewerTarget,
    pool: &PgPool,
    stop: &CancellationToken,
    report: &Mutex<ViewerReport>,
) {
    let what = format!("pager {k}");
    'passes: while !stop.is_cancelled() {
        let mut order = Order {
            pool,
            run_id: target.run_id,
            last: 0,
            stop,
        };
        let mut after = 0;
        loop {
            let answer = tokio::select! {
                a = one_page(http, target, after, report) => a,
                _ = stop.cancelled() => return,
            };
            match answer {
                Answer::Ok((sequences, next_after)) => {
                    report.lock().expect("not poisoned").paged += sequences.len() as u64;
                    for sequence in sequences {
                        order.accept(sequence, &what, report).await;
                    }
                    match next_after {
                        Some(next) => after = next,
                        None => {
                            report.lock().expect("not poisoned").passes += 1;
                            break;
                        }
                    }
                }
                Answer::Retry => pause(stop).await,
                Answer::Gone => break 'passes,
            }
        }
        pause(stop).await;
    }
}

/// One page after `after`: its sequences and `next_after`.
async fn one_page(
    http: &reqwest::Client,
    target: &ViewerTarget,
    after: i64,
    report: &Mutex<ViewerReport>,
) -> Answer<(Vec<i64>, Option<i64>)> {
    let url = format!(
        "{}/v1/runs/{}/events?after={after}",
        target.base, target.run_id
    );
    let response = http
        .get(url)
        .bearer_auth(&target.token)
        .timeout(READ_TIMEOUT)
        .send()
        .await;
    let body = match response {
        Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {
            report.lock().expect("not poisoned").gone += 1;
            return Answer::Gone;
        }
        Ok(r) if r.status().is_success() => r.bytes().await,
        Ok(r) => {
            let mut report = report.lock().expect("not poisoned");
            report.errors += 1;
            if !r.status().is_server_error() {
                report.example(format!("events page: {}", r.status()));
            }
            return Answer::Retry;
        }
        Err(e) => Err(e),
    };
    let page: Option<Value> = body.ok().and_then(|b| serde_json::from_slice(&b).ok());
    let Some(page) = page else {
        report.lock().expect("not poisoned").errors += 1;
        return Answer::Retry;
    };
    report.lock().expect("not poisoned").pages += 1;
    let sequences = page["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["data"]["sequence"].as_i64())
        .collect();
    Answer::Ok((sequences, page["next_after"].as_i64()))
}

/// Live stream `k`: follows the run, resuming after the last sequence it got, until `stop`.
async fn follow(
    k: usize,
    http: &reqwest::Client,
    target: &ViewerTarget,
    pool: &PgPool,
    stop: &CancellationToken,
    report: &Mutex<ViewerReport>,
) {
    let what = format!("live stream {k}");
    let mut order = Order {
        pool,
        run_id: target.run_id,
        last: 0,
        stop,
    };
    while !stop.is_cancelled() {
        let gone = tokio::select! {
            g = one_stream(http, target, &mut order, &what, report) => g,
            _ = stop.cancelled() => return,
        };
        if gone {
            return;
        }
        // A completed run's stream ends at once when nothing is new: look again shortly.
        pause(stop).await;
    }
}

/// One live connection, resuming after `order.last`, read to its end; true when the run is
/// gone.
async fn one_stream(
    http: &reqwest::Client,
    target: &ViewerTarget,
    order: &mut Order<'_>,
    what: &str,
    report: &Mutex<ViewerReport>,
) -> bool {
    let url = format!("{}/v1/runs/{}/live", target.base, target.run_id);
    let mut request = http.get(url).bearer_auth(&target.token);
    if order.last > 0 {
        request = request.header("Last-Event-ID", order.last.to_string());
    }
    let mut response = match request.send().await {
        Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {
            report.lock().expect("not poisoned").gone += 1;
            return true;
        }
        Ok(r) if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => {
            let mut report = report.lock().expect("not poisoned");
            report.refused += 1;
            report.example(format!("{what}: 429"));
            return false;
        }
        Ok(r) if r.status().is_success() => r,
        Ok(_) | Err(_) => {
            report.lock().expect("not poisoned").errors += 1;
            return false;
        }
    };
    report.lock().expect("not poisoned").streams += 1;
    let mut buffer = String::new();
    loop {
        let chunk = match tokio::time::timeout(READ_TIMEOUT, response.chunk()).await {
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) => return false,
            Ok(Err(_)) | Err(_) => {
                report.lock().expect("not poisoned").errors += 1;
                return false;
            }
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            if let Some(sequence) = sse_id(&frame) {
                report.lock().expect("not poisoned").streamed += 1;
                order.accept(sequence, what, report).await;
            }
        }
    }
}

/// The `id:` of one SSE frame, if it has one (heartbeat comments have none).
fn sse_id(frame: &str) -> Option<i64> {
    frame
        .lines()
        .find_map(|line| line.strip_prefix("id:"))
        .and_then(|id| id.trim().parse().ok())
}

async fn pause(stop: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(RETRY) => {}
        _ = stop.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use operation_runs::http::auth::TokenKeys;

    #[test]
    fn a_reader_sees_a_step_back_or_repeat_as_out_of_order_and_a_jump_as_a_gap() {
        assert_eq!(next(0, 1), Next::InOrder);
        assert_eq!(next(4, 5), Next::InOrder);
        assert_eq!(
            next(0, 7),
            Next::Gap {
                after: 0,
                before: 7
            }
        );
        assert_eq!(
            next(3, 5),
            Next::Gap {
                after: 3,
                before: 5
            }
        );
        assert_eq!(next(5, 5), Next::Backwards);
        assert_eq!(next(5, 1), Next::Backwards);
    }

    #[test]
    fn an_sse_frame_yields_its_id_and_a_heartbeat_none() {
        let frame = "id: 12\nevent: operation_run.progressed\ndata: {\"a\":1}\n\n";
        assert_eq!(sse_id(frame), Some(12));
        assert_eq!(sse_id(":\n\n"), None);
    }

    #[test]
    fn a_token_for_a_tenant_run_names_its_tenant_and_one_for_a_workspace_run_names_none() {
        let secret = "a-chaos-viewer-secret-of-at-least-32-bytes";
        let keys = TokenKeys::new(secret).unwrap();
        let tenant = ViewerTarget::new("http://x".into(), secret, 7, 2, Some(105)).unwrap();
        let claims = keys.verify(&tenant.token).unwrap();
        assert_eq!(
            (claims.workspace_id, claims.tenant_ids),
            (2, Some(vec![105]))
        );
        let workspace = ViewerTarget::new("http://x".into(), secret, 7, 3, None).unwrap();
        let claims = keys.verify(&workspace.token).unwrap();
        assert_eq!((claims.workspace_id, claims.tenant_ids), (3, None));
    }

    #[test]
    fn skipped_and_out_of_order_make_the_figure_and_a_429_is_a_problem() {
        let report = ViewerReport {
            pages: 3,
            streams: 1,
            skipped: 2,
            out_of_order: 1,
            pruned_gaps: 9,
            ..ViewerReport::default()
        };
        assert_eq!(report.figure(), 3);
        assert!(report.problems().is_empty());
        let refused = ViewerReport {
            refused: 1,
            ..report
        };
        assert_eq!(refused.problems().len(), 1);
    }
}
