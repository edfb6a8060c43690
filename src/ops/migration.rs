//! What `upgrade`, `downgrade`, `stamp`, `current` and `history` share: the migrations of
//! one directory against one database, a session under the migration lock, the status and
//! plan read under it, and the report they return.

use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use tokio_postgres::{Client, GenericClient};

use crate::config::{BackupConfig, DatabaseConfig};
use crate::error::refused;
use crate::ledger::{AppliedRow, Ledger};
use crate::migrate::{plan, Direction, MigrationSet, Plan, Status, StepReport, StepRunner, Target};
use crate::pg::catalog::{alembic_schema, existing_relations, require_schema};
use crate::pg::lock::MigrationLock;
use crate::pg::session::migration_session;
use crate::pg::{qualified, Database};
use crate::protect::Loss;
use crate::store::Store;

/// The migrations of one directory against one database and schema.
pub struct Migrator {
    pub db: Database,
    pub settings: DatabaseConfig,
    pub set: MigrationSet,
    /// Where pre-downgrade backups go and `--restore` reads from.
    pub store: Option<Arc<Store>>,
    pub backup: BackupConfig,
}

/// What a protected downgrade found and saved.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Protection {
    /// Every table the down SQL takes data from, with the rows it holds.
    pub losses: Vec<Loss>,
    /// Sequences no column owns that the down SQL drops or resets (`schema.name`).
    pub sequences: Vec<String>,
    /// Tables whose writers wait while the downgrade runs (`schema.name`, in lock order).
    pub locked: Vec<String>,
    /// The pre-downgrade backup; `None` when nothing with rows would be lost.
    pub backup_id: Option<String>,
    /// Set when a step cannot run in a transaction and every table was backed up first.
    pub whole_schema: bool,
}

/// One backup put back by `upgrade --restore`.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub backup_id: String,
    pub tables: Vec<String>,
    pub rows: u64,
    pub skipped: Vec<String>,
    pub warnings: Vec<String>,
}

/// The outcome of `upgrade`/`downgrade`.
#[derive(Debug, Clone, Serialize)]
pub struct MigrateReport {
    pub database: String,
    pub dry_run: bool,
    pub plan: Plan,
    pub applied: Vec<StepReport>,
    /// The revision after the run (for a dry run: unchanged).
    pub current: String,
    pub protection: Option<Protection>,
    pub restored: Vec<Restored>,
    /// What the user should know about the run (nothing to restore, records closed).
    pub notes: Vec<String>,
}

impl Migrator {
    /// Refuses to `what` with no migrations at all: exiting 0 having done nothing would
    /// look like success to a deploy script.
    pub fn require_migrations(&self, what: &str) -> anyhow::Result<()> {
        if self.set.migrations.is_empty() {
            return crate::error::usage(format!(
                "nothing to {what}: {} holds no migrations; the layouts read are {}",
                self.set.dir.display(),
                crate::migrate::layout::every_layout()
            ));
        }
        Ok(())
    }

    pub fn new(db: Database, settings: DatabaseConfig, set: MigrationSet) -> Migrator {
        Migrator {
            db,
            settings,
            set,
            store: None,
            backup: BackupConfig::default(),
        }
    }

    /// Downgrades back up to `store` first; `upgrade --restore` reads from it.
    pub fn with_store(mut self, store: Arc<Store>, backup: BackupConfig) -> Migrator {
        self.store = Some(store);
        self.backup = backup;
        self
    }

    pub fn ledger(&self) -> Ledger {
        Ledger::new(&self.settings.schema)
    }

    pub(crate) fn runner<'a>(&self, ledger: &'a Ledger) -> StepRunner<'a> {
        StepRunner {
            ledger,
            lock_timeout_secs: self.settings.lock_timeout_secs,
            alembic: self.set.alembic.is_some(),
        }
    }

    /// The store pre-downgrade backups go to; refused when none is configured.
    pub(crate) fn store(&self) -> anyhow::Result<&Store> {
        match &self.store {
            Some(s) => Ok(&**s),
            None => refused("no backup store is configured, so the downgrade cannot back up the data it drops; nothing was changed"),
        }
    }

    /// Opens a connection with the session settings migrations run under.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let client = self.db.connect().await?;
        migration_session(&client, &self.settings).await?;
        Ok(client)
    }

    /// Reads the ledger and compares it with the files.
    pub async fn status(&self) -> anyhow::Result<Status> {
        let client = self.db.connect().await?;
        self.status_with(&client).await
    }

    pub(crate) async fn status_with(&self, client: &impl GenericClient) -> anyhow::Result<Status> {
        let applied = self.applied(client).await?;
        Ok(Status::compare(
            &self.set,
            applied,
            self.db.describe(),
            self.settings.schema.clone(),
        ))
    }

    /// The applied revisions. For an Alembic project, `alembic_version` decides which (so
    /// `backstop current` is `alembic current`, whoever ran the last step), and the ledger
    /// adds when each ran and its checksum; revisions Alembic applied alone count with the
    /// checksum of their file as it is.
    async fn applied(
        &self,
        client: &impl GenericClient,
    ) -> anyhow::Result<Option<Vec<AppliedRow>>> {
        let ledger = self.ledger();
        let recorded = ledger.applied(client).await?;
        let Some(project) = &self.set.alembic else {
            return Ok(recorded);
        };
        let Some(heads) = ledger.alembic_heads(client).await? else {
            return Ok(recorded.map(|_| Vec::new()));
        };
        let rows = recorded.unwrap_or_default();
        let mut applied: Vec<AppliedRow> = project
            .with_ancestors(&heads)
            .into_iter()
            .map(
                |revision| match rows.iter().find(|r| r.revision == revision) {
                    Some(row) => row.clone(),
                    None => AppliedRow {
                        checksum: self
                            .set
                            .get(&revision)
                            .map(|m| m.checksum.clone())
                            .unwrap_or_default(),
                        revision,
                        applied_at: "(by Alembic)".into(),
                        duration_ms: 0,
                    },
                },
            )
            .collect();
        applied.sort_by(|a, b| a.revision.cmp(&b.revision));
        Ok(Some(applied))
    }

    /// Brings the ledger in step with `alembic_version` (a database Alembic migrated, or
    /// steps Alembic ran since), so every later step records against the truth.
    async fn follow_alembic(
        &self,
        client: &Client,
        status: &Status,
    ) -> anyhow::Result<Option<String>> {
        if self.set.alembic.is_none() {
            return Ok(None);
        }
        let ledger = self.ledger();
        let recorded = ledger.applied(client).await?.unwrap_or_default();
        let applied: Vec<(&str, &str)> = status
            .applied()
            .filter_map(|e| Some((e.revision.as_str(), e.recorded_checksum.as_deref()?)))
            .collect();
        let same = recorded.len() == applied.len()
            && applied
                .iter()
                .all(|(r, _)| recorded.iter().any(|x| x.revision == *r));
        if same {
            return Ok(None);
        }
        ledger.ensure(client).await?;
        ledger.stamp(client, &applied).await?;
        Ok(Some(format!(
            "recorded from alembic_version: the database is at {} as Alembic left it",
            status.current.as_deref().unwrap_or("(none)")
        )))
    }

    /// Runs `work` on a migration session holding the migration lock, which is given back
    /// on every path (and by the server, with the connection, if the process dies).
    pub(crate) async fn locked<T>(
        &self,
        work: impl AsyncFnOnce(&mut Client) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let mut client = self.connect().await?;
        let lock = MigrationLock::acquire(&client, &self.db, &self.settings.schema, &self.settings)
            .await?;
        let result = work(&mut client).await;
        lock.release(&client).await;
        result
    }

    /// Status and plan under the lock: refuses inconsistent states, and a first upgrade over
    /// a schema some other tool created.
    pub(crate) async fn prepare(
        &self,
        client: &Client,
        target: &Target,
        allow_drift: bool,
        dry_run: bool,
    ) -> anyhow::Result<MigrateReport> {
        require_schema(client, &self.settings.schema).await?;
        let status = self.status_with(client).await?;
        status.check_consistent(allow_drift)?;
        let adopted = if dry_run {
            None
        } else {
            self.follow_alembic(client, &status).await?
        };
        let plan = plan(&self.set, &status, target)?;
        if plan.direction == Direction::Up && status.current.is_none() && !plan.steps.is_empty() {
            self.refuse_unrecorded_schema(client).await?;
        }
        Ok(MigrateReport {
            database: self.db.describe(),
            dry_run,
            current: status.current_label(),
            plan,
            applied: Vec::new(),
            protection: None,
            restored: Vec::new(),
            notes: adopted.into_iter().collect(),
        })
    }

    /// Runs the plan's steps one transaction each; a failure says where the database stays.
    pub(crate) async fn run_steps(
        &self,
        client: &mut Client,
        report: &mut MigrateReport,
    ) -> anyhow::Result<()> {
        let ledger = self.ledger();
        let runner = self.runner(&ledger);
        let mut previous = report.plan.from.clone();
        for step in &report.plan.steps {
            let done = runner
                .run(client, report.plan.direction, step)
                .await
                .with_context(|| {
                    format!(
                        "the database stays at revision {}",
                        previous.as_deref().unwrap_or("(none)")
                    )
                })?;
            previous = match report.plan.direction {
                Direction::Up => Some(step.revision.clone()),
                Direction::Down => {
                    let idx = self.set.position(&step.revision).unwrap_or(0);
                    idx.checked_sub(1)
                        .map(|i| self.set.migrations[i].revision.clone())
                }
            };
            report.applied.push(done);
        }
        report.current = self.status_with(&*client).await?.current_label();
        Ok(())
    }

    /// Refuses to run the first migration over tables that some other tool created.
    async fn refuse_unrecorded_schema(&self, client: &Client) -> anyhow::Result<()> {
        let schema = &self.settings.schema;
        let tables = existing_relations(client, schema).await?;
        let alembic = alembic_schema(client, schema).await?;
        // An Alembic project keeps its (empty) alembic_version after a downgrade to base.
        if tables.is_empty() && (alembic.is_none() || self.set.alembic.is_some()) {
            return Ok(());
        }
        let mut msg = format!(
            "{} already has tables in schema {schema} ({}) but no backstop migration is recorded",
            self.db.describe(),
            if tables.is_empty() {
                "none".to_string()
            } else {
                tables.join(", ")
            }
        );
        if let Some(ns) = alembic {
            let version: Option<String> = client
                .query_opt(
                    &format!(
                        "SELECT version_num::text FROM {} LIMIT 1",
                        qualified(&ns, "alembic_version")
                    ),
                    &[],
                )
                .await
                .ok()
                .flatten()
                .map(|r| r.get(0));
            msg.push_str(&format!(
                "; it is managed by Alembic (alembic_version {}): point [migrations] dir at the Alembic project (the folder of alembic.ini) and backstop reads its revisions through Alembic",
                version.as_deref().unwrap_or("empty")
            ));
        }
        msg.push_str(
            "; if it already holds the schema of a revision, record that with `backstop stamp REVISION` and upgrade from there; nothing was changed",
        );
        refused(msg)
    }
}
