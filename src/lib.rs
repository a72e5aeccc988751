//! centrovision-sync: two-way sync between a clinic's PostgreSQL and the
//! clinic group's Supabase project. See README.md for the design.
//!
//! Up path: [`replication`] streams the pgoutput slot, decoded by the pure
//! [`pgoutput`] module, into the [`journal`]; [`push`] delivers journal rows
//! through an [`upstream`] transport. Down path: [`down`] polls upstream
//! into the local tables. [`service`] runs both as supervised tasks;
//! [`recovery`] holds `replay`, `verify` and `resync`; [`error`] is the one
//! error policy. [`commands`] is the CLI on top, and nothing imports it. Every statement on the `_sync_*`
//! control tables belongs to [`store`].

pub mod alerts;
pub mod catalog;
pub mod commands;
pub mod config;
pub mod connectivity;
pub mod crash;
pub mod down;
pub mod error;
pub mod feed;
pub mod journal;
pub mod logging;
pub mod lsn;
pub mod page;
pub mod pgoutput;
pub mod push;
pub mod recovery;
pub mod replication;
pub mod scope;
pub mod service;
pub mod status;
pub mod storage;
pub mod store;
pub mod upstream;
pub mod verify;
