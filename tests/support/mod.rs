//! Shared integration-test harness.
//!
//! Every integration test file does `mod support;` and gets:
//! - [`Cluster`]: a real PostgreSQL cluster started by the harness itself
//!   (`Cluster::shared()` for the one-per-test-binary cluster, `Cluster::start`
//!   for a dedicated one that a test may stop, crash or reconfigure);
//! - [`TestDb`]: one freshly created database per test, so tests sharing the
//!   cluster never see each other's tables, slots' databases or publications;
//! - [`wait_for`] / [`wait_for_state`]: the only waiting primitive tests use
//!   (no fixed sleeps in tests).
//!
//! Not every test binary uses every item, hence the blanket `allow`s.

#![allow(dead_code)]
#![allow(unused_imports)]

pub mod cluster;
pub mod postgrest;
pub mod proxy;
pub mod sync;
pub mod wait;

pub use cluster::{Cluster, ClusterOptions, StopMode, TestDb, free_port};
pub use wait::{wait_for, wait_for_state};
