//! What the fault-injection run sends, planned ahead from its seed (pure, no I/O):
//! [`workload`] plans the commands and what each run must end up as, from the parts in
//! [`model`], worded by [`dispatches`] (phase 1), [`steps`] (phase 2) and [`bad_messages`];
//! [`shuffled_json`] writes the bodies with keys in random order; [`injections`] is the set of
//! switchable injections (`--without`); [`operator`] plans the operator's cancels, fails and
//! retries. Nothing here imports from `faults/` or `verification/`.

pub mod bad_messages;
pub mod dispatches;
pub mod injections;
pub mod model;
pub mod operator;
pub mod shuffled_json;
pub mod steps;
pub mod workload;
