//! The advisory lock that serialises schema changes on one database and schema, so two runs
//! (two hosts, a daemon and a shell) never interleave.

use sha2::{Digest, Sha256};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::{Database, PgContext, PgError};
use crate::config::DatabaseConfig;
use crate::context::OpContext;
use crate::error::{err, refused, Kind};

/// A session advisory lock that serialises schema changes on one database and schema.
///
/// Release it with [`MigrationLock::release`] on every path; if the process dies instead,
/// the server drops the lock with the connection.
pub struct MigrationLock {
    key: i64,
}

impl MigrationLock {
    /// The lock id: derived from database and schema, so unrelated databases never contend.
    pub fn key(db: &Database, schema: &str) -> i64 {
        let digest =
            Sha256::digest(format!("backstop:migrate:{}:{schema}", db.dbname()).as_bytes());
        i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
    }

    pub async fn acquire(
        client: &Client,
        db: &Database,
        schema: &str,
        settings: &DatabaseConfig,
        ctx: &OpContext,
    ) -> anyhow::Result<MigrationLock> {
        let key = Self::key(db, schema);
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await
            .pg(|| "taking the migration lock")?
            .get(0);
        if !got {
            let holder = Self::holder(client, key)
                .await
                .unwrap_or_else(|| "unknown".into());
            tracing::warn!(
                "another backstop run ({holder}) holds the migration lock on {}; waiting up to {}s",
                db.describe(),
                settings.migration_lock_timeout_secs
            );
            client
                .batch_execute(&format!(
                    "SET lock_timeout = '{}s'",
                    settings.migration_lock_timeout_secs
                ))
                .await
                .pg(|| "setting the lock wait")?;
            let waited = db
                .unless_cancelled(ctx, client.cancel_token(), async {
                    Ok(client.execute("SELECT pg_advisory_lock($1)", &[&key]).await)
                })
                .await?;
            client
                .batch_execute(&format!(
                    "SET lock_timeout = '{}s'",
                    settings.lock_timeout_secs
                ))
                .await
                .pg(|| "restoring lock_timeout")?;
            if let Err(e) = waited {
                let pg = PgError::from(e);
                if pg.code.as_ref() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
                    return Err(err(
                        Kind::LockHeld,
                        format!(
                        "another backstop run ({holder}) held the migration lock on {} for more than {}s; nothing was changed; wait for it to finish and retry, or raise [database] migration_lock_timeout_secs",
                        db.describe(),
                        settings.migration_lock_timeout_secs
                    ),
                    ));
                }
                return Err(anyhow::Error::new(pg).context("waiting for the migration lock"));
            }
        }
        // A transaction-mode pooler hands each statement to whichever server session is
        // free, so the lock would not protect anything: make sure this session holds it.
        let held: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND granted
                   AND pid = pg_backend_pid() AND objsubid = 1
                   AND classid = (($1::bigint >> 32) & 4294967295)::bigint::oid
                   AND objid = ($1::bigint & 4294967295)::bigint::oid)",
                &[&key],
            )
            .await
            .pg(|| "checking the migration lock")?
            .get(0);
        if !held {
            return refused(format!(
                "the migration lock on {} did not stay with this session, so the database url points at a transaction-mode pooler (PgBouncer, a Neon -pooler host); use the direct endpoint for backstop",
                db.describe()
            ));
        }
        Ok(MigrationLock { key })
    }

    async fn holder(client: &Client, key: i64) -> Option<String> {
        let row = client
            .query_opt(
                "SELECT l.pid, coalesce(a.application_name, ''), coalesce(a.client_addr::text, 'local')
                 FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
                 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                   AND l.classid = (($1::bigint >> 32) & 4294967295)::bigint::oid
                   AND l.objid = ($1::bigint & 4294967295)::bigint::oid LIMIT 1",
                &[&key],
            )
            .await
            .ok()??;
        let pid: i32 = row.get(0);
        let app: String = row.get(1);
        let addr: String = row.get(2);
        Some(format!(
            "server pid {pid}, application {app:?}, from {addr}"
        ))
    }

    /// Gives the lock back. A failure is only logged: the lock ends with the connection anyway.
    pub async fn release(self, client: &Client) {
        if let Err(e) = client
            .execute("SELECT pg_advisory_unlock($1)", &[&self.key])
            .await
        {
            tracing::debug!("releasing the migration lock: {}", PgError::from(e));
        }
    }
}
