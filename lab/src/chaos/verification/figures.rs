//! The closing line: `chaos: commands=N kills=K broker_restarts=B db_restarts=D cancelled=C
//! retried=R failed_by_operator=F lost=0 double_applied=0 duplicate_runs=0 missing_events=0
//! duplicate_deliveries=0 viewer_gaps=0 seconds=S`; a `--cluster` run adds
//! `broker_node_kills=K` after `db_restarts`, a `--db-failover` run `db_failovers=K
//! max_unavailable_s=S` after `seconds`. The operator's counts are what the operator's
//! actions did; the run fails unless each equals what it asked for (see
//! [`super::operator`]).

use std::fmt;

/// The figures of the closing line.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// Distinct commands in the workload.
    pub commands: u64,
    /// SIGKILLs sent to service instances.
    pub kills: u32,
    /// RabbitMQ restarts.
    pub broker_restarts: u32,
    /// PostgreSQL restarts.
    pub db_restarts: u32,
    /// RabbitMQ cluster nodes SIGKILLed (`--cluster` runs only; not printed otherwise).
    pub broker_node_kills: Option<u32>,
    /// Runs an operator's `cancel_run` ended `cancelled` (see [`super::operator`]).
    pub cancelled: u64,
    /// Runs an operator's `retry_run` gave exactly one retry run.
    pub retried: u64,
    /// Runs an operator's `fail_run` ended `failed` with `run.failed_by_operator`.
    pub failed_by_operator: u64,
    /// See [`super::check::Findings`].
    pub lost: u64,
    /// See [`super::check::Findings`].
    pub double_applied: u64,
    /// See [`super::check::Findings`].
    pub duplicate_runs: u64,
    /// See [`super::check::Findings`].
    pub missing_events: u64,
    /// Event ids received more than once without a SIGKILL or restart to explain it (see
    /// [`super::deliveries`]).
    pub duplicate_deliveries: u64,
    /// Sequences the viewers' readers got out of order or skipped while still stored (see
    /// [`crate::chaos::faults::viewers`]; 0 without the `viewers` injection).
    pub viewer_gaps: u64,
    /// Wall time of the run.
    pub seconds: u64,
    /// `--db-failover` runs only: the failovers of the database pair, and the longest time no
    /// server of it took writes, in seconds.
    pub db_failovers: Option<(u32, f64)>,
}

impl Figures {
    /// True when nothing was lost, applied twice, duplicated, missed or delivered twice
    /// without cause.
    pub fn all_zero(&self) -> bool {
        self.lost == 0
            && self.double_applied == 0
            && self.duplicate_runs == 0
            && self.missing_events == 0
            && self.duplicate_deliveries == 0
            && self.viewer_gaps == 0
    }
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "chaos: commands={} kills={} broker_restarts={} db_restarts={} ",
            self.commands, self.kills, self.broker_restarts, self.db_restarts,
        )?;
        if let Some(k) = self.broker_node_kills {
            write!(f, "broker_node_kills={k} ")?;
        }
        write!(
            f,
            "cancelled={} retried={} failed_by_operator={} ",
            self.cancelled, self.retried, self.failed_by_operator
        )?;
        write!(
            f,
            "lost={} double_applied={} duplicate_runs={} missing_events={} duplicate_deliveries={} viewer_gaps={} seconds={}",
            self.lost,
            self.double_applied,
            self.duplicate_runs,
            self.missing_events,
            self.duplicate_deliveries,
            self.viewer_gaps,
            self.seconds
        )?;
        if let Some((failovers, unavailable)) = self.db_failovers {
            write!(
                f,
                " db_failovers={failovers} max_unavailable_s={unavailable:.1}"
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closing_line_reads_as_specified() {
        let figures = Figures {
            commands: 20_007,
            kills: 4,
            broker_restarts: 1,
            db_restarts: 1,
            broker_node_kills: None,
            cancelled: 41,
            retried: 38,
            failed_by_operator: 29,
            lost: 0,
            double_applied: 0,
            duplicate_runs: 0,
            missing_events: 0,
            duplicate_deliveries: 0,
            viewer_gaps: 0,
            seconds: 118,
            db_failovers: None,
        };
        assert_eq!(
            figures.to_string(),
            "chaos: commands=20007 kills=4 broker_restarts=1 db_restarts=1 cancelled=41 retried=38 failed_by_operator=29 lost=0 double_applied=0 duplicate_runs=0 missing_events=0 duplicate_deliveries=0 viewer_gaps=0 seconds=118"
        );
        assert!(figures.all_zero());
        assert_eq!(
            Figures {
                broker_restarts: 0,
                broker_node_kills: Some(1),
                ..figures.clone()
            }
            .to_string(),
            "chaos: commands=20007 kills=4 broker_restarts=0 db_restarts=1 broker_node_kills=1 cancelled=41 retried=38 failed_by_operator=29 lost=0 double_applied=0 duplicate_runs=0 missing_events=0 duplicate_deliveries=0 viewer_gaps=0 seconds=118"
        );
        assert_eq!(
            Figures {
                db_restarts: 0,
                db_failovers: Some((2, 31.04)),
                ..figures.clone()
            }
            .to_string(),
            "chaos: commands=20007 kills=4 broker_restarts=1 db_restarts=0 cancelled=41 retried=38 failed_by_operator=29 lost=0 double_applied=0 duplicate_runs=0 missing_events=0 duplicate_deliveries=0 viewer_gaps=0 seconds=118 db_failovers=2 max_unavailable_s=31.0"
        );
        assert!(!Figures {
            lost: 1,
            ..figures.clone()
        }
        .all_zero());
        assert!(!Figures {
            duplicate_deliveries: 1,
            ..figures.clone()
        }
        .all_zero());
        assert!(!Figures {
            viewer_gaps: 1,
            ..figures
        }
        .all_zero());
    }
}
