//! Opening AMQP connections. `amqps://` URLs use TLS (rustls with the platform's roots).
//!
//! A broker may be a cluster: several URLs, one per node ([`AmqpUrls`]). A [`Connector`] tries
//! them in order from where it last succeeded and moves on to the next when one fails; after a
//! connection is lost, [`Connector::rotate`] makes the next attempt start with the following
//! node, so a dead node is tried last, not first.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

use super::BrokerError;
use crate::secret::redact_url;

/// Most URLs one list may hold: a RabbitMQ cluster has a handful of nodes, and every URL may
/// cost a connect timeout before the next is tried.
pub const MAX_URLS: usize = 16;

/// How long one URL may take to accept a connection (TCP, TLS and the AMQP handshake) before
/// the next is tried: a blackholed node must not hold the service for the OS's TCP timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The AMQP URLs of one broker (the nodes of one cluster), in order of preference. `Debug` and
/// `Display` redact passwords.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrls {
    urls: Vec<String>,
}

impl AmqpUrls {
    /// The URLs in `items`, each of which may itself be a comma-separated list (a flag given
    /// several times, an environment variable listing several): surrounding spaces are trimmed,
    /// empty entries dropped. A comma inside a password is written `%2C`.
    ///
    /// Errors when no URL is left, when more than [`MAX_URLS`] are given, or when one is not an
    /// `amqp://` or `amqps://` URL.
    pub fn parse<I, S>(items: I) -> Result<Self, BrokerError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let urls = Self::unchecked(items).urls;
        if urls.is_empty() {
            return Err(BrokerError::InvalidUrl("no AMQP URL given".into()));
        }
        if urls.len() > MAX_URLS {
            return Err(BrokerError::InvalidUrl(format!(
                "{} AMQP URLs given, at most {MAX_URLS} are accepted",
                urls.len()
            )));
        }
        for url in &urls {
            let scheme = url::Url::parse(url).map(|u| u.scheme().to_owned());
            if !matches!(scheme.as_deref(), Ok("amqp" | "amqps")) {
                return Err(BrokerError::InvalidUrl(format!(
                    "{} is not an amqp:// or amqps:// URL",
                    redact_url(url)
                )));
            }
        }
        Ok(Self { urls })
    }

    /// Like [`AmqpUrls::parse`] without the checks: connecting reports what is wrong.
    pub fn unchecked<I, S>(items: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let urls = items
            .into_iter()
            .flat_map(|item| {
                item.as_ref()
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        Self { urls }
    }

    /// How many URLs (nodes) there are.
    pub fn len(&self) -> usize {
        self.urls.len()
    }

    /// True when there is none (only possible for a list that was not parsed).
    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// The URLs, passwords included (for connecting or handing to a child process).
    pub fn as_slice(&self) -> &[String] {
        &self.urls
    }

    /// The URLs in the order they are tried when starting at `start`: `start`, the ones after
    /// it, then the ones before it.
    pub fn starting_at(&self, start: usize) -> impl Iterator<Item = (usize, &str)> {
        let n = self.urls.len();
        (0..n).map(move |k| {
            let i = (start + k) % n;
            (i, self.urls[i].as_str())
        })
    }
}

impl fmt::Display for AmqpUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<String> = self.urls.iter().map(|u| redact_url(u)).collect();
        f.write_str(&shown.join(","))
    }
}

impl fmt::Debug for AmqpUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpUrls({self})")
    }
}

/// Connects to one of a broker's URLs, remembering which one answered.
#[derive(Debug)]
pub struct Connector {
    urls: AmqpUrls,
    /// The URL tried first next time.
    next: AtomicUsize,
}

impl Connector {
    /// A connector that tries `urls` from the first.
    pub fn new(urls: AmqpUrls) -> Self {
        Self {
            urls,
            next: AtomicUsize::new(0),
        }
    }

    /// The URLs.
    pub fn urls(&self) -> &AmqpUrls {
        &self.urls
    }

    /// The index of the URL tried first next time.
    pub fn next_index(&self) -> usize {
        self.next.load(Ordering::Relaxed)
    }

    /// Connects to the first URL that answers, starting with the one that answered last time
    /// (or the one after it, following [`Connector::rotate`]); each failure is logged (password
    /// redacted) and the next URL tried. The error of the last URL when none answers.
    pub async fn connect(&self, name: &str) -> Result<Connection, BrokerError> {
        if self.urls.is_empty() {
            return Err(BrokerError::InvalidUrl("no AMQP URL given".into()));
        }
        let start = self.next_index() % self.urls.len();
        let mut last = None;
        for (i, url) in self.urls.starting_at(start) {
            match connect_one(url, name).await {
                Ok(connection) => {
                    self.next.store(i, Ordering::Relaxed);
                    if self.urls.len() > 1 {
                        tracing::info!(url = %redact_url(url), "connected to the broker");
                    }
                    return Ok(connection);
                }
                Err(e) => {
                    if self.urls.len() > 1 {
                        tracing::warn!(url = %redact_url(url), error = %e, "broker node did not answer, trying the next");
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.expect("at least one URL was tried"))
    }

    /// Makes the next [`Connector::connect`] start with the URL after the one that answered
    /// last: called when a connection is lost, since its node may be the one that went away.
    pub fn rotate(&self) {
        let n = self.urls.len().max(1);
        let _ = self
            .next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |i| Some((i + 1) % n));
    }
}

/// Connects to `amqp_urls` (one URL, or several separated by commas: the first that answers),
/// naming the connection `name` in the management UI.
pub async fn connect(amqp_urls: &str, name: &str) -> Result<Connection, BrokerError> {
    Connector::new(AmqpUrls::parse([amqp_urls])?)
        .connect(name)
        .await
}

/// Connects to exactly one URL, within [`CONNECT_TIMEOUT`].
async fn connect_one(url: &str, name: &str) -> Result<Connection, BrokerError> {
    let properties = ConnectionProperties::default().with_connection_name(name.to_owned().into());
    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, properties)).await {
        Ok(connected) => Ok(connected?),
        Err(_) => Err(BrokerError::Stopped(format!(
            "{} did not accept a connection within {CONNECT_TIMEOUT:?}",
            redact_url(url)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_and_comma_separated_urls_make_one_list() {
        let urls = AmqpUrls::parse([
            "amqp://a:1@n1:5672/%2f, amqp://a:1@n2:5672/%2f",
            "amqps://a:1@n3:5671/%2f,",
        ])
        .unwrap();
        assert_eq!(
            urls.as_slice(),
            [
                "amqp://a:1@n1:5672/%2f",
                "amqp://a:1@n2:5672/%2f",
                "amqps://a:1@n3:5671/%2f"
            ]
        );
        assert_eq!(urls.len(), 3);
    }

    #[test]
    fn an_empty_list_a_foreign_scheme_and_too_many_urls_are_refused() {
        assert!(AmqpUrls::parse([" , "]).is_err());
        assert!(AmqpUrls::parse(Vec::<String>::new()).is_err());
        let err = AmqpUrls::parse(["amqp://n1/%2f,http://u:secret@n2/"]).unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
        let many = vec!["amqp://n/%2f"; MAX_URLS + 1];
        assert!(AmqpUrls::parse(many).is_err());
        assert!(AmqpUrls::parse(vec!["amqp://n/%2f"; MAX_URLS]).is_ok());
    }

    #[test]
    fn every_password_is_redacted() {
        let urls = AmqpUrls::parse(["amqp://svc:hunter2@n1:5672/%2f,amqps://svc:swordfish@n2/%2f"])
            .unwrap();
        for shown in [urls.to_string(), format!("{urls:?}")] {
            assert!(
                !shown.contains("hunter2") && !shown.contains("swordfish"),
                "{shown}"
            );
            assert!(shown.contains("svc:***@n1") && shown.contains("svc:***@n2"));
        }
    }

    #[test]
    fn urls_are_tried_from_the_start_wrapping_around() {
        let urls = AmqpUrls::parse(["amqp://n0/,amqp://n1/,amqp://n2/"]).unwrap();
        let order = |start| urls.starting_at(start).map(|(i, _)| i).collect::<Vec<_>>();
        assert_eq!(order(0), [0, 1, 2]);
        assert_eq!(order(1), [1, 2, 0]);
        assert_eq!(order(2), [2, 0, 1]);
    }

    #[test]
    fn rotating_moves_the_first_try_to_the_next_url_and_wraps() {
        let connector = Connector::new(AmqpUrls::parse(["amqp://n0/,amqp://n1/"]).unwrap());
        assert_eq!(connector.next_index(), 0);
        connector.rotate();
        assert_eq!(connector.next_index(), 1);
        connector.rotate();
        assert_eq!(connector.next_index(), 0);
    }

    #[tokio::test]
    async fn when_no_url_answers_the_connect_fails_and_the_cursor_stays() {
        // Nothing listens on ports 1 and 2: both are tried, the error is the last URL's, and the
        // cursor stays where it was. (tests/it/broker_addresses.rs: a live second URL is used.)
        let connector = Connector::new(
            AmqpUrls::parse([
                "amqp://guest:guest@127.0.0.1:1/%2f,amqp://guest:guest@127.0.0.1:2/%2f",
            ])
            .unwrap(),
        );
        assert!(connector.connect("test").await.is_err());
        assert_eq!(connector.next_index(), 0);
    }
}
