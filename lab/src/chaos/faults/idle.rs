//! The `idle-connections` injection: [`CONNECTIONS`] TCP connections to the
//! primary's `/metrics` address that never send a byte, held while the service works. The
//! service must keep answering (a fresh `GET /healthz` is tried every [`PROBE_EVERY`]) and must
//! close idle connections itself (within 30 s of accepting them; with a connection cap the
//! later ones are accepted only as earlier ones close, so all get [`HOLD`]).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Idle connections opened.
pub const CONNECTIONS: usize = 300;
/// How long they are held at most: three rounds of a 30 s idle timeout behind a cap of 100,
/// with slack.
pub const HOLD: Duration = Duration::from_secs(100);
/// How often `/healthz` is tried on a fresh connection meanwhile.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);
/// How long one connect or one `/healthz` answer may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// What holding the connections showed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdleReport {
    /// Connections established.
    pub opened: usize,
    /// Connections that could not be established.
    pub refused: usize,
    /// Of those opened, closed by the service before the hold ended.
    pub closed_by_service: usize,
    /// The slowest of those closures, in seconds.
    pub slowest_close_secs: u64,
    /// `/healthz` answered with 200 / tried.
    pub health_answers: usize,
    /// `/healthz` tried.
    pub health_tries: usize,
    /// The hold was ended early by `stop`.
    pub cut_short: bool,
}

impl IdleReport {
    /// What is wrong, if anything (nothing when the hold was cut short: the run ended first).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.cut_short {
            return problems;
        }
        if self.opened == 0 {
            problems.push(format!(
                "idle connections: none of {CONNECTIONS} could be opened"
            ));
        }
        let open = self.opened - self.closed_by_service;
        if open > 0 {
            problems.push(format!(
                "idle connections: {open} of {} were still open after {} s (the service must close idle connections within 30 s)",
                self.opened,
                HOLD.as_secs()
            ));
        }
        if self.health_answers == 0 {
            problems.push(format!(
                "idle connections: /healthz never answered 200 while they were held ({} tries)",
                self.health_tries
            ));
        }
        problems
    }
}

impl std::fmt::Display for IdleReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} idle connections opened ({} refused), {} closed by the service (slowest after {} s), /healthz answered {} of {} tries{}",
            self.opened,
            self.refused,
            self.closed_by_service,
            self.slowest_close_secs,
            self.health_answers,
            self.health_tries,
            if self.cut_short { ", cut short by the end of the run" } else { "" }
        )
    }
}

/// Opens `connections` idle connections to `addr`, holds them up to `hold` (or until `stop`),
/// probing `/healthz` meanwhile, and reports.
pub async fn hold_idle(
    addr: SocketAddr,
    connections: usize,
    hold: Duration,
    stop: CancellationToken,
) -> IdleReport {
    let mut report = IdleReport::default();
    let started = Instant::now();
    let until = started + hold;
    let mut held = JoinSet::new();
    for k in 0..connections {
        if Instant::now() >= until || stop.is_cancelled() {
            report.refused += connections - k;
            break;
        }
        match tokio::time::timeout(ATTEMPT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                report.opened += 1;
                held.spawn(wait_for_close(stream, until));
            }
            _ => report.refused += 1,
        }
    }
    let mut next_probe = Instant::now();
    loop {
        tokio::select! {
            joined = held.join_next() => match joined {
                Some(Ok(Some(closed_at))) => {
                    report.closed_by_service += 1;
                    let secs = closed_at.duration_since(started).as_secs();
                    report.slowest_close_secs = report.slowest_close_secs.max(secs);
                }
                Some(_) => {}
                // Every connection closed or held to the end: one more probe if none was made.
                None if report.health_tries > 0 => break,
                None => {
                    report.health_tries += 1;
                    report.health_answers += usize::from(healthz(addr).await);
                    break;
                }
            },
            _ = tokio::time::sleep_until(next_probe) => {
                report.health_tries += 1;
                report.health_answers += usize::from(healthz(addr).await);
                next_probe = Instant::now() + PROBE_EVERY;
            }
            _ = stop.cancelled() => {
                report.cut_short = true;
                break;
            }
        }
    }
    held.abort_all();
    report
}

/// Waits until the peer closes `stream` (its time) or `until` (`None`).
async fn wait_for_close(mut stream: TcpStream, until: Instant) -> Option<Instant> {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout_at(until, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(Instant::now()),
            // An unasked-for answer (e.g. a 408): keep reading until the close.
            Ok(Ok(_)) => {}
        }
    }
}

/// True when a fresh `GET /healthz` is answered with 200 within [`ATTEMPT_TIMEOUT`].
async fn healthz(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: chaos\r\nConnection: close\r\n\r\n")
            .await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        Ok::<_, std::io::Error>(
            head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"),
        )
    };
    matches!(
        tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await,
        Ok(Ok(true))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that answers `/healthz` and closes connections idle for `idle`.
    async fn server(idle: Option<Duration>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 512];
                    let read = match idle {
                        Some(idle) => tokio::time::timeout(idle, stream.read(&mut buf)).await,
                        None => Ok(stream.read(&mut buf).await),
                    };
                    if let Ok(Ok(n)) = read {
                        if n > 0 {
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                                .await;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_server_that_closes_idle_connections_passes() {
        let addr = server(Some(Duration::from_millis(300))).await;
        let report = hold_idle(addr, 20, Duration::from_secs(3), CancellationToken::new()).await;
        assert_eq!(
            (report.opened, report.closed_by_service),
            (20, 20),
            "{report}"
        );
        assert!(report.health_answers > 0, "{report}");
        assert!(report.problems().is_empty(), "{:?}", report.problems());
    }

    #[tokio::test]
    async fn a_server_that_keeps_idle_connections_is_a_problem() {
        let addr = server(None).await;
        let report = hold_idle(addr, 20, Duration::from_secs(1), CancellationToken::new()).await;
        assert_eq!(
            (report.opened, report.closed_by_service),
            (20, 0),
            "{report}"
        );
        let problems = report.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("20 of 20 were still open"));
    }
}
