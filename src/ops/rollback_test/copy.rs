//! `rollback-test --copy`: what "test on a Neon branch first" asks, on any PostgreSQL. The
//! scratch database is brought to the revision of a copy of the real data (a fresh
//! consistent backup, or one from the store), loaded with its rows, then upgraded to head
//! (the pending migrations on real data), checked, walked down step by step with backups
//! back to the copy's revision (at least one step, as the procedure's `downgrade -1`), and
//! re-upgraded with `--restore`: schema and every row must come back. The real database is
//! only read.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use super::{Checklist, Outcome, RollbackTestOptions, RollbackTestReport};
use crate::backup::catalog::load_manifest;
use crate::backup::manifest::{Kind, Manifest};
use crate::config::{BackupConfig, DatabaseConfig};
use crate::context::OpContext;
use crate::error::usage;
use crate::fixture::{fingerprint, Filled};
use crate::migrate::{DownTarget, MigrationSet, UpTarget};
use crate::ops::backup::{take, BackupOptions};
use crate::ops::downgrade::{downgrade, DowngradeOptions};
use crate::ops::migration::Migrator;
use crate::ops::upgrade::{upgrade, UpgradeOptions};
use crate::pg::session::pin_session;
use crate::pg::{qualified, Database, PgContext};
use crate::restore::plan::plan;
use crate::restore::{load, RestoreMode};
use crate::schema::{DiffOptions, Snapshot};
use crate::store::{DirStore, Store};

/// Where the copy comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopySource {
    /// A fresh consistent backup of the configured database, kept only for the test.
    Now,
    /// The newest manual or scheduled backup in the store.
    Latest,
    /// That backup.
    Backup(String),
}

impl std::str::FromStr for CopySource {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "" | "now" => CopySource::Now,
            "latest" => CopySource::Latest,
            id => CopySource::Backup(id.to_string()),
        })
    }
}

/// What the copy was, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct CopyReport {
    pub backup_id: String,
    /// `a fresh backup of DB`, or `backup ID from STORE`.
    pub source: String,
    /// The revision the copy was taken at.
    pub revision: Option<String>,
    pub tables: usize,
    pub rows: u64,
    /// Uncompressed CSV bytes.
    pub bytes: u64,
    /// Taking (or reading) the copy and loading it into the scratch database.
    pub load_seconds: f64,
    /// The whole procedure.
    pub total_seconds: f64,
}

/// The copy's manifest and the store its objects are in.
async fn obtain(
    real: &Database,
    settings: &DatabaseConfig,
    source: &CopySource,
    store: Option<&Arc<Store>>,
    scratch_store: &Arc<Store>,
    ctx: &OpContext,
) -> anyhow::Result<(Manifest, Arc<Store>, String)> {
    let need = || {
        store.cloned().ok_or_else(|| {
            anyhow::anyhow!(
                "rollback-test --copy latest|ID reads the configured [storage]; none is usable"
            )
        })
    };
    match source {
        CopySource::Now => {
            let options = BackupOptions {
                kind: Kind::Manual,
                tables: Vec::new(),
                label: Some("rollback-test --copy".into()),
                target_revision: None,
                every_schema: true,
            };
            let manifest = take(
                real,
                settings,
                &BackupConfig::default(),
                &**scratch_store,
                &options,
                None,
                ctx,
            )
            .await
            .context("taking the copy of the real data")?;
            Ok((
                manifest,
                scratch_store.clone(),
                format!("a fresh backup of {}", real.describe()),
            ))
        }
        CopySource::Latest => {
            let store = need()?;
            let catalog = crate::backup::catalog::scan(&*store).await?;
            let Some(newest) = catalog
                .backups
                .into_iter()
                .find(|m| m.kind != Kind::PreDowngrade)
            else {
                return usage(format!(
                    "rollback-test --copy latest: {} holds no manual or scheduled backup (pre-downgrade backups hold only what a downgrade dropped); take one with `backstop backup`, or use --copy now",
                    store.describe()
                ));
            };
            let from = format!("backup {} from {}", newest.id, store.describe());
            Ok((newest, store, from))
        }
        CopySource::Backup(id) => {
            let store = need()?;
            let manifest = load_manifest(&*store, id).await?;
            if manifest.kind == Kind::PreDowngrade {
                return usage(format!(
                    "backup {id} was taken before a downgrade and holds only what it dropped, not a copy of the database; name a manual or scheduled backup, or use --copy now"
                ));
            }
            let from = format!("backup {id} from {}", store.describe());
            Ok((manifest, store, from))
        }
    }
}

/// The procedure on a copy, in the scratch database `scratch`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn procedure(
    real: &Database,
    scratch: &Database,
    settings: &DatabaseConfig,
    set: &MigrationSet,
    expected: Option<Snapshot>,
    options: &RollbackTestOptions,
    source: &CopySource,
    store: Option<&Arc<Store>>,
    backups: &std::path::Path,
    ctx: &OpContext,
) -> anyhow::Result<RollbackTestReport> {
    let started = Instant::now();
    let scratch_store: Arc<Store> = Arc::new(DirStore::new(backups.to_path_buf()));
    let (manifest, copy_store, from) =
        obtain(real, settings, source, store, &scratch_store, ctx).await?;
    let revisions: Vec<String> = set.migrations.iter().map(|m| m.revision.clone()).collect();
    let at = match &manifest.revision {
        None => 0,
        Some(r) => match set.position(r) {
            Some(i) => i + 1,
            None => {
                return usage(format!(
                    "the copy ({from}) was taken at revision {r}, which {} does not hold; check [migrations] dir",
                    set.dir.display()
                ))
            }
        },
    };
    // Walk down to the copy's revision, and at least one step (the procedure's downgrade -1).
    let floor = at.min(revisions.len().saturating_sub(1));
    let engine = Migrator::new(scratch.clone(), settings.clone(), set.clone())
        .with_store(scratch_store.clone(), BackupConfig::default());
    let snap = || Snapshot::capture(scratch, settings);
    let mut list = Checklist::new(DiffOptions {
        allow_column_order: options.allow_column_order,
    });
    let mut copy = CopyReport {
        backup_id: manifest.id.clone(),
        source: from,
        revision: manifest.revision.clone(),
        tables: manifest.tables.len(),
        rows: manifest.tables.iter().map(|t| t.rows).sum(),
        bytes: manifest.tables.iter().map(|t| t.bytes).sum(),
        load_seconds: 0.0,
        total_seconds: 0.0,
    };
    let finish = |list: Checklist, mut copy: CopyReport| {
        copy.total_seconds = started.elapsed().as_secs_f64();
        RollbackTestReport {
            scratch_database: String::new(),
            kept: false,
            migrations: revisions.clone(),
            differences: list.differences(),
            data_checked: list.filled.filled,
            data_skipped: list.filled.skipped,
            criteria: list.criteria,
            copy: Some(copy),
        }
    };
    let up = |target: UpTarget, restore: bool| UpgradeOptions {
        target,
        dry_run: false,
        allow_drift: false,
        restore: restore.then(|| "latest".to_string()),
        restore_skip: Vec::new(),
    };

    // 1. The scratch database at the copy's revision, snapshots on the way, then its rows.
    let mut snapshots = vec![snap().await?];
    for rev in &revisions[..at] {
        upgrade(&engine, &up(UpTarget::Relative(1), false), ctx)
            .await
            .with_context(|| {
                format!("bringing the scratch database to the copy's revision ({rev})")
            })?;
        snapshots.push(snap().await?);
    }
    let chosen = plan(&manifest, &[], &[])?;
    {
        let mut client = scratch.connect().await?;
        pin_session(&client, settings).await?;
        let tx = client
            .transaction()
            .await
            .pg(|| "starting the copy's load")?;
        // Truncate: tables an up step seeded hold the copy's own rows afterwards.
        load(
            &tx,
            &*copy_store,
            &manifest,
            &chosen,
            RestoreMode::Truncate,
            &[],
            ctx,
        )
        .await
        .context("loading the copy into the scratch database")?;
        tx.commit().await.pg(|| "committing the copy's load")?;
    }
    copy.load_seconds = started.elapsed().as_secs_f64();
    let tables: Vec<Filled> = manifest
        .tables
        .iter()
        .map(|t| Filled {
            table: manifest.label(t),
            target: qualified(&t.schema, &t.name),
            rows: t.rows as i64,
            how: "copied".into(),
        })
        .collect();

    // 2. The pending migrations, on real data.
    for rev in &revisions[at..] {
        if let Err(e) = upgrade(&engine, &up(UpTarget::Relative(1), false), ctx).await {
            list.set("upgrade applies", Outcome::Fail, format!("{rev}: {e:#}"));
            return Ok(finish(list, copy));
        }
        snapshots.push(snap().await?);
    }
    list.set(
        "upgrade applies",
        Outcome::Pass,
        format!(
            "{} pending migration(s) applied on the copy ({} row(s)); current {}",
            revisions.len() - at,
            copy.rows,
            engine.status().await?.current_label()
        ),
    );
    let head = snapshots.last().cloned().unwrap_or_default();
    super::schema_matches(&mut list, set, expected.as_ref(), &head);
    // The data at head is what must come back (up steps may have changed it).
    let want = {
        let client = scratch.connect().await?;
        fingerprint(&client, &existing(&client, &tables).await?).await?
    };

    // 3. Down, step by step, with backups, to the copy's revision.
    let mut clean = true;
    for i in (floor..revisions.len()).rev() {
        let rev = &revisions[i];
        let options = DowngradeOptions {
            target: DownTarget::Relative(1),
            dry_run: false,
            allow_drift: false,
            allow_data_loss: false,
        };
        if let Err(e) = downgrade(&engine, &options, ctx).await {
            list.set("downgrade succeeds", Outcome::Fail, format!("{rev}: {e:#}"));
            return Ok(finish(list, copy));
        }
        let before = if i == 0 {
            "empty".to_string()
        } else {
            revisions[i - 1].clone()
        };
        clean &= list.compare_step(
            &format!("after reverting {rev} vs {before}"),
            &snapshots[i],
            &snap().await?,
        );
    }
    list.set(
        "downgrade succeeds",
        Outcome::Pass,
        format!(
            "{} step(s) reverted, each backed up first",
            revisions.len() - floor
        ),
    );
    if clean {
        list.set(
            "schema reverts completely",
            Outcome::Pass,
            "every step returned to the schema before it",
        );
    } else {
        list.set(
            "schema reverts completely",
            Outcome::Fail,
            "a down script left objects behind or removed too much (see differences)",
        );
    }

    // 4. Back to head with --restore: the same schema, every row.
    if let Err(e) = upgrade(&engine, &up(UpTarget::Head, true), ctx).await {
        list.set("re-apply succeeds", Outcome::Fail, format!("{e:#}"));
        return Ok(finish(list, copy));
    }
    list.set(
        "re-apply succeeds",
        Outcome::Pass,
        format!(
            "upgraded to {} with --restore",
            engine.status().await?.current_label()
        ),
    );
    super::schema_identical(&mut list, &head, &snap().await?);
    let client = scratch.connect().await?;
    let checked = existing(&client, &tables).await?;
    let got = fingerprint(&client, &checked).await?;
    let tables: Vec<String> = want.keys().cloned().collect();
    let pass = format!("{} table(s) of the copy checked, md5-identical", want.len());
    super::data_restored(&mut list, &tables, &want, &got, pass, "");
    list.filled.filled = checked;
    Ok(finish(list, copy))
}

/// The copy's tables that exist at head (a pending migration may have dropped one).
async fn existing(
    client: &tokio_postgres::Client,
    tables: &[Filled],
) -> anyhow::Result<Vec<Filled>> {
    let mut out = Vec::new();
    for t in tables {
        let there: bool = client
            .query_one(
                "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
                &[&t.target],
            )
            .await
            .pg(|| format!("looking for {}", t.table))?
            .get(0);
        if there {
            out.push(t.clone());
        }
    }
    Ok(out)
}
