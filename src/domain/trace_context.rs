//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>) carried from a command to its run's
//! events and job.
//!
//! A command may carry AMQP headers `traceparent` and `tracestate`. A valid `traceparent` is kept
//! (with its `tracestate`); an invalid one is ignored, never a refusal (tracing must not cost a
//! command), and, as the W3C rules say, its `tracestate` is ignored with it. A dispatch without a
//! valid one starts a new trace ([`TraceContext::new_root`], with ids the service draws).

use std::fmt;

/// The AMQP header (and CloudEvents attribute) holding the trace parent.
pub const TRACEPARENT: &str = "traceparent";
/// The AMQP header (and CloudEvents attribute) holding vendor trace state.
pub const TRACESTATE: &str = "tracestate";
/// Longest `tracestate` kept, in bytes (the W3C limit is 512; a longer one is dropped whole).
pub const MAX_TRACESTATE_BYTES: usize = 512;
/// Length of a version-00 `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`.
const TRACEPARENT_LEN: usize = 55;

/// A validated trace context: `traceparent` in its canonical version-00 form, and the optional
/// `tracestate` that came with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    traceparent: String,
    tracestate: Option<String>,
}

impl TraceContext {
    /// Parses the headers of a delivery: `None` when `traceparent` is absent or invalid.
    ///
    /// Accepted: `version-trace_id-parent_id-flags`, lowercase hex, trace id and parent id not
    /// all zeros, version not `ff`. A version above `00` may append fields after a `-` (W3C
    /// forward compatibility); the first 55 characters are kept, re-labelled version `00` as
    /// the W3C asks of a version-00 implementation that passes it on. `tracestate` is kept when
    /// it is at most [`MAX_TRACESTATE_BYTES`] of printable ASCII, else dropped alone.
    pub fn from_headers(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<Self> {
        let traceparent = canonical_traceparent(traceparent?)?;
        let tracestate = tracestate
            .map(str::trim)
            .filter(|s| valid_tracestate(s))
            .map(str::to_owned);
        Some(Self {
            traceparent,
            tracestate,
        })
    }

    /// A new trace from the caller's random ids: version 00, the 16-byte trace id and 8-byte
    /// parent id, flags 01 (sampled). `None` when an id is all zeros (invalid in W3C; the
    /// caller draws again). Pure: the randomness is the caller's I/O.
    pub fn new_root(trace_id: u128, parent_id: u64) -> Option<Self> {
        (trace_id != 0 && parent_id != 0).then(|| Self {
            traceparent: format!("00-{trace_id:032x}-{parent_id:016x}-01"),
            tracestate: None,
        })
    }

    /// The context a participant passes on after handling the message in a span of its own
    /// (W3C: the parent id becomes that span's id; trace id, flags and `tracestate` are kept).
    /// `None` when `parent_id` is zero.
    pub fn with_parent_id(&self, parent_id: u64) -> Option<Self> {
        (parent_id != 0).then(|| Self {
            traceparent: format!(
                "00-{}-{parent_id:016x}-{:02x}",
                self.trace_id(),
                self.flags()
            ),
            tracestate: self.tracestate.clone(),
        })
    }

    /// Rebuilds a stored context (columns written from a validated one); `None` if the stored
    /// text is not a valid `traceparent`.
    pub fn from_stored(traceparent: Option<String>, tracestate: Option<String>) -> Option<Self> {
        Self::from_headers(traceparent.as_deref(), tracestate.as_deref())
    }

    /// The `traceparent` value.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// The `tracestate` value, if one came with the `traceparent`.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The 32-hex-digit trace id.
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }

    /// The 16-hex-digit parent id: the span of the sender that caused this message.
    pub fn parent_id(&self) -> &str {
        &self.traceparent[36..52]
    }

    /// The trace flags byte (bit 0: the sender sampled the trace).
    pub fn flags(&self) -> u8 {
        u8::from_str_radix(&self.traceparent[53..55], 16).expect("validated hex")
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.traceparent)
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn canonical_traceparent(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if raw.len() < TRACEPARENT_LEN || !raw.is_ascii() {
        return None;
    }
    let (head, rest) = raw.split_at(TRACEPARENT_LEN);
    let version = &head[0..2];
    if !is_lower_hex(version) || version == "ff" {
        return None;
    }
    // Version 00 is exactly 55 characters; a later version may add fields after a dash.
    if (version == "00" && !rest.is_empty()) || (!rest.is_empty() && !rest.starts_with('-')) {
        return None;
    }
    let parts: Vec<&str> = head.split('-').collect();
    let [_, trace_id, parent_id, flags] = parts.as_slice() else {
        return None;
    };
    let well_formed = trace_id.len() == 32
        && parent_id.len() == 16
        && flags.len() == 2
        && is_lower_hex(trace_id)
        && is_lower_hex(parent_id)
        && is_lower_hex(flags)
        && trace_id.bytes().any(|b| b != b'0')
        && parent_id.bytes().any(|b| b != b'0');
    well_formed.then(|| format!("00-{trace_id}-{parent_id}-{flags}"))
}

fn valid_tracestate(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_TRACESTATE_BYTES
        && s.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_kept_with_its_tracestate() {
        let t = TraceContext::from_headers(Some(GOOD), Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(t.traceparent(), GOOD);
        assert_eq!(t.tracestate(), Some("congo=t61rcWkgMzE"));
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_id(), "00f067aa0ba902b7");
        assert_eq!(t.flags(), 1);
    }

    #[test]
    fn invalid_traceparents_are_ignored_with_their_tracestate() {
        for bad in [
            "",
            "garbage",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
        ] {
            assert_eq!(
                TraceContext::from_headers(Some(bad), Some("a=b")),
                None,
                "{bad}"
            );
        }
        assert_eq!(TraceContext::from_headers(None, Some("a=b")), None);
    }

    #[test]
    fn a_later_version_is_passed_on_as_version_00() {
        let t = TraceContext::from_headers(
            Some("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next"),
            None,
        )
        .unwrap();
        assert_eq!(t.traceparent(), GOOD);
    }

    #[test]
    fn a_bad_tracestate_is_dropped_alone() {
        let long = "a=".to_owned() + &"b".repeat(MAX_TRACESTATE_BYTES);
        for bad in [long.as_str(), "a=\u{1}", "é=1", ""] {
            let t = TraceContext::from_headers(Some(GOOD), Some(bad)).unwrap();
            assert_eq!(t.tracestate(), None, "{bad:?}");
        }
    }

    #[test]
    fn a_participant_replaces_only_the_parent_id() {
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let t = TraceContext::from_headers(Some(unsampled), Some("congo=t61rcWkgMzE")).unwrap();
        let next = t.with_parent_id(0xb7ad_6b71_6920_3331).unwrap();
        assert_eq!(
            next.traceparent(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-00"
        );
        assert_eq!(next.tracestate(), Some("congo=t61rcWkgMzE"));
        assert_eq!(t.with_parent_id(0), None);
    }

    #[test]
    fn a_new_root_is_a_valid_sampled_version_00_traceparent() {
        let a = TraceContext::new_root(
            0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
            0x00f0_67aa_0ba9_02b7,
        )
        .unwrap();
        let b = TraceContext::new_root(7, 9).unwrap();
        assert_ne!(a.trace_id(), b.trace_id());
        assert_eq!(TraceContext::new_root(0, 9), None);
        assert_eq!(TraceContext::new_root(7, 0), None);
        assert_eq!(
            TraceContext::from_headers(Some(a.traceparent()), None).as_ref(),
            Some(&a)
        );
        assert!(a.traceparent().starts_with("00-") && a.traceparent().ends_with("-01"));
    }
}
