//! Operations called as a long-running process calls them: the library, not the binary,
//! with per-operation contexts and a fault-injecting store wrapped around a real one.

use std::sync::Arc;
use std::time::Duration;

use backstop::backup::manifest::Kind;
use backstop::config::{BackupConfig, DatabaseConfig};
use backstop::context::{Counting, OpContext};
use backstop::error::{kind_of, Kind as ErrorKind};
use backstop::migrate::{DownTarget, MigrationSet, UpTarget};
use backstop::ops::backup::{take, BackupOptions};
use backstop::ops::downgrade::{downgrade, DowngradeOptions};
use backstop::ops::migration::Migrator;
use backstop::ops::upgrade::{upgrade, UpgradeOptions};
use backstop::pg::Database;
use backstop::store::{FaultyStore, Store};

use crate::common::*;

const ROWS: i64 = 150_000;

/// A database with table `t` of `ROWS` rows that do not compress much (several MiB), so an
/// export writes many chunks.
async fn database_with_rows() -> (TestDb, Database) {
    let db = TestDb::new().await;
    db.client()
        .await
        .batch_execute(&format!(
            "CREATE TABLE t (id int PRIMARY KEY, a text, b text);
             INSERT INTO t SELECT g, md5(g::text), md5((g * 7)::text) FROM generate_series(1, {ROWS}) g"
        ))
        .await
        .unwrap();
    let parsed = Database::parse(&db.url, &DatabaseConfig::default()).unwrap();
    (db, parsed)
}

fn manual() -> BackupOptions {
    BackupOptions {
        kind: Kind::Manual,
        tables: Vec::new(),
        label: None,
        target_revision: None,
        every_schema: false,
    }
}

async fn backup_with(
    db: &Database,
    store: &Store,
    ctx: &OpContext,
) -> anyhow::Result<backstop::backup::manifest::Manifest> {
    let config = BackupConfig {
        parallelism: 1,
        ..BackupConfig::default()
    };
    take(
        db,
        &DatabaseConfig::default(),
        &config,
        store,
        &manual(),
        None,
        ctx,
    )
    .await
}

/// The repository's migrations applied to `db`, with downgrades backing up to `store`.
async fn upgraded(db: &TestDb, store: Arc<Store>) -> Migrator {
    let p = Project::new(db);
    let parsed = Database::parse(&db.url, &DatabaseConfig::default()).unwrap();
    let set = MigrationSet::load(&p.migrations()).unwrap();
    let m = Migrator::new(parsed, DatabaseConfig::default(), set)
        .with_store(store, BackupConfig::default());
    let up = UpgradeOptions {
        target: UpTarget::Head,
        dry_run: false,
        allow_drift: false,
        restore: None,
        restore_skip: Vec::new(),
    };
    upgrade(&m, &up, &OpContext::default()).await.unwrap();
    m
}

#[tokio::test]
async fn cancelling_one_backup_leaves_the_next_one_in_the_same_process_alone() {
    let (_db, parsed) = database_with_rows().await;
    let test_store = TestStore::dir();
    let real = test_store.open().await;
    // From its third write on, the store never answers: the backup hangs until cancelled.
    let stalled = Arc::new(FaultyStore::new(real.clone()).stall_write(3));
    let root = OpContext::default();

    let first = root.child();
    let running = tokio::spawn({
        let (parsed, stalled, first) = (parsed.clone(), stalled.clone(), first.clone());
        async move { backup_with(&parsed, &*stalled, &first).await }
    });
    // Precondition: the backup is really stuck in the store, not finished or failed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while stalled.writes() < 3 {
        assert!(!running.is_finished(), "the backup ended before it stalled");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backup never reached the store"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("a cancelled backup must stop within seconds")
        .unwrap();
    let err = outcome.expect_err("a cancelled backup must fail");
    assert_eq!(kind_of(&err), ErrorKind::Interrupted, "{err:#}");
    assert!(
        test_store.keys().await.is_empty(),
        "a cancelled backup left {:?}",
        test_store.keys().await
    );

    // The same process, a second operation: cancelling the first did not touch it.
    let counting = Arc::new(Counting::default());
    let second = root.child().with_observer(counting.clone());
    let manifest = backup_with(&parsed, &*real, &second).await.unwrap();
    assert_eq!(manifest.rows(), ROWS as u64);
    let (stages, bytes, rows) = counting.totals();
    assert_eq!((stages, rows), (1, ROWS as u64));
    assert_eq!(bytes, manifest.bytes());
    assert!(test_store
        .keys()
        .await
        .contains(&format!("{}/manifest.json", manifest.id)));
}

#[tokio::test]
async fn a_failing_part_fails_the_backup_and_leaves_nothing_in_either_store() {
    let (_db, parsed) = database_with_rows().await;
    for test_store in TestStore::both().await {
        let faulty = FaultyStore::new(test_store.open().await).fail_write(4);
        let err = backup_with(&parsed, &faulty, &OpContext::default())
            .await
            .expect_err("the fourth write fails");
        let what = test_store.name();
        assert!(
            faulty.writes() >= 4,
            "{what}: the failure was never reached"
        );
        assert_eq!(
            kind_of(&err),
            ErrorKind::StoreUnavailable,
            "{what}: {err:#}"
        );
        let msg = format!("{err:#}");
        assert!(
            msg.contains("the backup failed and was removed"),
            "{what}: {msg}"
        );
        assert!(
            test_store.keys().await.is_empty(),
            "{what}: {:?}",
            test_store.keys().await
        );
        assert_eq!(test_store.pending_uploads().await, 0, "{what}");
    }
}

#[tokio::test]
async fn a_lost_manifest_write_is_caught_by_reading_it_back() {
    let (_db, parsed) = database_with_rows().await;
    let test_store = TestStore::dir();
    let lossy = FaultyStore::new(test_store.open().await).lose_writes_to("manifest.json");
    let err = backup_with(&parsed, &lossy, &OpContext::default())
        .await
        .expect_err("a manifest that was never stored is no backup");
    let msg = format!("{err:#}");
    assert!(msg.contains("reading the manifest back"), "{msg}");
    assert!(msg.contains("the backup failed and was removed"), "{msg}");
    assert!(
        test_store.keys().await.is_empty(),
        "{:?}",
        test_store.keys().await
    );
}

#[tokio::test]
async fn a_downgrade_whose_store_fails_mid_export_is_refused_and_changes_nothing() {
    let db = TestDb::new().await;
    let test_store = TestStore::dir();
    // Write 1 is the backup's lease; write 2 its first table chunk.
    let faulty = Arc::new(FaultyStore::new(test_store.open().await).fail_write(2));
    let m = upgraded(&db, faulty.clone()).await;
    let ctx = OpContext::default();
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO tasks (title, user_id) SELECT 'task ' || g, g % 10 FROM generate_series(1, 500) g",
    )
    .await
    .unwrap();
    let before = table_md5(&c, "tasks", "id").await;

    let options = DowngradeOptions {
        target: DownTarget::Base,
        dry_run: false,
        allow_drift: false,
        allow_data_loss: false,
    };
    let err = downgrade(&m, &options, &ctx)
        .await
        .expect_err("the downgrade's backup cannot be written");
    assert_eq!(faulty.writes(), 2, "the export never reached the store");
    assert_eq!(kind_of(&err), ErrorKind::Refused, "{err:#}");
    assert!(
        format!("{err:#}").contains("nothing was changed"),
        "{err:#}"
    );
    assert_eq!(count(&c, "tasks").await, 500);
    assert_eq!(table_md5(&c, "tasks", "id").await, before);
    assert_eq!(recorded(&c).await, ["001_initial"]);
    assert!(
        test_store.keys().await.is_empty(),
        "{:?}",
        test_store.keys().await
    );
}

#[tokio::test]
async fn sql_that_ends_the_transaction_it_runs_in_is_caught() {
    let db = TestDb::new().await;
    let mut c = db.client().await;
    let tx = c.transaction().await.unwrap();
    let guard = backstop::pg::session::TransactionGuard::start(&tx)
        .await
        .unwrap();
    tx.batch_execute("CREATE TABLE kept (id int)")
        .await
        .unwrap();
    guard.check(&tx, "the script").await.unwrap();
    // What a COMMIT inside a step would do: the rest runs outside backstop's transaction.
    tx.batch_execute("COMMIT; CREATE TABLE stray (id int)")
        .await
        .unwrap();
    let err = guard.check(&tx, "down.sql of 002_x").await.unwrap_err();
    assert_eq!(kind_of(&err), ErrorKind::Refused);
    assert!(
        format!("{err}").contains("down.sql of 002_x ended backstop's transaction"),
        "{err}"
    );
}

#[tokio::test]
async fn prune_leaves_a_backup_in_progress_alone() {
    let (_db, parsed) = database_with_rows().await;
    let test_store = TestStore::dir();
    let real = test_store.open().await;
    let stalled = Arc::new(FaultyStore::new(real.clone()).stall_write(3));
    let ctx = OpContext::default();
    let running = tokio::spawn({
        let (parsed, stalled, ctx) = (parsed.clone(), stalled.clone(), ctx.clone());
        async move { backup_with(&parsed, &*stalled, &ctx).await }
    });
    while stalled.writes() < 3 {
        assert!(!running.is_finished(), "the backup ended before it stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Precondition: the folder is there, without a manifest, and older than the threshold.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = test_store.keys().await;
    assert!(
        before.iter().any(|k| k.ends_with("/lease.json")),
        "{before:?}"
    );
    let retention = backstop::config::RetentionConfig {
        incomplete_after_secs: 1,
        ..Default::default()
    };
    let now = time::OffsetDateTime::now_utc();
    let plan = backstop::ops::prune::prune(&*real, &retention, false, now)
        .await
        .unwrap();
    assert!(plan.incomplete.is_empty(), "{:?}", plan.incomplete);
    let folder = before[0].split('/').next().unwrap().to_string();
    let after = test_store.keys().await;
    assert!(
        after.iter().any(|k| k.starts_with(&folder)),
        "prune removed a live backup: {after:?}"
    );
    ctx.cancel();
    let err = running.await.unwrap().unwrap_err();
    assert_eq!(kind_of(&err), ErrorKind::Interrupted);
}

#[tokio::test]
async fn a_manifest_is_written_only_once_every_table_object_is_there() {
    let (_db, parsed) = database_with_rows().await;
    let test_store = TestStore::dir();
    let lossy = FaultyStore::new(test_store.open().await).lose_writes_to("public.t.csv.zst");
    let err = backup_with(&parsed, &lossy, &OpContext::default())
        .await
        .expect_err("a table object that never arrived");
    let msg = format!("{err:#}");
    assert!(msg.contains("public.t.csv.zst is not in"), "{msg}");
    assert!(
        test_store.keys().await.is_empty(),
        "{:?}",
        test_store.keys().await
    );
}

#[tokio::test]
async fn a_partial_upload_that_cannot_be_removed_says_prune_will() {
    let (_db, parsed) = database_with_rows().await;
    let test_store = TestStore::dir();
    let stuck = FaultyStore::new(test_store.open().await)
        .fail_write(3)
        .fail_deletes();
    let err = backup_with(&parsed, &stuck, &OpContext::default())
        .await
        .expect_err("the third write fails");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("could not be removed") && msg.contains("`backstop backups prune` removes it"),
        "{msg}"
    );
    assert!(!test_store.keys().await.is_empty());
}

#[tokio::test]
async fn a_failed_export_stops_the_server_reading_the_table() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let test_store = TestStore::dir();
    let faulty = Arc::new(FaultyStore::new(test_store.open().await).fail_write(2));
    let m = upgraded(&db, faulty).await;
    let ctx = OpContext::default();
    const ROWS: i64 = 1_000_000;
    c.batch_execute(&format!(
        "INSERT INTO tasks (title, description, user_id) SELECT 'task ' || g, md5(g::text), g % 10 FROM generate_series(1, {ROWS}) g;
         SELECT pg_stat_force_next_flush();"
    ))
    .await
    .unwrap();
    let read = || async {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        c.query_one("SELECT pg_stat_force_next_flush()", &[])
            .await
            .unwrap();
        let n: i64 = c
            .query_one(
                "SELECT coalesce(seq_tup_read, 0) FROM pg_stat_user_tables WHERE relname = 'tasks'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n
    };
    let before = read().await;
    let options = DowngradeOptions {
        target: DownTarget::Base,
        dry_run: false,
        allow_drift: false,
        allow_data_loss: false,
    };
    let err = downgrade(&m, &options, &ctx).await.unwrap_err();
    assert_eq!(kind_of(&err), ErrorKind::Refused, "{err:#}");
    let scanned = read().await - before;
    // The plan counts the rows once (a full scan); the export stops at its failure instead
    // of draining the rest of the table before the rollback.
    assert!(scanned >= ROWS, "the count did not run: {scanned}");
    assert!(
        scanned < ROWS + ROWS / 2,
        "the failed COPY read on: {scanned} rows scanned"
    );
    assert_eq!(count(&c, "tasks").await, ROWS);
}

#[tokio::test]
async fn an_export_or_restore_inside_a_transaction_puts_the_callers_settings_back() {
    let db = TestDb::new().await;
    let mut c = db.client().await;
    let tx = c.transaction().await.unwrap();
    tx.batch_execute(
        "SET LOCAL DateStyle = 'SQL, DMY'; SET LOCAL extra_float_digits = 1;
         SET LOCAL bytea_output = 'escape'; SET LOCAL IntervalStyle = 'iso_8601'",
    )
    .await
    .unwrap();
    let show = "SELECT current_setting('DateStyle') || ' ' || current_setting('extra_float_digits')
                || ' ' || current_setting('bytea_output') || ' ' || current_setting('IntervalStyle')
                || ' ' || current_setting('client_encoding') || ' ' || current_setting('row_security')";
    let before: String = tx.query_one(show, &[]).await.unwrap().get(0);
    let pinned = backstop::pg::session::PinnedValues::pin(&tx).await.unwrap();
    let during: String = tx.query_one(show, &[]).await.unwrap().get(0);
    assert_eq!(during, "ISO, DMY 3 hex postgres UTF8 off");
    pinned.restore(&tx).await.unwrap();
    let after: String = tx.query_one(show, &[]).await.unwrap().get(0);
    assert_eq!(after, before);
    assert_eq!(before, "SQL, DMY 1 escape iso_8601 UTF8 on");
}
