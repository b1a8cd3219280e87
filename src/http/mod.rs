//! HTTP: the server infrastructure every listener of the process shares (timeouts, connection
//! cap).

pub mod server;
