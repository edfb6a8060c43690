//! Planning and executing migrations against one database.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient, Transaction};

use super::protect::{column_spec, find_losses, lock_and_measure, Loss};
use super::source::{Migration, MigrationSet, Script};
use crate::backup::export::ExportJob;
use crate::backup::manifest::{new_backup_id, Kind, Manifest, Scope, MANIFEST_FORMAT};
use crate::backup::{
    describe_tables, discard, export_sequential, write_manifest, BackupRequest, EXPORT_SETTINGS,
    RESET_EXPORT_SETTINGS,
};
use crate::config::{BackupConfig, DatabaseConfig};
use crate::db::{qualified, quote_ident, Database, PgContext, PgError};
use crate::error::{refused, usage, Error};
use crate::progress::Progress;
use crate::restore::{load_manifest, restore_into};
use crate::store::Store;

/// The bookkeeping table, created in the configured schema on first use.
pub const BOOKKEEPING_TABLE: &str = "backstop_migrations";

/// Every backed-up downgrade, written in the downgrade's own transaction, so a backup
/// whose downgrade committed can be told from one whose downgrade never happened.
pub const DOWNGRADES_TABLE: &str = "backstop_downgrades";

/// backstop's own tables, left out of schema snapshots, backups and emptiness checks.
pub const OWN_TABLES: &[&str] = &[BOOKKEEPING_TABLE, DOWNGRADES_TABLE];

/// Where `upgrade` should go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpTarget {
    Head,
    Relative(usize),
    Revision(String),
}

/// Where `downgrade` should go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownTarget {
    Relative(usize),
    Base,
    Revision(String),
}

impl std::str::FromStr for UpTarget {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        if s == "head" {
            return Ok(UpTarget::Head);
        }
        if let Some(n) = s.strip_prefix('+') {
            return match n.parse::<usize>() {
                Ok(n) if n > 0 => Ok(UpTarget::Relative(n)),
                _ => usage(format!(
                    "upgrade target {s:?} is not head, +N (N ≥ 1) or a revision"
                )),
            };
        }
        Ok(UpTarget::Revision(s.to_string()))
    }
}

impl std::str::FromStr for DownTarget {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        if s == "base" {
            return Ok(DownTarget::Base);
        }
        if let Some(n) = s.strip_prefix('-') {
            return match n.parse::<usize>() {
                Ok(n) if n > 0 => Ok(DownTarget::Relative(n)),
                _ => usage(format!(
                    "downgrade target {s:?} is not -N (N ≥ 1), base or a revision"
                )),
            };
        }
        Ok(DownTarget::Revision(s.to_string()))
    }
}

/// Either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Up(UpTarget),
    Down(DownTarget),
}

/// What the user asked `upgrade` or `downgrade` to do.
#[derive(Debug, Clone)]
pub struct MigrateRequest {
    pub target: Target,
    pub dry_run: bool,
    /// Go on although an applied `up.sql` changed since it ran.
    pub allow_drift: bool,
    /// Downgrade without a backup; the caller has said that losing the data is acceptable.
    pub allow_data_loss: bool,
    /// `upgrade --restore`: `latest`, or a backup id.
    pub restore: Option<String>,
    /// Tables of the backup to leave out of `--restore`.
    pub restore_skip: Vec<String>,
}

/// One row of `backstop_migrations`.
#[derive(Debug, Clone, Serialize)]
pub struct AppliedRow {
    pub revision: String,
    pub checksum: String,
    pub applied_at: String,
    pub duration_ms: i64,
}

/// How a migration stands against the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryState {
    Applied,
    Pending,
    /// Applied, but `up.sql` changed since.
    Drifted,
    /// Recorded as applied, but its folder is gone.
    Missing,
}

/// One line of `history`.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub revision: String,
    pub state: EntryState,
    pub applied_at: Option<String>,
    pub duration_ms: Option<i64>,
    /// Checksum of `up.sql` on disk.
    pub checksum: Option<String>,
    /// Checksum recorded when it was applied.
    pub recorded_checksum: Option<String>,
    #[serde(skip)]
    number: u64,
}

/// The migrations on disk compared with the bookkeeping of one database.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub database: String,
    pub schema: String,
    /// The highest applied revision.
    pub current: Option<String>,
    pub head: Option<String>,
    /// Whether `backstop_migrations` exists yet.
    pub tracked: bool,
    pub entries: Vec<Entry>,
}

impl Status {
    /// `001_initial (head)`, or `(none)` on an empty database.
    pub fn current_label(&self) -> String {
        match &self.current {
            None => "(none)".into(),
            Some(c) if Some(c) == self.head.as_ref() => format!("{c} (head)"),
            Some(c) => c.clone(),
        }
    }

    pub fn drifted(&self) -> Vec<&Entry> {
        self.entries
            .iter()
            .filter(|e| e.state == EntryState::Drifted)
            .collect()
    }

    fn applied(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| {
            matches!(
                e.state,
                EntryState::Applied | EntryState::Drifted | EntryState::Missing
            )
        })
    }

    /// Refuses states in which no plan can be trusted: a recorded revision whose folder is
    /// gone, a pending migration numbered below an applied one, or drift (unless allowed).
    fn check_consistent(&self, allow_drift: bool) -> anyhow::Result<()> {
        if let Some(e) = self.entries.iter().find(|e| e.state == EntryState::Missing) {
            return usage(format!(
                "revision {} is recorded as applied in {} but its migration folder is gone; restore the folder (or `stamp` the database to a revision that exists)",
                e.revision, self.database
            ));
        }
        if let Some(current) = self
            .entries
            .iter()
            .rev()
            .find(|e| e.state != EntryState::Pending)
        {
            if let Some(gap) = self
                .entries
                .iter()
                .find(|e| e.state == EntryState::Pending && e.number < current.number)
            {
                return usage(format!(
                    "migration {} is pending but numbered below the applied {}; give it a number above {} so the order is linear",
                    gap.revision, current.revision, current.revision
                ));
            }
        }
        let drifted = self.drifted();
        if !drifted.is_empty() && !allow_drift {
            let names: Vec<_> = drifted.iter().map(|e| e.revision.as_str()).collect();
            return Err(Error::Verification(format!(
                "up.sql of {} changed since it was applied (checksum drift); restore the original file, or pass --allow-drift if the change is intended",
                names.join(", ")
            ))
            .into());
        }
        Ok(())
    }
}

/// Which way a plan goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Up,
    Down,
}

/// One script to run and the bookkeeping that goes with it.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedStep {
    pub revision: String,
    pub checksum: String,
    #[serde(skip)]
    pub script: Script,
    /// The SQL, for `--dry-run`.
    pub sql: String,
    pub no_transaction: bool,
}

/// The ordered steps from the current revision to the target.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub direction: Direction,
    pub from: Option<String>,
    pub to: Option<String>,
    pub steps: Vec<PlannedStep>,
}

impl Plan {
    fn new(
        direction: Direction,
        from: Option<String>,
        to: Option<String>,
        migrations: &[&Migration],
    ) -> Plan {
        let steps = migrations
            .iter()
            .map(|m| {
                let script = match direction {
                    Direction::Up => m.up.clone(),
                    Direction::Down => m.down.clone(),
                };
                PlannedStep {
                    revision: m.revision.clone(),
                    checksum: m.checksum.clone(),
                    sql: script.sql.clone(),
                    no_transaction: script.no_transaction,
                    script,
                }
            })
            .collect();
        Plan {
            direction,
            from,
            to,
            steps,
        }
    }
}

/// What one executed step did.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub revision: String,
    pub direction: Direction,
    pub duration_ms: u64,
}

/// What a protected downgrade found and saved.
#[derive(Debug, Clone, Serialize)]
pub struct Protection {
    /// Every table the down SQL takes data from, with the rows it holds.
    pub losses: Vec<crate::migrate::protect::Loss>,
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
}

/// The outcome of `stamp`.
#[derive(Debug, Clone, Serialize)]
pub struct StampReport {
    pub database: String,
    pub previous: Option<String>,
    pub current: Option<String>,
}

/// The highest revision recorded in `backstop_migrations`, or `None` (also when the
/// table does not exist yet). Reads through `client`, so inside a snapshot if it is one.
pub async fn recorded_revision(
    client: &impl GenericClient,
    schema: &str,
) -> anyhow::Result<Option<String>> {
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = $1 AND tablename = $2)",
            &[&schema, &BOOKKEEPING_TABLE],
        )
        .await
        .pg(|| "checking for the bookkeeping table")?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let revisions: Vec<String> = client
        .query(
            &format!(
                "SELECT revision FROM {}",
                qualified(schema, BOOKKEEPING_TABLE)
            ),
            &[],
        )
        .await
        .pg(|| "reading the recorded revisions")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let number = |r: &String| {
        r.split('_')
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(revisions.into_iter().max_by_key(number))
}

/// Migrations of one directory against one database and schema.
pub struct Engine {
    pub db: Database,
    pub settings: DatabaseConfig,
    pub set: MigrationSet,
    /// Where pre-downgrade backups go and `--restore` reads from.
    pub store: Option<Store>,
    pub backup: BackupConfig,
}

impl Engine {
    pub fn new(db: Database, settings: DatabaseConfig, set: MigrationSet) -> Engine {
        Engine {
            db,
            settings,
            set,
            store: None,
            backup: BackupConfig::default(),
        }
    }

    /// Downgrades back up to `store` first; `upgrade --restore` reads from it.
    pub fn with_store(mut self, store: Store, backup: BackupConfig) -> Engine {
        self.store = Some(store);
        self.backup = backup;
        self
    }

    fn schema(&self) -> &str {
        &self.settings.schema
    }

    fn table(&self) -> String {
        qualified(self.schema(), BOOKKEEPING_TABLE)
    }

    /// Opens a connection with the session settings migrations run under.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let client = self.db.connect().await?;
        client
            .batch_execute(&format!(
                "SET search_path TO {}; SET lock_timeout = '{}s'; SET statement_timeout = 0",
                quote_ident(self.schema()),
                self.settings.lock_timeout_secs
            ))
            .await
            .pg(|| "setting up the migration session")?;
        Ok(client)
    }

    /// Reads the bookkeeping and compares it with the files.
    pub async fn status(&self) -> anyhow::Result<Status> {
        let client = self.db.connect().await?;
        self.status_with(&client).await
    }

    async fn status_with(&self, client: &impl GenericClient) -> anyhow::Result<Status> {
        let tracked: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = $1 AND tablename = $2)",
                &[&self.schema(), &BOOKKEEPING_TABLE],
            )
            .await
            .pg(|| "checking for the bookkeeping table")?
            .get(0);
        let mut rows = Vec::new();
        if tracked {
            for row in client
                .query(
                    &format!(
                        "SELECT revision, checksum, applied_at::text, duration_ms FROM {}",
                        self.table()
                    ),
                    &[],
                )
                .await
                .pg(|| format!("reading {}", self.table()))?
            {
                rows.push(AppliedRow {
                    revision: row.get(0),
                    checksum: row.get(1),
                    applied_at: row.get(2),
                    duration_ms: row.get(3),
                });
            }
        }
        Ok(self.compare(tracked, rows))
    }

    fn compare(&self, tracked: bool, rows: Vec<AppliedRow>) -> Status {
        let mut entries: Vec<Entry> = self
            .set
            .migrations
            .iter()
            .map(|m| {
                let row = rows.iter().find(|r| r.revision == m.revision);
                Entry {
                    revision: m.revision.clone(),
                    state: match row {
                        None => EntryState::Pending,
                        Some(r) if r.checksum != m.checksum => EntryState::Drifted,
                        Some(_) => EntryState::Applied,
                    },
                    applied_at: row.map(|r| r.applied_at.clone()),
                    duration_ms: row.map(|r| r.duration_ms),
                    checksum: Some(m.checksum.clone()),
                    recorded_checksum: row.map(|r| r.checksum.clone()),
                    number: m.number,
                }
            })
            .collect();
        for r in rows.iter().filter(|r| self.set.get(&r.revision).is_none()) {
            entries.push(Entry {
                revision: r.revision.clone(),
                state: EntryState::Missing,
                applied_at: Some(r.applied_at.clone()),
                duration_ms: Some(r.duration_ms),
                checksum: None,
                recorded_checksum: Some(r.checksum.clone()),
                number: r
                    .revision
                    .split('_')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(u64::MAX),
            });
        }
        entries.sort_by(|a, b| a.number.cmp(&b.number).then(a.revision.cmp(&b.revision)));
        let mut status = Status {
            database: self.db.describe(),
            schema: self.schema().to_string(),
            current: None,
            head: self.set.head().map(|m| m.revision.clone()),
            tracked,
            entries,
        };
        status.current = status.applied().last().map(|e| e.revision.clone());
        status
    }

    /// Works out the steps from `status` to `target`.
    pub fn plan(&self, status: &Status, target: &Target) -> anyhow::Result<Plan> {
        let applied: Vec<&Migration> = status
            .applied()
            .filter_map(|e| self.set.get(&e.revision))
            .collect();
        let pending: Vec<&Migration> = self
            .set
            .migrations
            .iter()
            .filter(|m| !applied.iter().any(|a| a.revision == m.revision))
            .collect();
        let current = status.current.clone();
        match target {
            Target::Up(t) => {
                let steps: Vec<&Migration> = match t {
                    UpTarget::Head => pending.clone(),
                    UpTarget::Relative(n) => {
                        if *n > pending.len() {
                            return usage(format!(
                                "upgrade +{n} asks for {n} steps but only {} migration(s) are pending",
                                pending.len()
                            ));
                        }
                        pending[..*n].to_vec()
                    }
                    UpTarget::Revision(rev) => {
                        self.known(rev)?;
                        if applied.iter().any(|m| &m.revision == rev) {
                            if current.as_ref() == Some(rev) {
                                Vec::new()
                            } else {
                                return usage(format!(
                                    "revision {rev} is already applied and below the current {}; use `downgrade {rev}` to go back",
                                    current.as_deref().unwrap_or("(none)")
                                ));
                            }
                        } else {
                            let idx = pending.iter().position(|m| &m.revision == rev).unwrap_or(0);
                            pending[..=idx].to_vec()
                        }
                    }
                };
                let to = steps.last().map(|m| m.revision.clone()).or(current.clone());
                Ok(Plan::new(Direction::Up, current, to, &steps))
            }
            Target::Down(t) => {
                let keep = match t {
                    DownTarget::Base => 0,
                    DownTarget::Relative(n) => {
                        if *n > applied.len() {
                            return usage(format!(
                                "downgrade -{n} asks for {n} steps but only {} migration(s) are applied",
                                applied.len()
                            ));
                        }
                        applied.len() - n
                    }
                    DownTarget::Revision(rev) => {
                        self.known(rev)?;
                        match applied.iter().position(|m| &m.revision == rev) {
                            Some(i) => i + 1,
                            None => {
                                return usage(format!(
                                    "revision {rev} is not applied, so the database cannot be downgraded to it; `backstop history` shows what is applied"
                                ))
                            }
                        }
                    }
                };
                let steps: Vec<&Migration> = applied[keep..].iter().rev().copied().collect();
                let to = keep.checked_sub(1).map(|i| applied[i].revision.clone());
                Ok(Plan::new(Direction::Down, current, to, &steps))
            }
        }
    }

    fn known(&self, rev: &str) -> anyhow::Result<()> {
        if self.set.get(rev).is_none() {
            let known: Vec<_> = self
                .set
                .migrations
                .iter()
                .map(|m| m.revision.as_str())
                .collect();
            return usage(format!(
                "unknown revision {rev:?}; the migrations in {} are: {}",
                self.set.dir.display(),
                if known.is_empty() {
                    "(none)".to_string()
                } else {
                    known.join(", ")
                }
            ));
        }
        Ok(())
    }

    /// `upgrade` or `downgrade`: plan under the migration lock, then run each step in its
    /// own transaction with its bookkeeping. A dry run stops after planning.
    pub async fn migrate(&self, request: &MigrateRequest) -> anyhow::Result<MigrateReport> {
        let mut client = self.connect().await?;
        let lock = MigrationLock::acquire(&client, &self.db, self.schema(), &self.settings).await?;
        let result = self.migrate_locked(&mut client, request).await;
        lock.release(&client).await;
        result
    }

    async fn migrate_locked(
        &self,
        client: &mut Client,
        request: &MigrateRequest,
    ) -> anyhow::Result<MigrateReport> {
        let status = self.status_with(&*client).await?;
        status.check_consistent(request.allow_drift)?;
        let plan = self.plan(&status, &request.target)?;
        if plan.direction == Direction::Up && status.current.is_none() && !plan.steps.is_empty() {
            self.refuse_unrecorded_schema(client).await?;
        }
        let mut report = MigrateReport {
            database: self.db.describe(),
            dry_run: request.dry_run,
            current: status.current_label(),
            plan,
            applied: Vec::new(),
            protection: None,
            restored: Vec::new(),
        };
        let down = report.plan.direction == Direction::Down;
        if down && !request.allow_data_loss && !report.plan.steps.is_empty() {
            if report.plan.steps.iter().any(|s| s.no_transaction) {
                return self.downgrade_after_full_backup(client, report).await;
            }
            return self.protected_downgrade(client, report).await;
        }
        if request.dry_run || report.plan.steps.is_empty() {
            return Ok(report);
        }
        self.ensure_bookkeeping(client).await?;
        if !down && request.restore.is_some() {
            return self.upgrade_with_restore(client, report, request).await;
        }
        let mut previous = report.plan.from.clone();
        for step in &report.plan.steps {
            let outcome = self
                .run_step(client, report.plan.direction, step)
                .await
                .with_context(|| {
                    format!(
                        "the database stays at revision {}",
                        previous.as_deref().unwrap_or("(none)")
                    )
                });
            let done = outcome?;
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
        Ok(report)
    }

    fn store(&self) -> anyhow::Result<&Store> {
        match &self.store {
            Some(s) => Ok(s),
            None => refused("no backup store is configured, so the downgrade cannot back up the data it drops; nothing was changed"),
        }
    }

    /// Guarantee 1: plan, lock, export and write the manifest, then run the down SQL and
    /// the bookkeeping, all in one transaction; any failure rolls everything back.
    async fn protected_downgrade(
        &self,
        client: &mut Client,
        mut report: MigrateReport,
    ) -> anyhow::Result<MigrateReport> {
        let store = self.store()?;
        let schema = self.schema().to_string();
        if !report.dry_run {
            if let Err(e) = store.check().await {
                return refused(format!(
                    "the downgrade needs a usable backup store and {} is not ({e:#}); nothing was changed",
                    store.describe()
                ));
            }
            self.ensure_bookkeeping(client).await?;
        }
        let from = report.plan.from.clone();
        let stays_at = format!(
            "the downgrade was rolled back; the database stays at revision {}",
            from.as_deref().unwrap_or("(none)")
        );
        let tx = client.transaction().await.pg(|| "starting the downgrade")?;
        let mut losses = find_losses(&tx, &schema, &report.plan.steps)
            .await
            .context(stays_at.clone())?;
        lock_and_measure(&tx, &schema, &mut losses)
            .await
            .context(stays_at.clone())?;
        let mut protection = Protection {
            losses,
            backup_id: None,
            whole_schema: false,
        };
        if report.dry_run {
            report.protection = Some(protection);
            return Ok(report); // dropping the transaction rolls it back
        }
        let at_risk: Vec<&Loss> = protection
            .losses
            .iter()
            .filter(|l| l.rows.unwrap_or(0) > 0)
            .collect();
        if at_risk.is_empty() {
            tracing::info!("the downgrade destroys no rows, so it needs no backup");
        } else {
            let id = self
                .export_losses(&tx, store, &at_risk, from.clone(), report.plan.to.clone())
                .await
                .map_err(|e| {
                    anyhow::Error::new(crate::error::Error::Refused(format!(
                        "the downgrade was refused because its backup failed: {e:#}; nothing was changed"
                    )))
                })?;
            tracing::info!("backed up {} table(s) as {id}", at_risk.len());
            protection.backup_id = Some(id);
        }
        for step in &report.plan.steps {
            let started = Instant::now();
            tracing::info!("reverting {} (down.sql)", step.revision);
            tx.batch_execute(&step.sql)
                .await
                .map_err(|e| self.step_error(e, "down.sql", step))
                .context(stays_at.clone())?;
            self.record(&tx, Direction::Down, step, started.elapsed())
                .await?;
            report.applied.push(StepReport {
                revision: step.revision.clone(),
                direction: Direction::Down,
                duration_ms: started.elapsed().as_millis() as u64,
            });
        }
        if let Some(id) = &protection.backup_id {
            tx.execute(
                &format!(
                    "INSERT INTO {} (backup_id, from_revision, to_revision) VALUES ($1, $2, $3)",
                    qualified(&schema, DOWNGRADES_TABLE)
                ),
                &[id, &from, &report.plan.to],
            )
            .await
            .pg(|| "recording the downgrade's backup")?;
        }
        tx.commit()
            .await
            .pg(|| "committing the downgrade")
            .context(stays_at)?;
        report.protection = Some(protection);
        report.current = self.status_with(&*client).await?.current_label();
        Ok(report)
    }

    /// Exports what `losses` would destroy from `tx`'s view and writes the manifest.
    async fn export_losses(
        &self,
        tx: &Transaction<'_>,
        store: &Store,
        losses: &[&Loss],
        revision: Option<String>,
        target: Option<String>,
    ) -> anyhow::Result<String> {
        let schema = self.schema();
        tx.batch_execute(EXPORT_SETTINGS)
            .await
            .pg(|| "pinning the export settings")?;
        let mut specs = Vec::new();
        for loss in losses {
            let whole = describe_tables(tx, schema, std::slice::from_ref(&loss.table))
                .await?
                .pop()
                .context("the table vanished while planning")?;
            let spec = match loss.scope {
                Scope::Table => Some(whole),
                Scope::Columns => column_spec(loss, &whole),
            };
            specs.extend(spec);
        }
        let identity = crate::backup::identity(tx.client()).await?;
        let id = new_backup_id(Kind::PreDowngrade, time::OffsetDateTime::now_utc());
        let progress = Progress::hidden();
        let job = ExportJob {
            store,
            backup_id: &id,
            zstd_level: self.backup.zstd_level,
            progress: &progress,
        };
        let tables = match export_sequential(tx, job, &specs).await {
            Ok(t) => t,
            Err(e) => {
                discard(store, &id).await;
                return Err(e);
            }
        };
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            id: id.clone(),
            kind: Kind::PreDowngrade,
            label: None,
            created_at: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            database: identity,
            schema: schema.to_string(),
            revision,
            target_revision: target,
            zstd_level: self.backup.zstd_level,
            tables,
        };
        if let Err(e) = write_manifest(store, &manifest).await {
            discard(store, &id).await;
            return Err(e);
        }
        tx.batch_execute(RESET_EXPORT_SETTINGS)
            .await
            .pg(|| "restoring the session settings")?;
        Ok(id)
    }

    /// A step that cannot run in a transaction cannot be planned in a savepoint: back up
    /// every table of the schema first, then downgrade step by step.
    async fn downgrade_after_full_backup(
        &self,
        client: &mut Client,
        mut report: MigrateReport,
    ) -> anyhow::Result<MigrateReport> {
        let store = self.store()?;
        let names: Vec<&str> = report
            .plan
            .steps
            .iter()
            .filter(|s| s.no_transaction)
            .map(|s| s.revision.as_str())
            .collect();
        tracing::warn!(
            "{} cannot run in a transaction (backstop:no-transaction), so every table of schema {} is backed up first; writes committed between that backup and the downgrade are not in it",
            names.join(", "),
            self.schema()
        );
        if report.dry_run {
            report.protection = Some(Protection {
                losses: Vec::new(),
                backup_id: None,
                whole_schema: true,
            });
            return Ok(report);
        }
        let request = BackupRequest {
            kind: Kind::PreDowngrade,
            tables: Vec::new(),
            label: None,
            show_progress: false,
        };
        let mut all = BackupConfig {
            tables: Vec::new(),
            ..self.backup.clone()
        };
        all.parallelism = all.parallelism.max(1);
        let manifest = crate::backup::backup_with_target(
            &self.db,
            &self.settings,
            &all,
            store,
            &request,
            report.plan.to.clone(),
        )
        .await
        .map_err(|e| {
            anyhow::Error::new(crate::error::Error::Refused(format!(
                "the downgrade was refused because its backup failed: {e:#}; nothing was changed"
            )))
        })?;
        self.ensure_bookkeeping(client).await?;
        for step in &report.plan.steps {
            let done = self.run_step(client, Direction::Down, step).await?;
            report.applied.push(done);
        }
        client
            .execute(
                &format!(
                    "INSERT INTO {} (backup_id, from_revision, to_revision) VALUES ($1, $2, $3)",
                    qualified(self.schema(), DOWNGRADES_TABLE)
                ),
                &[&manifest.id, &report.plan.from, &report.plan.to],
            )
            .await
            .pg(|| "recording the downgrade's backup")?;
        report.protection = Some(Protection {
            losses: Vec::new(),
            backup_id: Some(manifest.id),
            whole_schema: true,
        });
        report.current = self.status_with(&*client).await?.current_label();
        Ok(report)
    }

    /// `upgrade --restore`: the up steps and the data of the pre-downgrade backups that
    /// cover them, in one transaction, so schema and data come back together or not at all.
    async fn upgrade_with_restore(
        &self,
        client: &mut Client,
        mut report: MigrateReport,
        request: &MigrateRequest,
    ) -> anyhow::Result<MigrateReport> {
        let store = self.store()?;
        let schema = self.schema().to_string();
        if let Some(s) = report.plan.steps.iter().find(|s| s.no_transaction) {
            return usage(format!(
                "{} cannot run in a transaction, so --restore cannot load the data in the same transaction; upgrade past it first",
                s.revision
            ));
        }
        let stays_at = format!(
            "the upgrade was rolled back; the database stays at revision {}",
            report.plan.from.as_deref().unwrap_or("(none)")
        );
        let downgrades = self.open_downgrades(client).await?;
        let tx = client.transaction().await.pg(|| "starting the upgrade")?;
        let mut current = report.plan.from.clone();
        let mut i = 0;
        let steps = report.plan.steps.clone();
        let mut used: Vec<String> = Vec::new();
        while i < steps.len() {
            let explicit = request
                .restore
                .as_deref()
                .filter(|r| *r != "latest" && i == 0);
            let chosen = match explicit {
                Some(id) => Some(id.to_string()),
                None => downgrades
                    .iter()
                    .find(|(id, to)| to == &current && !used.contains(id))
                    .map(|(id, _)| id.clone()),
            };
            if i == 0 && chosen.is_none() {
                return usage(format!(
                    "no pre-downgrade backup was taken when this database was downgraded to {}; `backstop backups list` shows the backups, or upgrade without --restore",
                    current.as_deref().unwrap_or("(none)")
                ));
            }
            let manifest = match &chosen {
                Some(id) => {
                    let m = load_manifest(store, id).await?;
                    if m.kind != Kind::PreDowngrade || m.target_revision != current {
                        return usage(format!(
                            "backup {id} was taken when downgrading to {}, but the database is at {}; pick the backup of that downgrade",
                            m.target_revision.as_deref().unwrap_or("(none)"),
                            current.as_deref().unwrap_or("(none)")
                        ));
                    }
                    Some(m)
                }
                None => None,
            };
            let end = match manifest.as_ref().and_then(|m| m.revision.as_ref()) {
                Some(rev) => steps
                    .iter()
                    .position(|s| &s.revision == rev)
                    .unwrap_or(steps.len() - 1)
                    .max(i),
                None => i,
            };
            for step in &steps[i..=end] {
                let started = Instant::now();
                tracing::info!("applying {} (up.sql)", step.revision);
                tx.batch_execute(&step.sql)
                    .await
                    .map_err(|e| self.step_error(e, "up.sql", step))
                    .context(stays_at.clone())?;
                self.record(&tx, Direction::Up, step, started.elapsed())
                    .await?;
                report.applied.push(StepReport {
                    revision: step.revision.clone(),
                    direction: Direction::Up,
                    duration_ms: started.elapsed().as_millis() as u64,
                });
            }
            if let Some(m) = manifest {
                tx.batch_execute(EXPORT_SETTINGS)
                    .await
                    .pg(|| "pinning the restore settings")?;
                let done = restore_into(&tx, store, &m, &request.restore_skip)
                    .await
                    .context(stays_at.clone())?;
                tx.batch_execute(RESET_EXPORT_SETTINGS)
                    .await
                    .pg(|| "restoring the session settings")?;
                tx.execute(
                    &format!(
                        "UPDATE {} SET restored_at = now() WHERE backup_id = $1",
                        qualified(&schema, DOWNGRADES_TABLE)
                    ),
                    &[&m.id],
                )
                .await
                .pg(|| "recording the restore")?;
                used.push(m.id.clone());
                report.restored.push(done);
            }
            current = Some(steps[end].revision.clone());
            i = end + 1;
        }
        tx.commit()
            .await
            .pg(|| "committing the upgrade")
            .context(stays_at)?;
        report.current = self.status_with(&*client).await?.current_label();
        Ok(report)
    }

    /// Backed-up downgrades not yet restored, newest first: (backup id, revision gone to).
    async fn open_downgrades(
        &self,
        client: &Client,
    ) -> anyhow::Result<Vec<(String, Option<String>)>> {
        Ok(client
            .query(
                &format!(
                    "SELECT backup_id, to_revision FROM {} WHERE restored_at IS NULL ORDER BY downgraded_at DESC, backup_id DESC",
                    qualified(self.schema(), DOWNGRADES_TABLE)
                ),
                &[],
            )
            .await
            .pg(|| "reading the recorded downgrades")?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    fn step_error(
        &self,
        e: tokio_postgres::Error,
        file: &str,
        step: &PlannedStep,
    ) -> anyhow::Error {
        let pg = PgError::from(e);
        let place = pg
            .line_in(&step.sql)
            .map(|l| format!(" at line {l}"))
            .unwrap_or_default();
        if pg.code.as_ref() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
            anyhow::anyhow!(
                "{file} of {} waited more than {}s for a lock held by another session ({}); retry when the table is idle or raise [database] lock_timeout_secs",
                step.revision,
                self.settings.lock_timeout_secs,
                pg.message
            )
        } else {
            anyhow::anyhow!("{file} of {} failed{place}: {}", step.revision, pg.message)
        }
    }

    async fn run_step(
        &self,
        client: &mut Client,
        direction: Direction,
        step: &PlannedStep,
    ) -> anyhow::Result<StepReport> {
        let file = match direction {
            Direction::Up => "up.sql",
            Direction::Down => "down.sql",
        };
        tracing::info!(
            "{} {} ({file})",
            match direction {
                Direction::Up => "applying",
                Direction::Down => "reverting",
            },
            step.revision
        );
        let started = Instant::now();
        let explain = |e: tokio_postgres::Error| -> anyhow::Error {
            let after = if step.no_transaction {
                "; it ran outside a transaction (backstop:no-transaction), so part of it may have been applied: check the schema by hand"
            } else {
                "; the step was rolled back"
            };
            anyhow::anyhow!("{:#}{after}", self.step_error(e, file, step))
        };
        if step.no_transaction {
            client.batch_execute(&step.sql).await.map_err(explain)?;
            let tx = client
                .transaction()
                .await
                .pg(|| "starting the bookkeeping")?;
            self.record(&tx, direction, step, started.elapsed()).await?;
            tx.commit()
                .await
                .pg(|| format!("recording {}", step.revision))?;
        } else {
            let tx = client
                .transaction()
                .await
                .pg(|| format!("starting {}", step.revision))?;
            tx.batch_execute(&step.sql).await.map_err(explain)?;
            self.record(&tx, direction, step, started.elapsed()).await?;
            tx.commit()
                .await
                .pg(|| format!("committing {} ({file})", step.revision))?;
        }
        Ok(StepReport {
            revision: step.revision.clone(),
            direction,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }

    async fn record(
        &self,
        tx: &impl GenericClient,
        direction: Direction,
        step: &PlannedStep,
        took: Duration,
    ) -> anyhow::Result<()> {
        let n = match direction {
            Direction::Up => tx
                .execute(
                    &format!(
                        "INSERT INTO {} (revision, checksum, applied_at, duration_ms) VALUES ($1, $2, now(), $3)",
                        self.table()
                    ),
                    &[&step.revision, &step.checksum, &(took.as_millis() as i64)],
                )
                .await,
            Direction::Down => tx
                .execute(
                    &format!("DELETE FROM {} WHERE revision = $1", self.table()),
                    &[&step.revision],
                )
                .await,
        }
        .pg(|| format!("recording {} in {}", step.revision, self.table()))?;
        if n != 1 {
            anyhow::bail!(
                "recording {} in {} touched {n} rows instead of 1; the step was rolled back",
                step.revision,
                self.table()
            );
        }
        Ok(())
    }

    async fn ensure_bookkeeping(&self, client: &Client) -> anyhow::Result<()> {
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema};
                 CREATE TABLE IF NOT EXISTS {table} (
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
                 )",
                schema = quote_ident(self.schema()),
                table = self.table(),
                downgrades = qualified(self.schema(), DOWNGRADES_TABLE)
            ))
            .await
            .pg(|| format!("creating {}", self.table()))
    }

    /// Refuses to run the first migration over tables that some other tool created.
    async fn refuse_unrecorded_schema(&self, client: &Client) -> anyhow::Result<()> {
        let tables: Vec<String> = client
            .query(
                "SELECT c.relname FROM pg_catalog.pg_class c
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm') AND c.relname <> ALL($2)
                 ORDER BY c.relname",
                &[&self.schema(), &OWN_TABLES],
            )
            .await
            .pg(|| "listing existing tables")?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let alembic: Option<String> = client
            .query_opt(
                "SELECT n.nspname FROM pg_catalog.pg_class c
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relname = 'alembic_version' AND c.relkind = 'r'
                 ORDER BY (n.nspname = $1) DESC LIMIT 1",
                &[&self.schema()],
            )
            .await
            .pg(|| "looking for alembic_version")?
            .map(|r| r.get(0));
        if tables.is_empty() && alembic.is_none() {
            return Ok(());
        }
        let mut msg = format!(
            "{} already has tables in schema {} ({}) but no backstop migration is recorded",
            self.db.describe(),
            self.schema(),
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
                "; it is managed by Alembic (alembic_version {})",
                version.as_deref().unwrap_or("empty")
            ));
        }
        msg.push_str(
            "; if it already holds the schema of a revision, record that with `backstop stamp REVISION` and upgrade from there; nothing was changed",
        );
        refused(msg)
    }

    /// Records `target` (a revision, `head` or `base`) as the current revision without
    /// running SQL, for adopting a database whose schema some other tool created.
    pub async fn stamp(&self, target: &str) -> anyhow::Result<StampReport> {
        let keep = match target {
            "base" => 0,
            "head" => self.set.migrations.len(),
            rev => {
                self.known(rev)?;
                self.set.position(rev).unwrap_or(0) + 1
            }
        };
        let mut client = self.connect().await?;
        let lock = MigrationLock::acquire(&client, &self.db, self.schema(), &self.settings).await?;
        let result = async {
            let previous = self.status_with(&client).await?.current;
            self.ensure_bookkeeping(&client).await?;
            let tx = client.transaction().await.pg(|| "starting stamp")?;
            let wanted: Vec<&str> = self.set.migrations[..keep].iter().map(|m| m.revision.as_str()).collect();
            tx.execute(
                &format!("DELETE FROM {} WHERE revision <> ALL($1)", self.table()),
                &[&wanted],
            )
            .await
            .pg(|| "removing revisions above the stamp")?;
            for m in &self.set.migrations[..keep] {
                tx.execute(
                    &format!(
                        "INSERT INTO {} (revision, checksum, duration_ms) VALUES ($1, $2, 0) ON CONFLICT (revision) DO NOTHING",
                        self.table()
                    ),
                    &[&m.revision, &m.checksum],
                )
                .await
                .pg(|| format!("recording {}", m.revision))?;
            }
            tx.commit().await.pg(|| "committing stamp")?;
            let current = self.status_with(&client).await?.current;
            Ok(StampReport {
                database: self.db.describe(),
                previous,
                current,
            })
        }
        .await;
        lock.release(&client).await;
        result
    }
}

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
            let waited = client.execute("SELECT pg_advisory_lock($1)", &[&key]).await;
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
                    return Err(anyhow::anyhow!(
                        "another backstop run ({holder}) held the migration lock on {} for more than {}s; nothing was changed; wait for it to finish and retry, or raise [database] migration_lock_timeout_secs",
                        db.describe(),
                        settings.migration_lock_timeout_secs
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!("head".parse::<UpTarget>().unwrap(), UpTarget::Head);
        assert_eq!("+2".parse::<UpTarget>().unwrap(), UpTarget::Relative(2));
        assert!("+0".parse::<UpTarget>().is_err());
        assert_eq!(
            "001_initial".parse::<UpTarget>().unwrap(),
            UpTarget::Revision("001_initial".into())
        );
        assert_eq!("-1".parse::<DownTarget>().unwrap(), DownTarget::Relative(1));
        assert_eq!("base".parse::<DownTarget>().unwrap(), DownTarget::Base);
        assert!("-x".parse::<DownTarget>().is_err());
    }
}
