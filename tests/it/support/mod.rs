//! The integration tests' shared kit, declared once in `tests/it/main.rs`
//! (and included by `benches/e2e`, whose harness runs on it too).
//!
//! - [`Cluster`]: a real PostgreSQL cluster started by the kit itself
//!   (`Cluster::shared()` for the one-per-process cluster, `Cluster::start`
//!   for a dedicated one that a test may stop, crash or reconfigure);
//! - [`TestDb`]: one freshly created database per test, so tests sharing the
//!   cluster never see each other's tables, slots' databases or publications;
//! - [`wait_for`] / [`wait_for_state`]: the only waiting primitive tests use
//!   (no fixed sleeps in tests);
//! - [`sync`]: a local + upstream pair driven through the real binary;
//!   [`postgrest`]: the PostgREST stand-in; [`proxy`]: a TCP proxy that
//!   injects network faults; [`floor`]: which tests may run side by side.

pub mod cluster;
pub mod floor;
pub mod postgrest;
pub mod proxy;
pub mod storage;
pub mod sync;
pub mod wait;

pub use cluster::{Cluster, ClusterOptions, StopMode, TestDb, free_port};
pub use wait::{wait_for, wait_for_state};
