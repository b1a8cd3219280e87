//! Where replies may go. Replies are published through the default exchange, which reaches any
//! queue by name, so an unchecked `reply_to` lets a producer make the service write into another
//! application's queue, or pose as a command in another namespace (a confused deputy). Replies
//! go only to RabbitMQ direct reply-to and to queues matching `--reply-queue-pattern`.

use regex::Regex;

use crate::broker::publisher::DIRECT_REPLY_TO;
use crate::broker::Topology;

/// The placeholder of the namespace in a reply queue pattern.
pub const NAMESPACE_PLACEHOLDER: &str = "{namespace}";

/// Decides whether a `reply_to` may receive a reply.
#[derive(Debug, Clone)]
pub struct ReplyGuard {
    pattern: String,
    matcher: Regex,
    own_queues: Vec<String>,
}

impl ReplyGuard {
    /// A guard for `pattern` (a glob: `*` is any run of characters, every other character is
    /// literal; `{namespace}` is replaced by the topology's namespace).
    pub fn new(pattern: &str, topology: &Topology) -> Self {
        let pattern = pattern.replace(NAMESPACE_PLACEHOLDER, topology.namespace());
        let literal_parts: Vec<String> = pattern.split('*').map(regex::escape).collect();
        let matcher = Regex::new(&format!("^{}$", literal_parts.join(".*")))
            .expect("an escaped glob is a valid regex");
        Self {
            pattern,
            matcher,
            own_queues: topology.queues().into_iter().map(|q| q.name).collect(),
        }
    }

    /// The pattern with the namespace filled in.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Whether a reply may be published to `reply_to`: direct reply-to (which the broker
    /// delivers only to the channel that asked), or a queue matching the pattern that is not one
    /// of the service's own queues (even a careless pattern never reaches `N.commands`).
    pub fn allows(&self, reply_to: &str) -> bool {
        if is_direct_reply_to(reply_to) {
            return true;
        }
        self.matcher.is_match(reply_to) && !self.own_queues.iter().any(|q| q == reply_to)
    }
}

/// Whether `reply_to` is RabbitMQ direct reply-to: the pseudo-queue itself, or the
/// `amq.rabbitmq.reply-to.<token>` form the broker rewrites it to (clients cannot declare
/// `amq.*` queues, so neither is a real queue). The broker returns every `mandatory` publish to
/// it, delivered or not, so whether a requester is still there cannot be learnt from a publish.
pub fn is_direct_reply_to(reply_to: &str) -> bool {
    reply_to
        .strip_prefix(DIRECT_REPLY_TO)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(pattern: &str) -> ReplyGuard {
        ReplyGuard::new(pattern, &Topology::new("acme").unwrap())
    }

    #[test]
    fn the_default_pattern_admits_direct_reply_to_and_the_namespaces_reply_queues_only() {
        let g = guard(crate::config::DEFAULT_REPLY_QUEUE_PATTERN);
        assert_eq!(g.pattern(), "acme.reply.*");
        assert!(g.allows("amq.rabbitmq.reply-to"));
        assert!(g.allows("amq.rabbitmq.reply-to.g1h2AA5yZXBseUAyNzYzNTE2MQAAKvkAAAAAZ0Vz"));
        assert!(g.allows("acme.reply.billing"));
        for refused in [
            "acme.commands",
            "acme.commands.dlq",
            "other.reply.x",
            "acme.replyx",
            "billing-queue",
            "",
            "xacme.reply.y",
            "amq.rabbitmq.reply-tox",
        ] {
            assert!(!g.allows(refused), "{refused}");
        }
    }

    #[test]
    fn patterns_are_globs_with_literal_dots_and_never_reach_the_services_own_queues() {
        let g = guard("replies-*-v1");
        assert!(g.allows("replies-a.b-v1"));
        assert!(!g.allows("replies-a-v2"));
        let dots = guard("a.b");
        assert!(!dots.allows("axb"));
        let careless = guard("*");
        assert!(careless.allows("anything"));
        assert!(!careless.allows("acme.commands"));
        assert!(!careless.allows("acme.commands.dlq"));
    }
}
