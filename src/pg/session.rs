//! Session settings, in one place: how values print and parse (guarantee 6) and how long
//! any statement may wait.

use tokio_postgres::{Client, GenericClient};

use super::error::PgContext;
use super::sql::quote_ident;
use crate::config::DatabaseConfig;
use crate::error::{err, Kind};

/// The settings that change how values print and parse (guarantee 6), with the values an
/// export or a restore needs; [`pin_session`] sets the same for a session of its own.
const VALUE_SETTINGS: [(&str, &str); 6] = [
    ("DateStyle", "ISO"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("client_encoding", "UTF8"),
    ("bytea_output", "hex"),
    ("row_security", "off"),
];

/// The value settings pinned inside a caller's transaction (an export or a restore that runs
/// within a migration's), until [`PinnedValues::restore`] puts back exactly what was there:
/// the export and restore code own their settings, whoever calls them. A transaction that
/// rolls back drops them anyway (`set_config(…, true)` is `SET LOCAL`).
#[must_use = "restore() puts the caller's settings back"]
pub struct PinnedValues {
    previous: Vec<String>,
}

impl PinnedValues {
    pub async fn pin(tx: &impl GenericClient) -> anyhow::Result<PinnedValues> {
        let names: Vec<&str> = VALUE_SETTINGS.iter().map(|(n, _)| *n).collect();
        let values: Vec<&str> = VALUE_SETTINGS.iter().map(|(_, v)| *v).collect();
        let previous: Vec<String> = tx
            .query_one(
                "SELECT array_agg(pg_catalog.current_setting(n) ORDER BY i)
                 FROM unnest($1::text[]) WITH ORDINALITY AS s(n, i)",
                &[&names],
            )
            .await
            .pg(|| "reading the session settings")?
            .get(0);
        set_local(tx, &names, &values).await?;
        Ok(PinnedValues { previous })
    }

    pub async fn restore(self, tx: &impl GenericClient) -> anyhow::Result<()> {
        let names: Vec<&str> = VALUE_SETTINGS.iter().map(|(n, _)| *n).collect();
        let values: Vec<&str> = self.previous.iter().map(String::as_str).collect();
        set_local(tx, &names, &values).await
    }
}

async fn set_local(tx: &impl GenericClient, names: &[&str], values: &[&str]) -> anyhow::Result<()> {
    tx.query_one(
        "SELECT count(pg_catalog.set_config(n, v, true)) FROM unnest($1::text[], $2::text[]) AS s(n, v)",
        &[&names, &values],
    )
    .await
    .pg(|| "setting the value settings of an export or restore")?;
    Ok(())
}

/// Pins the settings that change how values print and parse, as pg_dump does, so the CSV
/// written by one session reads back identically in another (guarantee 6). Row-level
/// security is off, as pg_dump sets it: a policy that would hide rows makes the export fail
/// loudly instead of saving a filtered subset that `verify` would then call complete.
pub async fn pin_session(client: &Client, settings: &DatabaseConfig) -> anyhow::Result<()> {
    client
        .batch_execute(&format!(
            "SET DateStyle = ISO; SET IntervalStyle = postgres; SET extra_float_digits = 3;
             SET client_encoding = 'UTF8'; SET bytea_output = 'hex'; SET search_path = '';
             SET row_security = off;
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

/// Notices SQL that ended the transaction it was run in (a `COMMIT` the lexer missed), so
/// backstop stops instead of running the rest of a step outside its transaction.
pub struct TransactionGuard {
    xid: i64,
}

impl TransactionGuard {
    /// Pins the transaction `tx` is in (assigning it an id if it has none yet).
    pub async fn start(tx: &impl GenericClient) -> anyhow::Result<TransactionGuard> {
        let xid: i64 = tx
            .query_one("SELECT pg_catalog.txid_current()", &[])
            .await
            .pg(|| "reading the transaction id")?
            .get(0);
        Ok(TransactionGuard { xid })
    }

    /// Fails unless the session is still inside the transaction [`start`] saw.
    ///
    /// [`start`]: TransactionGuard::start
    pub async fn check(&self, tx: &impl GenericClient, what: &str) -> anyhow::Result<()> {
        let now: Option<i64> = tx
            .query_one("SELECT pg_catalog.txid_current_if_assigned()", &[])
            .await
            .pg(|| "checking the transaction")?
            .get(0);
        if now != Some(self.xid) {
            return Err(err(
                Kind::Refused,
                format!(
                    "{what} ended backstop's transaction (a COMMIT, END or ROLLBACK in it); what it did before that may have been committed without a backup: check the database, and remove transaction control from the script"
                ),
            ));
        }
        Ok(())
    }
}
