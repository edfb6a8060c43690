//! Restores that leave a working database: every sequence a backed-up column takes its
//! values from (owned by it, or only called by its default, in another schema, shared by two
//! tables, behind a text default) is saved in every backup and moved on restore past its
//! saved state and the restored rows, so the next insert into a new database succeeds.

use std::sync::Arc;

use backstop::serve::ManualClock;
use chrono::{DateTime, Utc};

use crate::common::*;
use crate::serve::clock::{move_to, settled, start};
use crate::serve::slot_backup_ids;

const UP: &str = "CREATE SCHEMA billing;
CREATE SEQUENCE invoice_no START 1000;
CREATE SEQUENCE billing.receipt_no;
CREATE SEQUENCE doc_no;
CREATE TABLE invoices (no bigint PRIMARY KEY DEFAULT nextval('invoice_no'), total numeric);
CREATE TABLE receipts (id serial PRIMARY KEY, ref text UNIQUE DEFAULT 'R-' || nextval('billing.receipt_no'));
CREATE TABLE quotes (no int PRIMARY KEY DEFAULT nextval('doc_no'));
CREATE TABLE orders (no int PRIMARY KEY DEFAULT nextval('doc_no'));";
const DOWN: &str = "DROP TABLE orders, quotes, receipts, invoices;
DROP SEQUENCE doc_no, billing.receipt_no, invoice_no;
DROP SCHEMA billing;";

/// A project with the four tables and rows taken from each sequence.
async fn project(db: &TestDb, store: &TestStore) -> Project {
    let mut p = Project::empty(&db.url);
    p.use_store(store);
    p.add_migration("001_numbers", UP, DOWN);
    p.ok(&["upgrade"]);
    db.client()
        .await
        .batch_execute(
            "INSERT INTO invoices (total) SELECT g FROM generate_series(1, 5) g;
             INSERT INTO receipts DEFAULT VALUES; INSERT INTO receipts DEFAULT VALUES;
             INSERT INTO quotes DEFAULT VALUES; INSERT INTO orders DEFAULT VALUES;
             INSERT INTO quotes DEFAULT VALUES; INSERT INTO orders DEFAULT VALUES;",
        )
        .await
        .unwrap();
    p
}

/// Restores `id` into a new database migrated to the same revision, then inserts into every
/// table; returns the values the inserts were given.
async fn restore_and_insert(store: &TestStore, id: &str) -> (i64, String, i32, i32) {
    let target = TestDb::new().await;
    let mut q = Project::empty(&target.url);
    q.use_store(store);
    q.add_migration("001_numbers", UP, DOWN);
    q.ok(&["upgrade"]);
    let c = target.client().await;
    // The precondition: fresh sequences would hand out values the restored rows hold.
    let fresh: i64 = c
        .query_one("SELECT last_value FROM invoice_no", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(fresh, 1000);
    let r = q.ok(&["restore", id]);
    assert!(r.stdout.contains("public.invoice_no = 1004"), "{r}");
    let row = c
        .query_one(
            "WITH i AS (INSERT INTO invoices (total) VALUES (6) RETURNING no),
                  r AS (INSERT INTO receipts DEFAULT VALUES RETURNING ref),
                  q AS (INSERT INTO quotes DEFAULT VALUES RETURNING no),
                  o AS (INSERT INTO orders DEFAULT VALUES RETURNING no)
             SELECT i.no, r.ref, q.no, o.no FROM i, r, q, o",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("an insert after the restore failed: {e:?}"));
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

#[tokio::test]
async fn a_manual_backup_restored_into_a_new_database_takes_the_next_inserts() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let p = project(&db, &store).await;
    let id = p
        .ok(&["backup"])
        .stdout
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_string();
    let got = restore_and_insert(&store, &id).await;
    // doc_no handed out 1..4 to quotes and orders; receipt_no 1, 2 behind a text column.
    assert_eq!(got, (1005, "R-3".to_string(), 5, 6));
}

#[tokio::test]
async fn a_scheduled_backup_restored_into_a_new_database_takes_the_next_inserts() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = project(&db, &store).await;
    p.set_section("[schedule]", "name = \"fast\"\ncron = \"0 0 * * * *\"");
    let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
    let clock = Arc::new(ManualClock::new(at("2026-06-01T09:30:00Z")));
    let loops = start(&p, &clock, "a");
    settled(&clock, 1, 0).await;
    move_to(&clock, at("2026-06-01T10:00:00Z"), 1).await;
    loops.stop().await;
    let ids = slot_backup_ids(&db).await;
    assert_eq!(ids.len(), 1, "one scheduled backup");
    let got = restore_and_insert(&store, &ids[0]).await;
    assert_eq!(got, (1005, "R-3".to_string(), 5, 6));
}
