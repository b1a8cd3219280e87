//! `oprun-lab bench`: measures the service against the broker's own limit, in one run, against the
//! local broker and database, in a namespace and database of its own (both removed at the end).
//!
//! Phases, in order:
//! 1. **baseline** ([`baseline`]): the broker work the service cannot avoid, with no database.
//! 2. **service** ([`driver`]): `oprun serve` child processes ([`instances`]) consume a workload
//!    ([`prebuilt`]) as fast as they can; throughput, latency, CPU ([`usage`]) and memory.
//! 3. **steady**: the same kind of workload at a fixed rate, for latency under load.
//! 4. **loaded** (`--preload-runs N`, [`preload`]): history preloaded into the database, then the
//!    service workload again: the cost of a command on a full database against an empty one.
//! 5. **soak** (`--soak DURATION`, [`soak`]): the steady rate for a long time, with RSS, p99 and
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
