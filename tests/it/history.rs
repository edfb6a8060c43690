//! A history grown the way real projects grow: 64 diesel migrations over almost three years
//! (tests/fixtures/grown): renames, type changes, NOT NULL set over existing rows,
//! `CREATE INDEX CONCURRENTLY`, enum values added (and taken out again by rebuilding the
//! type), partitions attached, triggers, row-level security, domains and CHECKs with regular
//! expressions, seeded lookup tables, three schemas, a free sequence, columns and tables
//! dropped. One down script is genuinely broken, as one usually is.

use crate::common::*;
use crate::rollback_test::criterion;

const BROKEN: &str = "2026-04-19-162525-0000_create_project_labels";

fn project(db: &TestDb) -> Project {
    let p = Project::empty(&db.url);
    copy_dir(&repo_root().join("tests/fixtures/grown"), &p.migrations());
    p
}

#[tokio::test]
async fn sixty_four_migrations_apply_in_one_run_and_diesel_agrees() {
    let db = TestDb::new().await;
    let p = project(&db);
    assert_eq!(std::fs::read_dir(p.migrations()).unwrap().count(), 64);
    let r = p.ok(&["upgrade"]);
    assert_eq!(r.stdout.matches("applied ").count(), 64, "{r}");
    let c = db.client().await;
    let diesel: i64 = c
        .query_one("SELECT count(*) FROM __diesel_schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(diesel, 64);
    assert_eq!(recorded(&c).await.len(), 64);
    // The history's shapes are all there at head.
    let shapes: (i64, i64, i64, bool) = {
        let row = c
            .query_one(
                "SELECT (SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent
                          WHERE p.relname = 'events'),
                        (SELECT count(*) FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid
                          WHERE t.typname = 'task_status'),
                        (SELECT count(*) FROM roles),
                        (SELECT relrowsecurity FROM pg_class WHERE oid = 'projects'::regclass)",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2), row.get(3))
    };
    assert_eq!(shapes, (4, 5, 3, true));
}

#[tokio::test]
async fn rollback_test_names_the_broken_down_script_then_passes_with_every_table_checked() {
    let db = TestDb::new().await;
    let p = project(&db);
    let (code, v) = p.json(&["rollback-test", "--rows", "200", "--allow", "column-order"]);
    // A finding about the migrations (exit 3), not a failure of backstop's (exit 1).
    assert_eq!(code, 3, "{v}");
    let down = criterion(&v, "downgrade succeeds");
    assert_eq!(down["outcome"], "fail", "{v}");
    let detail = down["detail"].as_str().unwrap();
    assert!(detail.starts_with(BROKEN), "{detail}");
    assert!(
        detail.contains(r#"index "project_labels_label_idx" does not exist"#),
        "{detail}"
    );
    assert!(detail.contains("rolled back"), "{detail}");
    // Every later step went down cleanly first.
    assert_eq!(criterion(&v, "upgrade applies")["outcome"], "pass", "{v}");

    let down_sql = p.migrations().join(BROKEN).join("down.sql");
    let fixed = std::fs::read_to_string(&down_sql)
        .unwrap()
        .replace("project_labels_label_idx", "project_labels_name_idx");
    std::fs::write(&down_sql, fixed).unwrap();
    let (code, v) = p.json(&["rollback-test", "--rows", "200", "--allow", "column-order"]);
    assert_eq!(code, 0, "{v}");
    for name in [
        "downgrade succeeds",
        "schema reverts completely",
        "re-apply succeeds",
        "schema identical",
        "data restored",
    ] {
        assert_eq!(criterion(&v, name)["outcome"], "pass", "{name}: {v}");
    }
    assert_eq!(v["data_skipped"].as_array().unwrap().len(), 0, "{v}");
    let checked: Vec<(String, i64, String)> = v["data_checked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["table"].as_str().unwrap().to_string(),
                t["rows"].as_i64().unwrap(),
                t["how"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(checked.len(), 19, "{checked:?}");
    // The seeded lookup tables are checked as the migrations left them; the others are
    // filled, domains and regular-expression CHECKs included.
    for (table, rows, how) in &checked {
        match table.as_str() {
            "roles" | "billing.plans" => {
                assert_eq!(
                    (*rows, how.as_str()),
                    (3, "seeded by the migrations, checked as they left it")
                )
            }
            _ => assert_eq!(*rows, 200, "{table}: {how}"),
        }
    }
}

/// What the grown history found, each on its own: rows a down script changes come back as
/// they were; a backup taken below a step that must run outside a transaction loads at its
/// own revision, before a later step drops one of its columns; a step that adds an enum
/// value commits before rows that use the value load.
#[tokio::test]
async fn upgrade_restore_puts_changed_rows_back_at_their_own_revision() {
    let db = TestDb::new().await;
    let p = Project::empty(&db.url);
    p.add_migration(
        "001_tickets",
        "CREATE TYPE mood AS ENUM ('calm');
         CREATE TABLE tickets (id int PRIMARY KEY, state text NOT NULL, name text NOT NULL);",
        "DROP TABLE tickets; DROP TYPE mood;",
    );
    p.add_migration(
        "002_angry",
        "ALTER TYPE mood ADD VALUE 'angry';
         ALTER TABLE tickets ADD COLUMN mood mood NOT NULL DEFAULT 'calm';",
        // The down script rewrites rows before it can drop the value.
        "UPDATE tickets SET state = 'reset';
         ALTER TABLE tickets DROP COLUMN mood;
         ALTER TYPE mood RENAME TO mood_old; CREATE TYPE mood AS ENUM ('calm'); DROP TYPE mood_old;",
    );
    p.add_migration(
        "003_index",
        "-- backstop:no-transaction\nCREATE INDEX CONCURRENTLY tickets_state_idx ON tickets (state);",
        "-- backstop:no-transaction\nDROP INDEX CONCURRENTLY tickets_state_idx;",
    );
    p.add_migration(
        "004_drop_name",
        "ALTER TABLE tickets DROP COLUMN name;",
        "ALTER TABLE tickets ADD COLUMN name text NOT NULL DEFAULT '';",
    );
    p.ok(&["upgrade", "002_angry"]);
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO tickets SELECT g, 'open', 'n' || g, CASE WHEN g % 2 = 0 THEN 'angry' ELSE 'calm' END::mood
         FROM generate_series(1, 30) g",
    )
    .await
    .unwrap();
    let fingerprint =
        "SELECT md5(string_agg((id, state, mood)::text, ',' ORDER BY id)) FROM tickets";
    let before: String = c.query_one(fingerprint, &[]).await.unwrap().get(0);
    p.ok(&["downgrade", "001_tickets"]);
    let reset: i64 = c
        .query_one("SELECT count(*) FROM tickets WHERE state = 'reset'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(reset, 30, "the down script changed every row");
    // To head in one run: 002 (adds an enum value), its backup, 003 outside any
    // transaction, 004 dropping a column the backup has.
    let r = p.ok(&["upgrade", "--restore"]);
    assert!(r.stdout.contains("restored"), "{r}");
    let (state, angry): (i64, i64) = {
        let row = c
            .query_one(
                "SELECT count(*) FILTER (WHERE state = 'open'), count(*) FILTER (WHERE mood = 'angry') FROM tickets",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(
        (state, angry),
        (30, 15),
        "rows as they were before the downgrade"
    );
    let after: String = c.query_one(fingerprint, &[]).await.unwrap().get(0);
    assert_eq!(after, before);
}
