//! `oprun-lab bench`: measures the service against the broker's own limit, in one run, against the
//! local broker and a PostgreSQL ([`server`]: by default a private cluster with the defaults), in
//! a namespace and database of its own (both removed at the end).
//!
//! Phases, in order:
//! 1. **baseline** ([`baseline`]): the broker work the service cannot avoid, with no database.
//! 2. **baseline postgres** ([`baseline_pg`]): the simplest correct pipeline doing the service's
//!    Postgres and broker work, in this process.
//! 3. **service** ([`driver`]): `oprun serve` child processes ([`instances`]) consume a workload
//!    ([`prebuilt`]) as fast as they can; throughput, latency, CPU ([`usage`]) and memory.
//! 4. **steady**: the same kind of workload at a fixed rate, for latency under load, with where
//!    the time goes ([`stages`]).
//! 5. **kinds** (`--kind-runs N`, [`kinds`]): each command kind alone, its writes per command read
//!    from the WAL ([`writes`]) and the HOT ratio of progress updates.
//! 6. **loaded** (`--preload-runs N`, [`preload`]): history preloaded into the database, then the
//!    service workload again: the cost of a command on a full database against an empty one.
//! 7. **soak** (`--soak DURATION`, [`soak`]): the steady rate for a long time, with RSS, p99 and
//!    table sizes every minute.
//!
//! [`report`] prints a table for people and, as the very last line, one JSON object for machines.
//! [`crate::sandbox`] owns the database and namespace; [`crate::publisher::Window`] is the windowed confirm
//! publisher every phase publishes through; [`tracker`] turns replies and events into latencies (pure, no
//! I/O, unit-tested).

mod args;
mod baseline;
mod baseline_pg;
mod dedupe;
mod driver;
mod instances;
mod kinds;
mod percentiles;
mod prebuilt;
mod preload;
mod report;
mod server;
mod soak;
mod stages;
mod tracker;
mod usage;
mod viewer;
mod writes;

pub use args::BenchArgs;
pub use dedupe::DedupeBenchArgs;
pub use viewer::ViewerBenchArgs;
