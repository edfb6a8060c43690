//! The ledger: the only reader and writer of backstop's own tables.
//!
//! `backstop_migrations` records each applied revision with its checksum;
//! `backstop_downgrades` records each backed-up downgrade, written in the downgrade's own
//! transaction (guarantee 7), so a backup whose downgrade committed can be told from one
//! whose downgrade never happened, and `upgrade --restore` knows which backups are open.
//! Every write takes the caller's transaction, so it commits or rolls back with the change.

mod slots;
pub mod tool;

pub use slots::{LostSlot, SlotState};

use std::time::Duration;

use serde::Serialize;
use tokio_postgres::GenericClient;

use crate::migrate::MigrationSet;
use crate::pg::{qualified, PgContext};

pub use crate::pg::catalog::{
    ALEMBIC_VERSION_TABLE, BOOKKEEPING_TABLE, DOWNGRADES_TABLE, OWN_TABLES, SLOTS_TABLE,
};

/// One row of `backstop_migrations`.
#[derive(Debug, Clone, Serialize)]
pub struct AppliedRow {
    pub revision: String,
    pub checksum: String,
    pub applied_at: String,
    pub duration_ms: i64,
}

/// One row of `backstop_downgrades`.
#[derive(Debug, Clone)]
pub struct DowngradeRecord {
    pub backup_id: String,
    /// The revision the downgrade started from.
    pub from_revision: Option<String>,
    /// The revision the downgrade went to.
    pub to_revision: Option<String>,
    pub restored: bool,
    /// A plain upgrade (or stamp) moved on from `to_revision` without restoring it.
    pub superseded: bool,
}

impl DowngradeRecord {
    /// Whether `upgrade --restore` may still take this backup.
    pub fn is_open(&self) -> bool {
        !self.restored && !self.superseded
    }
}

/// backstop's tables in one schema.
#[derive(Debug, Clone)]
pub struct Ledger {
    schema: String,
}

impl Ledger {
    pub fn new(schema: &str) -> Ledger {
        Ledger {
            schema: schema.to_string(),
        }
    }

    fn migrations(&self) -> String {
        qualified(&self.schema, BOOKKEEPING_TABLE)
    }

    fn downgrades(&self) -> String {
        qualified(&self.schema, DOWNGRADES_TABLE)
    }

    async fn exists(&self, client: &impl GenericClient, table: &str) -> anyhow::Result<bool> {
        Ok(client
            .query_one(
                "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
                &[&qualified(&self.schema, table)],
            )
            .await
            .pg(|| format!("checking for {table}"))?
            .get(0))
    }

    /// Creates both tables if they are missing (never the schema: see
    /// [`require_schema`](crate::pg::catalog::require_schema)).
    pub async fn ensure(&self, client: &impl GenericClient) -> anyhow::Result<()> {
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {table} (
                     revision text PRIMARY KEY,
                     checksum text NOT NULL,
                     applied_at timestamptz NOT NULL DEFAULT now(),
                     duration_ms bigint NOT NULL DEFAULT 0
                 );
                 CREATE TABLE IF NOT EXISTS {downgrades} (
                     backup_id text PRIMARY KEY,
                     from_revision text,
                     to_revision text,
                     downgraded_at timestamptz NOT NULL DEFAULT now(),
                     restored_at timestamptz
                 );
                 ALTER TABLE {downgrades} ADD COLUMN IF NOT EXISTS superseded_at timestamptz",
                table = self.migrations(),
                downgrades = self.downgrades()
            ))
            .await
            .pg(|| format!("creating {}", self.migrations()))
    }

    /// The applied revisions, or `None` when `backstop_migrations` does not exist yet.
    pub async fn applied(
        &self,
        client: &impl GenericClient,
    ) -> anyhow::Result<Option<Vec<AppliedRow>>> {
        if !self.exists(client, BOOKKEEPING_TABLE).await? {
            return Ok(None);
        }
        let rows = client
            .query(
                &format!(
                    "SELECT revision, checksum, applied_at::text, duration_ms FROM {}",
                    self.migrations()
                ),
                &[],
            )
            .await
            .pg(|| format!("reading {}", self.migrations()))?;
        Ok(Some(
            rows.iter()
                .map(|row| AppliedRow {
                    revision: row.get(0),
                    checksum: row.get(1),
                    applied_at: row.get(2),
                    duration_ms: row.get(3),
                })
                .collect(),
        ))
    }

    /// The current revision, or `None`: what Alembic's `alembic_version` holds when it
    /// holds one revision that the ledger agrees with (or the ledger is empty: a database
    /// Alembic migrated), else the latest recorded revision in `set`'s order (by the number in
    /// its name without a set, or for a revision the set lacks). Reads through
    /// `client`, so inside a snapshot if it is one.
    pub async fn recorded_revision(
        &self,
        client: &impl GenericClient,
        set: Option<&MigrationSet>,
    ) -> anyhow::Result<Option<String>> {
        let applied = self.applied(client).await?.unwrap_or_default();
        if let Some(heads) = self.alembic_heads(client).await? {
            if let [head] = heads.as_slice() {
                if applied.is_empty() || applied.iter().any(|r| &r.revision == head) {
                    return Ok(Some(head.clone()));
                }
            }
        }
        // The folder's order when it is at hand (it is the order, whatever the names);
        // else the number in the name, as the layouts read it.
        let rank = |r: &str| match set.and_then(|s| s.position(r)) {
            Some(p) => (1, p as u64),
            None => (0, crate::migrate::layout::revision_number(r).unwrap_or(0)),
        };
        Ok(applied
            .into_iter()
            .map(|r| r.revision)
            .max_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b))))
    }

    /// Records `revision` as applied, inside the step's transaction.
    pub async fn record_applied(
        &self,
        tx: &impl GenericClient,
        revision: &str,
        checksum: &str,
        took: Duration,
    ) -> anyhow::Result<()> {
        let n = tx
            .execute(
                &format!(
                    "INSERT INTO {} (revision, checksum, applied_at, duration_ms) VALUES ($1, $2, now(), $3)",
                    self.migrations()
                ),
                &[&revision, &checksum, &(took.as_millis() as i64)],
            )
            .await
            .pg(|| format!("recording {revision} in {}", self.migrations()))?;
        self.one_row(n, revision)
    }

    /// Records `revision` as reverted, inside the step's transaction.
    pub async fn record_reverted(
        &self,
        tx: &impl GenericClient,
        revision: &str,
    ) -> anyhow::Result<()> {
        let n = tx
            .execute(
                &format!("DELETE FROM {} WHERE revision = $1", self.migrations()),
                &[&revision],
            )
            .await
            .pg(|| format!("recording {revision} in {}", self.migrations()))?;
        self.one_row(n, revision)
    }

    fn one_row(&self, n: u64, revision: &str) -> anyhow::Result<()> {
        if n != 1 {
            anyhow::bail!(
                "recording {revision} in {} touched {n} rows instead of 1; the step was rolled back",
                self.migrations()
            );
        }
        Ok(())
    }

    /// Makes exactly `revisions` (revision, checksum) the applied set, without running SQL.
    pub async fn stamp(
        &self,
        tx: &impl GenericClient,
        revisions: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let wanted: Vec<&str> = revisions.iter().map(|(r, _)| *r).collect();
        tx.execute(
            &format!(
                "DELETE FROM {} WHERE revision <> ALL($1)",
                self.migrations()
            ),
            &[&wanted],
        )
        .await
        .pg(|| "removing revisions above the stamp")?;
        for (revision, checksum) in revisions {
            tx.execute(
                &format!(
                    "INSERT INTO {} (revision, checksum, duration_ms) VALUES ($1, $2, 0) ON CONFLICT (revision) DO NOTHING",
                    self.migrations()
                ),
                &[revision, checksum],
            )
            .await
            .pg(|| format!("recording {revision}"))?;
        }
        Ok(())
    }

    /// Records a downgrade's backup, inside the downgrade's transaction; recording the same
    /// backup again moves its `to` revision (a downgrade through no-transaction steps
    /// records each step as it commits).
    pub async fn record_downgrade(
        &self,
        tx: &impl GenericClient,
        backup_id: &str,
        from: Option<&str>,
        to: Option<&str>,
    ) -> anyhow::Result<()> {
        tx.execute(
            &format!(
                "INSERT INTO {} (backup_id, from_revision, to_revision) VALUES ($1, $2, $3)
                 ON CONFLICT (backup_id) DO UPDATE SET to_revision = EXCLUDED.to_revision",
                self.downgrades()
            ),
            &[&backup_id, &from, &to],
        )
        .await
        .pg(|| "recording the downgrade's backup")?;
        Ok(())
    }

    /// Marks a downgrade's backup as put back, inside the restoring transaction.
    pub async fn mark_restored(
        &self,
        tx: &impl GenericClient,
        backup_id: &str,
    ) -> anyhow::Result<()> {
        tx.execute(
            &format!(
                "UPDATE {} SET restored_at = now() WHERE backup_id = $1",
                self.downgrades()
            ),
            &[&backup_id],
        )
        .await
        .pg(|| "recording the restore")?;
        Ok(())
    }

    /// Closes the open records of downgrades to any of `left` (revisions an upgrade or a
    /// stamp moved on from without restoring them): their data no longer belongs at the
    /// current revision, so `upgrade --restore` must not take it (`restore ID` still can).
    pub async fn supersede(
        &self,
        tx: &impl GenericClient,
        left: &[Option<String>],
    ) -> anyhow::Result<u64> {
        if !self.exists(tx, DOWNGRADES_TABLE).await? {
            return Ok(0);
        }
        let mut closed = 0;
        for revision in left {
            closed += tx
                .execute(
                    &format!(
                        "UPDATE {} SET superseded_at = now()
                         WHERE restored_at IS NULL AND superseded_at IS NULL
                           AND to_revision IS NOT DISTINCT FROM $1",
                        self.downgrades()
                    ),
                    &[revision],
                )
                .await
                .pg(|| "closing superseded downgrade records")?;
        }
        Ok(closed)
    }

    fn alembic_version(&self) -> String {
        qualified(&self.schema, ALEMBIC_VERSION_TABLE)
    }

    /// The revisions Alembic's `alembic_version` holds (its heads; one unless the history
    /// branches), or `None` when the table does not exist.
    pub async fn alembic_heads(
        &self,
        client: &impl GenericClient,
    ) -> anyhow::Result<Option<Vec<String>>> {
        if !self.exists(client, ALEMBIC_VERSION_TABLE).await? {
            return Ok(None);
        }
        let rows = client
            .query(
                &format!(
                    "SELECT version_num::text FROM {} ORDER BY 1",
                    self.alembic_version()
                ),
                &[],
            )
            .await
            .pg(|| format!("reading {}", self.alembic_version()))?;
        Ok(Some(rows.iter().map(|r| r.get(0)).collect()))
    }

    /// Whether `alembic_version` holds `revision`, inside the step's transaction.
    pub async fn alembic_holds(
        &self,
        tx: &impl GenericClient,
        revision: &str,
    ) -> anyhow::Result<bool> {
        Ok(self
            .alembic_heads(tx)
            .await?
            .is_some_and(|h| h.iter().any(|r| r == revision)))
    }

    /// Makes `heads` what `alembic_version` holds (creating it with `ddl`, as Alembic would),
    /// inside the stamp's transaction: `alembic current` then says what `backstop current` says.
    pub async fn stamp_alembic(
        &self,
        tx: &impl GenericClient,
        ddl: &str,
        heads: &[String],
    ) -> anyhow::Result<()> {
        tx.batch_execute(ddl)
            .await
            .pg(|| format!("creating {}", self.alembic_version()))?;
        tx.execute(&format!("DELETE FROM {}", self.alembic_version()), &[])
            .await
            .pg(|| format!("clearing {}", self.alembic_version()))?;
        for head in heads {
            tx.execute(
                &format!(
                    "INSERT INTO {} (version_num) VALUES ($1)",
                    self.alembic_version()
                ),
                &[head],
            )
            .await
            .pg(|| format!("recording {head} in {}", self.alembic_version()))?;
        }
        Ok(())
    }

    /// Every recorded downgrade, newest first.
    pub async fn downgrades_recorded(
        &self,
        client: &impl GenericClient,
    ) -> anyhow::Result<Vec<DowngradeRecord>> {
        Ok(client
            .query(
                &format!(
                    // to_jsonb: a table from before superseded_at existed still reads.
                    "SELECT backup_id, from_revision, to_revision, restored_at IS NOT NULL,
                            (pg_catalog.to_jsonb(d) ->> 'superseded_at') IS NOT NULL
                     FROM {} d ORDER BY downgraded_at DESC, backup_id DESC",
                    self.downgrades()
                ),
                &[],
            )
            .await
            .pg(|| "reading the recorded downgrades")?
            .iter()
            .map(|r| DowngradeRecord {
                backup_id: r.get(0),
                from_revision: r.get(1),
                to_revision: r.get(2),
                restored: r.get(3),
                superseded: r.get(4),
            })
            .collect())
    }

    /// Every recorded downgrade; empty when the table does not exist (nothing was ever
    /// downgraded here).
    pub async fn downgrade_outcomes(
        &self,
        client: &impl GenericClient,
    ) -> anyhow::Result<Vec<DowngradeRecord>> {
        if !self.exists(client, DOWNGRADES_TABLE).await? {
            return Ok(Vec::new());
        }
        self.downgrades_recorded(client).await
    }
}
