//! # operation-runs
//!
//! The single source of truth for long-running operations. Read in this order:
//!
//! - [`domain`]: pure types and rules (run, status and outcome transitions, type catalog, identity
//!   hash, command decoding, failure sanitising). No I/O.
pub mod domain;
