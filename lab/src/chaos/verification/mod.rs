//! What the fault-injection run checks: [`subscriber`] receives every event (surviving a
//! broker restart); [`quiescence`] waits until everything has settled, with a deadline;
//! [`check`] holds the checks behind the closing figures; [`operator`] those of the operator's
//! actions; [`deliveries`] says which duplicate deliveries a disruption explains; [`figures`] is
//! the closing line. Imports from `plan/` and
//! `faults/`, never the other way.

pub mod check;
pub mod deliveries;
pub mod figures;
pub mod operator;
pub mod quiescence;
pub mod subscriber;
