//! backstop: backups before every destructive schema migration, and the data back after a
//! re-upgrade, for PostgreSQL.
//!
//! How the pieces fit:
//!
//! - [`config`]: the TOML tree, its lookup order and environment overrides.
//! - [`db`]: connections (TLS with libpq's `sslmode` semantics), readable PostgreSQL errors,
//!   identifier quoting.
//! - [`migrate`]: migration files ([`migrate::source`]) and the engine that plans and applies
//!   them under an advisory lock, one transaction per step ([`migrate::engine`]).
//! - [`schema`]: canonical schema snapshots and their differences.
//! - [`rollback_test`]: the upgrade → downgrade → re-upgrade checklist on a scratch database.
//! - [`cli`]: argument parsing and one thin function per command.
//! - [`error`]: the few error classes that decide the exit code.

pub mod backup;
pub mod backups;
pub mod cancel;
pub mod cli;
pub mod config;
pub mod db;
pub mod error;
pub mod fixture;
pub mod migrate;
pub mod progress;
pub mod restore;
pub mod rollback_test;
pub mod schema;
pub mod store;
