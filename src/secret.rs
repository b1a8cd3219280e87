//! Secrets in settings: a password or a token is a [`SecretString`], a URL that may carry a
//! password is a [`SecretUrl`]. Neither prints its secret through `Debug`; the value is read
//! with `expose_secret`, where it is used. A leaf: it imports nothing of the crate, so that the
//! settings and the clients that take them can both use it.

use std::fmt;
use std::str::FromStr;

pub use secrecy::{ExposeSecret, SecretString};

/// A URL whose password is a secret: `Debug` shows it with the password replaced by `***`.
#[derive(Clone)]
pub struct SecretUrl(SecretString);

impl SecretUrl {
    /// The URL as given, password included.
    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }

    /// The URL with its password replaced by `***` (for logs).
    pub fn redacted(&self) -> String {
        redact_url(self.expose_secret())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.redacted(), f)
    }
}

impl From<String> for SecretUrl {
    fn from(url: String) -> Self {
        Self(url.into())
    }
}

impl From<&str> for SecretUrl {
    fn from(url: &str) -> Self {
        Self(url.into())
    }
}

impl FromStr for SecretUrl {
    type Err = std::convert::Infallible;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        Ok(url.into())
    }
}

impl AsRef<str> for SecretUrl {
    fn as_ref(&self) -> &str {
        self.expose_secret()
    }
}

/// Replaces the password of a URL with `***` (for logs and Debug). A URL with several hosts
/// (libpq's `postgres://u:p@h1:5432,h2:5432/db`, which is no URL to the `url` crate) keeps its
/// hosts and loses its password the same way.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => redact_host_list_url(url).unwrap_or_else(|| "<unparseable url>".to_owned()),
    }
}

/// `scheme://user:***@hosts/rest` for a URL whose authority holds a comma-separated host list.
fn redact_host_list_url(url: &str) -> Option<String> {
    let parts = Authority::split(url)?;
    if !parts.hosts.contains(',') {
        return None;
    }
    let Some(user) = parts.user else {
        return Some(url.to_owned());
    };
    let user = match user.split_once(':') {
        Some((name, _password)) => format!("{name}:***"),
        None => user.to_owned(),
    };
    Some(format!(
        "{}://{user}@{}{}",
        parts.scheme, parts.hosts, parts.tail
    ))
}

/// A URL cut around its authority by hand, for the forms the `url` crate does not take
/// (libpq's host lists, `postgres://u:p@h1:5432,h2:5432/db`): what `redact_url` shows and what
/// `store::hosts` connects to read it the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authority<'a> {
    /// Before `://`.
    pub scheme: &'a str,
    /// The user info before the last `@` (name, and `:password` when given), if any.
    pub user: Option<&'a str>,
    /// The host list after it.
    pub hosts: &'a str,
    /// The path, query and fragment, from the first `/`, `?` or `#` after `://`.
    pub tail: &'a str,
}

impl<'a> Authority<'a> {
    /// The parts of `url`, or `None` when it has no `://`.
    pub fn split(url: &'a str) -> Option<Self> {
        let (scheme, rest) = url.split_once("://")?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (user, hosts) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        Some(Self {
            scheme,
            user,
            hosts,
            tail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_url_shows_its_password_as_stars() {
        let url = SecretUrl::from("amqps://svc:hunter2@mq:5671/%2f");
        let shown = format!("{url:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("svc:***@mq:5671"), "{shown}");
        assert_eq!(url.expose_secret(), "amqps://svc:hunter2@mq:5671/%2f");
    }

    #[test]
    fn a_url_with_several_hosts_shows_its_hosts_and_not_its_password() {
        let url = SecretUrl::from("postgres://app:hunter2@db1:5432,db2:5432/runs?sslmode=require");
        assert_eq!(
            url.redacted(),
            "postgres://app:***@db1:5432,db2:5432/runs?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://app@db1,db2/runs"),
            "postgres://app@db1,db2/runs"
        );
        assert_eq!(redact_url("not a url"), "<unparseable url>");
    }
}
