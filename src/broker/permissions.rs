//! Least-privilege RabbitMQ users of a namespace, as data: a producer that may only publish
//! commands, the service, and a subscriber that may only bind its own queues to `N.events`.
//!
//! RabbitMQ permissions are three regular expressions over resource names: *configure*
//! (declare/delete), *write* (publish to an exchange, bind a queue) and *read* (consume from a
//! queue, bind from an exchange). `amq.default` is the default exchange (replies).

/// One user's permissions on the vhost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPermissions {
    /// The user name, `N.<role>`.
    pub user: String,
    /// The environment variable holding the password.
    pub password_env: &'static str,
    /// Resources the user may declare or delete.
    pub configure: String,
    /// Exchanges it may publish to and queues it may bind.
    pub write: String,
    /// Queues it may consume and exchanges it may bind from.
    pub read: String,
}

/// The three users of namespace `ns` (the namespace is restricted to `[A-Za-z0-9_.-]`, so
/// escaping its dots is all it needs).
pub fn namespace_users(ns: &str) -> Vec<UserPermissions> {
    let n = ns.replace('.', r"\.");
    vec![
        UserPermissions {
            user: format!("{ns}.producer"),
            password_env: "OPRUN_PRODUCER_PASSWORD",
            configure: "^$".into(),
            write: format!(r"^{n}\.commands$"),
            read: "^$".into(),
        },
        UserPermissions {
            user: format!("{ns}.service"),
            password_env: "OPRUN_SERVICE_PASSWORD",
            configure: format!(r"^{n}\.(commands|commands\.dlq|dlx|events|jobs)$"),
            write: format!(r"^{n}\.(commands|commands\.dlq|dlx|events|jobs)$|^amq\.default$"),
            read: format!(r"^{n}\.(commands|commands\.dlq|dlx)$"),
        },
        UserPermissions {
            user: format!("{ns}.subscriber"),
            password_env: "OPRUN_SUBSCRIBER_PASSWORD",
            configure: format!(r"^{n}\.subscriber\..+$|^amq\.gen-.+$"),
            write: format!(r"^{n}\.subscriber\..+$|^amq\.gen-.+$"),
            read: format!(r"^{n}\.events$|^{n}\.subscriber\..+$|^amq\.gen-.+$"),
        },
    ]
}
