//! Session settings, in one place: how values print and parse (guarantee 6) and how long
//! any statement may wait.

use tokio_postgres::Client;

use super::error::PgContext;
use super::sql::quote_ident;
use crate::config::DatabaseConfig;

/// The value settings of [`pin_session`] for one transaction (`SET LOCAL`), for exports and
/// restores that run inside a migration's transaction.
pub const EXPORT_SETTINGS: &str = "SET LOCAL DateStyle = ISO; SET LOCAL IntervalStyle = postgres;
     SET LOCAL extra_float_digits = 3; SET LOCAL client_encoding = 'UTF8'; SET LOCAL bytea_output = 'hex'";

/// Puts the migration session's own settings back for the SQL that follows.
pub const RESET_EXPORT_SETTINGS: &str =
    "SET LOCAL DateStyle TO DEFAULT; SET LOCAL IntervalStyle TO DEFAULT;
     SET LOCAL extra_float_digits TO DEFAULT; SET LOCAL bytea_output TO DEFAULT";

/// Pins the settings that change how values print and parse, as pg_dump does, so the CSV
/// written by one session reads back identically in another (guarantee 6).
pub async fn pin_session(client: &Client, settings: &DatabaseConfig) -> anyhow::Result<()> {
    client
        .batch_execute(&format!(
            "SET DateStyle = ISO; SET IntervalStyle = postgres; SET extra_float_digits = 3;
             SET client_encoding = 'UTF8'; SET bytea_output = 'hex'; SET search_path = '';
             SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0;
             SET lock_timeout = '{}s'",
            settings.lock_timeout_secs
        ))
        .await
        .pg(|| "setting up the export session")
}

/// The session migrations run in: the configured schema first on the search path (scripts
/// name tables unqualified), a bounded wait for locks, no statement limit (a migration may
/// rewrite a large table).
pub async fn migration_session(client: &Client, settings: &DatabaseConfig) -> anyhow::Result<()> {
    client
        .batch_execute(&format!(
            "SET search_path TO {}; SET lock_timeout = '{}s'; SET statement_timeout = 0",
            quote_ident(&settings.schema),
            settings.lock_timeout_secs
        ))
        .await
        .pg(|| "setting up the migration session")
}

/// The session for catalog reads (snapshots): an empty search path and a statement limit.
pub async fn catalog_session(client: &Client, settings: &DatabaseConfig) -> anyhow::Result<()> {
    client
        .batch_execute(&format!(
            "SET search_path = ''; SET statement_timeout = '{}s'",
            settings.statement_timeout_secs
        ))
        .await
        .pg(|| "setting up the catalog session")
}
