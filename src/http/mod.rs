//! HTTP: the server infrastructure every listener of the process shares (timeouts, connection
//! cap), and the run viewer (JSON API, live events, pages) served by `oprun serve`.

pub mod action_pages;
pub mod api;
pub mod auth;
pub mod claims;
pub mod cors;
pub mod dead_letter_actions;
pub mod dead_letter_api;
pub mod dead_letter_pages;
pub mod error;
pub mod html;
pub mod live;
pub mod operate;
pub mod pages;
pub mod read_model;
pub mod run_actions;
pub mod run_parts;
pub mod server;
pub mod state;
pub mod streams;
pub mod viewer;
