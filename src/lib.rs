//! backstop: backups before every destructive schema migration, and the data back after a
//! re-upgrade, for PostgreSQL.
//!
//! The map, from the top down; every module depends only on modules below it:
//!
//! - Front ends: the command line in the binary (`src/cli/`: arguments in, reports out),
//!   and [`serve`], the daemon (schedule loops on a given clock, HTTP, metrics, webhooks,
//!   systemd notification), which `backstop serve` starts and tests drive in-process.
//! - [`ops`]: one module per operation (upgrade, downgrade, stamp, backup, restore, verify,
//!   prune, list, schema, rollback-test, one scheduled slot, config check). Each plans,
//!   then executes, and returns a serialisable report; [`ops::Workspace`] opens what the
//!   configuration names.
//! - Domain: [`migrate`] (migration files, targets, status, plans, running a step),
//!   [`protect`] (what a downgrade destroys), [`backup`] (the one export path, manifests,
//!   reading objects back, the store's catalog, verification, retention), [`restore`]
//!   (restore plans and loads), [`schema`] (snapshots and their differences), [`fixture`]
//!   (generated rows for rollback-test), [`schedule`] (cron expressions in time zones, and
//!   their slots).
//! - Infrastructure: [`ledger`] (the only reader and writer of backstop's own tables and
//!   of the migration tools' own),
//!   [`pg`] (connections, TLS, session settings, catalog queries, the migration lock),
//!   [`store`] (the object-store trait, its directory and S3 backends, a fault-injecting
//!   wrapper for tests).
//! - Foundations: [`config`] (the TOML tree), [`error`] (typed error kinds, mapped once to
//!   exit codes and HTTP statuses), [`context`] (per-operation cancellation and progress).

pub mod backup;
pub mod config;
pub mod context;
pub mod error;
pub mod fixture;
pub mod ledger;
pub mod migrate;
pub mod ops;
pub mod pg;
pub mod protect;
pub mod restore;
pub mod schedule;
pub mod schema;
pub mod serve;
pub mod store;
