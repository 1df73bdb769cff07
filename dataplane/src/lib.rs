//! The runtime shared by causeway-nlb, causeway-alb and causeway-edge.
//!
//! - [`server`]: the `ArcSwap` snapshot, listeners, reload and drain.
//! - [`target`], [`health`], [`check`]: targets, their health state machine and active checks.
//! - [`select`]: selection algorithms (pure).
//! - [`admin`]: `/metrics`, `/healthz`, `/status`, `POST /reload`.
//! - [`cli`]: the shared command line and signal handling.

pub mod accesslog;
pub mod admin;
pub mod anomaly;
pub mod buffers;
pub mod capacity;
pub mod check;
pub mod cli;
pub mod client;
pub mod desync;
pub mod drain;
pub mod h2conn;
pub mod health;
pub mod healthlog;
pub mod http1;
pub mod limits;
pub mod listener;
pub mod master;
pub mod outlier;
pub mod park;
pub mod pool;
pub mod proxy_protocol;
pub mod relay;
pub mod reply;
pub mod retry;
pub mod select;
pub mod server;
pub mod target;
pub mod telemetry;
pub mod tls;
pub mod upgrade;
pub mod x509;

pub use server::{Conn, Plane, Server, Snapshot, Snapshots};
