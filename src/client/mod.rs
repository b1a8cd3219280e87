//! Libraries for the services around the tracker: [`Producer`] publishes commands (and waits for
//! the reply when asked), [`Worker`] receives jobs of chosen types, reports progress and hears
//! their runs' cancels.

mod cancels;
pub mod producer;
pub mod worker;

pub use producer::{ClientError, DispatchReply, DispatchRequest, Producer, RunRef};
pub use worker::{Job, JobContext, Worker};
