//! The séance backend as a library: every Lambda in `functions/` and the local harness in
//! `local-dev/` are thin binaries over this crate, so the code that runs offline is the code
//! that runs in AWS.

pub mod app;
pub mod asyncapi;
pub mod auth;
pub mod board;
pub mod config;
pub mod connections;
pub mod domain;
pub mod error;
pub mod personas;
pub mod protocol;
pub mod push;
pub mod ratelimit;
pub mod redis_client;
pub mod rest;
pub mod session_end;
pub mod spirit;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod voice;
pub mod ws;

pub use app::App;
pub use config::Config;
pub use error::ApiError;
