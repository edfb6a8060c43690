//! What `upgrade`, `downgrade`, `stamp`, `current` and `history` share: the migrations of
//! one directory against one database, a session under the migration lock, the status and
//! plan read under it, and the report they return.

use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use tokio_postgres::{Client, GenericClient};

use crate::config::{BackupConfig, DatabaseConfig};
use crate::context::OpContext;
use crate::error::refused;
use crate::ledger::tool::ToolTable;
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
    /// The migration tool's table kept in step, once looked up.
    tool: std::sync::OnceLock<Option<ToolTable>>,
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

/// A backup `upgrade --restore` would load, and where.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedRestore {
    pub backup_id: String,
    /// The revision after which it loads (its downgrade started there).
    pub after: String,
    /// The tables it holds, as `backups show` names them.
    pub tables: Vec<String>,
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
    /// For `upgrade --dry-run --restore`: the backups the upgrade would load, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub would_restore: Vec<PlannedRestore>,
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
            tool: std::sync::OnceLock::new(),
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

    /// Runs steps with their bookkeeping: the ledger, and the tool's table when
    /// [`prepare`](Self::prepare) found one to keep.
    pub(crate) fn runner<'a>(&'a self, ledger: &'a Ledger) -> StepRunner<'a> {
        StepRunner {
            ledger,
            lock_timeout_secs: self.settings.lock_timeout_secs,
            alembic: self.set.alembic.is_some(),
            tool: self.tool.get().cloned().flatten(),
            set: &self.set,
        }
    }

    /// The migration tool's table this set keeps in step (see [`crate::migrate::tool`]).
    pub(crate) async fn tool_table(
        &self,
        client: &impl GenericClient,
    ) -> anyhow::Result<Option<ToolTable>> {
        if let Some(t) = self.tool.get() {
            return Ok(t.clone());
        }
        let t = ToolTable::resolve(self.set.tool, &self.settings.schema, client).await?;
        Ok(self.tool.get_or_init(|| t).clone())
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
        // `current` on a schema that does not exist is a typo, not "(none)".
        require_schema(client, &self.settings.schema).await?;
        let applied = self.applied(client).await?;
        Ok(Status::compare(
            &self.set,
            applied,
            self.db.describe(),
            self.settings.schema.clone(),
        ))
    }

    /// The applied revisions. For an Alembic project, `alembic_version` decides which (so
    /// `backstop current` is `alembic current`, whoever ran the last step); for a layout
    /// whose tool keeps a table of its own, that table decides. The ledger adds when each
    /// ran and its checksum; revisions the tool applied alone count with the checksum of
    /// their file as it is.
    async fn applied(
        &self,
        client: &impl GenericClient,
    ) -> anyhow::Result<Option<Vec<AppliedRow>>> {
        let ledger = self.ledger();
        let recorded = ledger.applied(client).await?;
        let (tool_rows, by) = if let Some(project) = &self.set.alembic {
            let Some(heads) = ledger.alembic_heads(client).await? else {
                return Ok(recorded.map(|_| Vec::new()));
            };
            let rows = project
                .with_ancestors(&heads)
                .into_iter()
                .map(|revision| (revision, false))
                .collect::<Vec<_>>();
            (rows, "Alembic".to_string())
        } else {
            let Some(tool) = self.tool_table(client).await? else {
                return Ok(recorded);
            };
            let Some(rows) = tool.applied(client, &self.set).await? else {
                return Ok(recorded);
            };
            let ours = recorded.as_deref().unwrap_or_default();
            if rows.is_empty() && !ours.is_empty() {
                return refused(format!(
                    "{} records no migration, but backstop_migrations records {} (up to {}); if {} reverted them, record that with `backstop stamp base`; if the table was only created, record where the database is with `backstop stamp {}`; nothing was changed",
                    tool.describe(),
                    ours.len(),
                    self.highest(ours),
                    tool.tool.name(),
                    self.highest(ours),
                ));
            }
            let rows = rows.into_iter().map(|r| (r.revision, r.modified)).collect();
            (rows, tool.tool.name().to_string())
        };
        let rows = recorded.unwrap_or_default();
        let mut applied: Vec<AppliedRow> = tool_rows
            .into_iter()
            .map(|(revision, modified)| {
                match rows.iter().find(|r| r.revision == revision && !modified) {
                    Some(row) => row.clone(),
                    None => AppliedRow {
                        checksum: match self.set.get(&revision) {
                            Some(_) if modified => format!("(changed since {by} applied it)"),
                            Some(m) => m.checksum.clone(),
                            None => String::new(),
                        },
                        revision,
                        applied_at: format!("(by {by})"),
                        duration_ms: 0,
                    },
                }
            })
            .collect();
        applied.sort_by(|a, b| a.revision.cmp(&b.revision));
        Ok(Some(applied))
    }

    /// The latest of `rows` in the set's order, for messages.
    fn highest(&self, rows: &[AppliedRow]) -> String {
        rows.iter()
            .max_by_key(|r| self.set.position(&r.revision))
            .map(|r| r.revision.clone())
            .unwrap_or_default()
    }

    /// Brings the bookkeeping in step before any step runs, so every step records against
    /// the truth: the ledger follows `alembic_version` or the tool's table (a database the
    /// tool migrated, or steps it ran since), and a tool table that is missing is created
    /// with what the ledger records (so migrations that refer to it find it, as they would
    /// under the tool).
    async fn keep_in_step(
        &self,
        client: &Client,
        status: &Status,
    ) -> anyhow::Result<Option<String>> {
        let tool = match &self.set.alembic {
            Some(_) => None,
            None => match self.tool_table(client).await? {
                Some(tool) => Some(tool),
                None if self.set.tool == crate::migrate::ToolChoice::Pairs => {
                    return Ok(Some(
                        "these .up.sql/.down.sql files may be golang-migrate's or sqlx's and the database has neither's table, so only backstop_migrations records the steps; set [migrations] layout = \"sqlx\" or \"golang-migrate\" to keep that tool's table in step too".into(),
                    ))
                }
                None => return Ok(None),
            },
        };
        let applied: Vec<(&str, &str)> = status
            .applied()
            .filter_map(|e| Some((e.revision.as_str(), e.recorded_checksum.as_deref()?)))
            .collect();
        if let Some(tool) = &tool {
            if !tool.exists(client).await? {
                let migrations: Vec<&crate::migrate::Migration> = applied
                    .iter()
                    .filter_map(|(r, _)| self.set.get(r))
                    .collect();
                tool.stamp(client, &migrations).await?;
                return Ok((!migrations.is_empty()).then(|| {
                    format!(
                        "created {} from backstop_migrations: it records the {} migration(s) applied",
                        tool.describe(),
                        migrations.len()
                    )
                }));
            }
        }
        let ledger = self.ledger();
        let recorded = ledger.applied(client).await?.unwrap_or_default();
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
            "recorded from {}: the database is at {} as {} left it",
            tool.as_ref()
                .map_or("alembic_version".to_string(), |t| t.describe()),
            status.current.as_deref().unwrap_or("(none)"),
            tool.as_ref().map_or("Alembic", |t| t.tool.name())
        )))
    }

    /// Runs `work` on a migration session holding the migration lock, which is given back
    /// on every path (and by the server, with the connection, if the process dies).
    pub(crate) async fn locked<T>(
        &self,
        ctx: &OpContext,
        work: impl AsyncFnOnce(&mut Client) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let mut client = ctx.unless_cancelled(self.connect()).await?;
        let lock = MigrationLock::acquire(
            &client,
            &self.db,
            &self.settings.schema,
            &self.settings,
            ctx,
        )
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
        let status = self.status_with(client).await?;
        status.check_consistent(allow_drift)?;
        let adopted = if dry_run {
            None
        } else {
            self.keep_in_step(client, &status).await?
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
            would_restore: Vec::new(),
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
