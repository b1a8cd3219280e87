//! `duplicate_deliveries`: event ids the subscriber received more than once that no disruption
//! of the run explains. Pure: no I/O.
//!
//! Delivery is at least once, so some duplicates are expected, but only where a disruption cut
//! the step between a publish and its record: a SIGKILL between the relay's confirm and its
//! commit of `published_at` (the next relay republishes that round), a database restart at the
//! same point (the commit fails), a broker restart (a confirm or the subscriber's ack is lost).
//! In each case the copy that came before the extra one arrived around the disruption. So an
//! extra copy is excused only by a disruption:
//!
//! - whose window, from [`BEFORE`] before it began to [`AFTER`] after it ended, holds the
//!   arrival of the copy before it (a broker restart ends when the subscriber consumes again:
//!   copies enqueued before the restart arrive only then, see [`until_resubscribed`]);
//! - that has not excused another copy of the same event (one disruption, one extra copy);
//! - that has not used up its budget: one relay round of events ([`RELAY_BATCH`]) for a kill or
//!   a database restart, plus the subscriber's prefetch ([`SUBSCRIBER_PREFETCH`]) for a broker
//!   restart.
//!
//! An event with an extra copy no disruption excuses counts once in the figure; a relay that
//! republishes a round over and over (a relay that never marks what was confirmed) counts every
//! event of it.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::chaos::faults::schedule::{Disruption, DisruptionKind};

/// How long before a disruption began the copy before an excused one may have arrived (a relay
/// round publishing and waiting for its confirms under load).
pub const BEFORE: Duration = Duration::from_secs(10);
/// How long after a disruption ended it may have arrived (the subscriber catching up).
pub const AFTER: Duration = Duration::from_secs(10);
/// Events one relay round publishes at most (the service's default `--relay-batch`).
pub const RELAY_BATCH: usize = 500;
/// Deliveries the subscriber holds unacked at most (its prefetch).
pub const SUBSCRIBER_PREFETCH: usize = super::subscriber::PREFETCH as usize;

/// Whether `d`'s window holds `at`: from [`BEFORE`] before it began to [`AFTER`] after it ended.
fn covers(d: &Disruption, at: Instant) -> bool {
    let from = d.start.checked_sub(BEFORE).unwrap_or(d.start);
    from <= at && at <= d.end + AFTER
}

/// Extra copies `d` may excuse at most.
fn budget(d: &Disruption) -> usize {
    match d.kind {
        DisruptionKind::Kill | DisruptionKind::DatabaseRestart => RELAY_BATCH,
        DisruptionKind::BrokerRestart => RELAY_BATCH + SUBSCRIBER_PREFETCH,
    }
}

/// Extends each broker restart to the first time the subscriber consumed again after it began
/// (`consuming_since`: when each of its connections started consuming): its reconnection
/// backoff may outlast the restart by several seconds.
pub fn until_resubscribed(disruptions: &mut [Disruption], consuming_since: &[Instant]) {
    for d in disruptions
        .iter_mut()
        .filter(|d| d.kind == DisruptionKind::BrokerRestart)
    {
        if let Some(back) = consuming_since.iter().filter(|t| **t >= d.start).min() {
            d.end = d.end.max(*back);
        }
    }
}

/// Duplicates found and how many are excused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Duplicates {
    /// Event ids received more than once.
    pub received_more_than_once: u64,
    /// Of those, the ids no disruption explains: the figure.
    pub unexcused: u64,
    /// Examples of unexcused ids, with their deliveries.
    pub examples: Vec<String>,
}

/// Examples kept.
const EXAMPLES: usize = 5;

/// Attributes the extra copies in `arrivals` (each event id's delivery times) to `disruptions`.
pub fn attribute(
    arrivals: &HashMap<String, Vec<Instant>>,
    disruptions: &[Disruption],
) -> Duplicates {
    let mut repeated: Vec<(&String, Vec<Instant>)> = arrivals
        .iter()
        .filter(|(_, times)| times.len() > 1)
        .map(|(id, times)| {
            let mut times = times.clone();
            times.sort();
            (id, times)
        })
        .collect();
    // Earliest first, so budgets go to the copies closest to their disruption in time order.
    repeated.sort_by(|a, b| a.1[0].cmp(&b.1[0]).then_with(|| a.0.cmp(b.0)));
    let origin = repeated.first().map(|(_, t)| t[0]);
    let mut budgets: Vec<usize> = disruptions.iter().map(budget).collect();
    let mut result = Duplicates {
        received_more_than_once: repeated.len() as u64,
        ..Duplicates::default()
    };
    for (id, times) in &repeated {
        let mut used: Vec<usize> = Vec::new();
        let excused = times.windows(2).all(|pair| {
            let earlier = pair[0];
            let found = (0..disruptions.len()).find(|d| {
                !used.contains(d) && budgets[*d] > 0 && covers(&disruptions[*d], earlier)
            });
            found.map(|d| used.push(d)).is_some()
        });
        if excused {
            for d in used {
                budgets[d] -= 1;
            }
            continue;
        }
        result.unexcused += 1;
        if result.examples.len() < EXAMPLES {
            let at: Vec<String> = times
                .iter()
                .map(|t| {
                    let since = t.duration_since(origin.expect("not empty"));
                    format!("+{:.1}s", since.as_secs_f64())
                })
                .collect();
            result.examples.push(format!(
                "{id} ({} deliveries at {})",
                times.len(),
                at.join(", ")
            ));
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(base: Instant, s: f64) -> Instant {
        base + Duration::from_secs_f64(s)
    }

    fn disruption(base: Instant, kind: DisruptionKind, from: f64, to: f64) -> Disruption {
        Disruption {
            kind,
            start: secs(base, from),
            end: secs(base, to),
        }
    }

    fn arrivals(base: Instant, events: &[(&str, &[f64])]) -> HashMap<String, Vec<Instant>> {
        events
            .iter()
            .map(|(id, at)| (id.to_string(), at.iter().map(|s| secs(base, *s)).collect()))
            .collect()
    }

    #[test]
    fn a_copy_after_a_kill_is_excused_and_one_far_from_any_disruption_is_not() {
        let base = Instant::now();
        let kill = disruption(base, DisruptionKind::Kill, 100.0, 100.5);
        let seen = arrivals(
            base,
            &[
                ("once", &[1.0]),
                ("around-the-kill", &[99.0, 103.0]),
                ("far-away", &[30.0, 31.0]),
            ],
        );
        let found = attribute(&seen, &[kill]);
        assert_eq!(found.received_more_than_once, 2);
        assert_eq!(found.unexcused, 1, "{:?}", found.examples);
        assert!(found.examples[0].starts_with("far-away (2 deliveries"));
    }

    #[test]
    fn one_disruption_excuses_one_extra_copy_per_event() {
        let base = Instant::now();
        let kill = disruption(base, DisruptionKind::Kill, 100.0, 100.0);
        let restart = disruption(base, DisruptionKind::BrokerRestart, 104.0, 108.0);
        let thrice = arrivals(base, &[("e", &[99.0, 101.0, 109.0])]);
        assert_eq!(attribute(&thrice, &[kill]).unexcused, 1);
        assert_eq!(attribute(&thrice, &[kill, restart]).unexcused, 0);
    }

    #[test]
    fn a_republishing_relay_is_not_excused_by_the_disruption_it_started_near() {
        // The same round republished every 15 s, once near a kill.
        let base = Instant::now();
        let kill = disruption(base, DisruptionKind::Kill, 20.0, 20.0);
        let times: Vec<f64> = (0..30).map(|k| 15.0 + 15.0 * k as f64).collect();
        let seen = arrivals(base, &[("flooded", &times)]);
        assert_eq!(attribute(&seen, &[kill]).unexcused, 1);
    }

    #[test]
    fn a_broker_restart_lasts_until_the_subscriber_consumes_again() {
        let base = Instant::now();
        let mut disruptions = [
            disruption(base, DisruptionKind::BrokerRestart, 100.0, 105.0),
            disruption(base, DisruptionKind::Kill, 50.0, 50.0),
        ];
        // Enqueued before the restart, first received when the subscriber came back at 125 s.
        let seen = arrivals(base, &[("e", &[126.0, 127.0])]);
        assert_eq!(attribute(&seen, &disruptions).unexcused, 1);
        until_resubscribed(&mut disruptions, &[secs(base, 0.0), secs(base, 125.0)]);
        assert_eq!(disruptions[0].end, secs(base, 125.0));
        assert_eq!(disruptions[1].end, secs(base, 50.0), "only broker restarts");
        assert_eq!(attribute(&seen, &disruptions).unexcused, 0);
    }

    #[test]
    fn the_window_holds_ten_seconds_either_side_and_budgets_are_one_relay_round() {
        let base = Instant::now();
        let kill = disruption(base, DisruptionKind::Kill, 100.0, 101.0);
        let edge = arrivals(
            base,
            &[("early", &[90.5, 102.0]), ("late", &[110.5, 112.0])],
        );
        assert_eq!(attribute(&edge, &[kill]).unexcused, 0);
        let outside = arrivals(
            base,
            &[("early", &[89.5, 102.0]), ("late", &[111.5, 112.0])],
        );
        assert_eq!(attribute(&outside, &[kill]).unexcused, 2);

        let many: HashMap<String, Vec<Instant>> = (0..RELAY_BATCH + 3)
            .map(|k| {
                (
                    format!("e{k:04}"),
                    vec![secs(base, 99.0), secs(base, 103.0)],
                )
            })
            .collect();
        assert_eq!(attribute(&many, &[kill]).unexcused, 3);
        let restart = disruption(base, DisruptionKind::BrokerRestart, 99.5, 102.0);
        assert_eq!(attribute(&many, &[restart]).unexcused, 0);
    }
}
