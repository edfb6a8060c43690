//! The tools' own bookkeeping tables kept in step: after each step backstop runs, diesel's
//! `__diesel_schema_migrations`, golang-migrate's `schema_migrations (version, dirty)`,
//! sqlx's `_sqlx_migrations` (with the checksum sqlx computes) and dbmate's
//! `schema_migrations` say what `backstop current` says; a database the tool migrated is
//! adopted from its table without `stamp`; a migration that refers to the tool's table
//! finds it. dbmate itself (the real binary) checks the agreement both ways.

use std::path::PathBuf;
use std::process::Command;

use crate::common::*;

fn write(p: &Project, rel: &str, text: &str) {
    let path = p.migrations().join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn current(p: &Project) -> String {
    p.ok(&["current"]).stdout.trim_end().to_string()
}

async fn strings(db: &TestDb, sql: &str) -> Vec<String> {
    db.client()
        .await
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn set_layout(p: &mut Project, layout: &str) {
    p.set_section(
        "migrations",
        &format!("dir = \"migrations\"\nlayout = \"{layout}\""),
    );
}

/// Three `.up.sql`/`.down.sql` migrations with data in the second.
fn pairs(p: &Project) {
    for (stem, up, down) in [
        ("20260101000000_create_users", "CREATE TABLE users (id bigserial PRIMARY KEY, name text NOT NULL);\n", "DROP TABLE users;\n"),
        ("20260102000000_add_email", "ALTER TABLE users ADD COLUMN email text;\r\nINSERT INTO users (name, email) SELECT 'u' || g, 'e' || g FROM generate_series(1, 25) g;\r\n", "ALTER TABLE users DROP COLUMN email;\n"),
        ("20260103000000_add_tags", "CREATE TABLE tags (id int PRIMARY KEY);\n", "DROP TABLE tags;\n"),
    ] {
        write(p, &format!("{stem}.up.sql"), up);
        write(p, &format!("{stem}.down.sql"), down);
    }
}

#[tokio::test]
async fn diesel_s_table_follows_every_step_and_a_trigger_on_it_works() {
    let db = TestDb::new().await;
    let p = Project::empty(&db.url);
    write(
        &p,
        "00000000000000_diesel_initial_setup/up.sql",
        "SELECT 1;\n",
    );
    write(
        &p,
        "00000000000000_diesel_initial_setup/down.sql",
        "SELECT 1;\n",
    );
    // As one large public project does: its first own migration puts a trigger on diesel's
    // table, which therefore exists before any migration runs.
    write(
        &p,
        "2026-06-26-100902-0000_watch_migrations/up.sql",
        "CREATE TABLE migration_log (version text, at timestamptz DEFAULT now());
         CREATE FUNCTION log_migration() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO migration_log (version) VALUES (NEW.version); RETURN NEW; END $$;
         CREATE TRIGGER log_migration AFTER INSERT ON __diesel_schema_migrations
           FOR EACH ROW EXECUTE FUNCTION log_migration();\n",
    );
    write(
        &p,
        "2026-06-26-100902-0000_watch_migrations/down.sql",
        "DROP TRIGGER log_migration ON __diesel_schema_migrations; DROP FUNCTION log_migration(); DROP TABLE migration_log;\n",
    );
    write(
        &p,
        "2026-06-27-080000-0000_create_posts/up.sql",
        "CREATE TABLE posts (id serial PRIMARY KEY, title text NOT NULL);\nINSERT INTO posts (title) VALUES ('a'), ('b');\n",
    );
    write(
        &p,
        "2026-06-27-080000-0000_create_posts/down.sql",
        "DROP TABLE posts;\n",
    );
    p.ok(&["upgrade"]);
    let versions = "SELECT version::text FROM __diesel_schema_migrations ORDER BY 1";
    assert_eq!(
        strings(&db, versions).await,
        ["00000000000000", "202606261009020000", "202606270800000000"]
    );
    // The trigger saw the later step recorded (and its own, in the same transaction).
    assert_eq!(
        strings(&db, "SELECT version FROM migration_log ORDER BY 1").await,
        ["202606261009020000", "202606270800000000"]
    );
    p.ok(&["downgrade", "-1"]);
    assert_eq!(
        strings(&db, versions).await,
        ["00000000000000", "202606261009020000"]
    );
    p.ok(&["upgrade", "--restore"]);
    assert_eq!(strings(&db, versions).await.len(), 3);
    assert_eq!(count(&db.client().await, "posts").await, 2);
    // The table is bookkeeping, not data: no snapshot or backup holds it.
    let r = p.ok(&["schema"]);
    assert!(!r.stdout.contains("__diesel_schema_migrations"), "{r}");
    p.ok(&["stamp", "base"]);
    assert!(strings(&db, versions).await.is_empty());
}

#[tokio::test]
async fn a_database_diesel_migrated_is_adopted_from_its_table() {
    let db = TestDb::new().await;
    let p = Project::empty(&db.url);
    write(
        &p,
        "2026-06-26-100902-0000_create_posts/up.sql",
        "CREATE TABLE posts (id serial PRIMARY KEY);\n",
    );
    write(
        &p,
        "2026-06-26-100902-0000_create_posts/down.sql",
        "DROP TABLE posts;\n",
    );
    write(
        &p,
        "2026-06-27-100902-0000_add_title/up.sql",
        "ALTER TABLE posts ADD COLUMN title text;\n",
    );
    write(
        &p,
        "2026-06-27-100902-0000_add_title/down.sql",
        "ALTER TABLE posts DROP COLUMN title;\n",
    );
    write(
        &p,
        "2026-06-28-100902-0000_add_body/up.sql",
        "ALTER TABLE posts ADD COLUMN body text;\n",
    );
    write(
        &p,
        "2026-06-28-100902-0000_add_body/down.sql",
        "ALTER TABLE posts DROP COLUMN body;\n",
    );
    // `diesel migration run` applied the first two, as diesel records them.
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE __diesel_schema_migrations (version VARCHAR(50) PRIMARY KEY NOT NULL, run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP);
             INSERT INTO __diesel_schema_migrations (version) VALUES ('202606261009020000'), ('202606271009020000');
             CREATE TABLE posts (id serial PRIMARY KEY, title text);
             INSERT INTO posts (title) SELECT 't' || g FROM generate_series(1, 12) g;",
        )
        .await
        .unwrap();
    assert_eq!(current(&p), "2026-06-27-100902-0000_add_title");
    let r = p.ok(&["upgrade"]);
    assert!(
        r.stdout
            .contains("recorded from diesel's __diesel_schema_migrations"),
        "{r}"
    );
    assert_eq!(current(&p), "2026-06-28-100902-0000_add_body (head)");
    // backstop's own ledger holds all three, as if it had run them.
    assert_eq!(recorded(&db.client().await).await.len(), 3);
    // Later, diesel reverts one on its own: backstop follows.
    db.client()
        .await
        .batch_execute(
            "ALTER TABLE posts DROP COLUMN body; DELETE FROM __diesel_schema_migrations WHERE version = '202606281009020000'",
        )
        .await
        .unwrap();
    assert_eq!(current(&p), "2026-06-27-100902-0000_add_title");
    p.ok(&["downgrade", "-1"]);
    assert_eq!(current(&p), "2026-06-26-100902-0000_create_posts");
    p.ok(&["upgrade", "--restore"]);
    let c = db.client().await;
    let titled: i64 = c
        .query_one("SELECT count(*) FROM posts WHERE title = 't' || id", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(titled, 12);
}

#[tokio::test]
async fn golang_migrate_s_single_row_moves_and_a_dirty_version_is_refused() {
    let db = TestDb::new().await;
    let mut p = Project::empty(&db.url);
    pairs(&p);
    set_layout(&mut p, "golang-migrate");
    p.ok(&["upgrade", "20260102000000_add_email"]);
    let state = "SELECT version || ' ' || dirty FROM schema_migrations";
    assert_eq!(strings(&db, state).await, ["20260102000000 false"]);
    p.ok(&["upgrade"]);
    assert_eq!(strings(&db, state).await, ["20260103000000 false"]);
    p.ok(&["downgrade", "-2"]);
    assert_eq!(strings(&db, state).await, ["20260101000000 false"]);
    p.ok(&["downgrade", "base"]);
    assert!(
        strings(&db, state).await.is_empty(),
        "golang-migrate keeps no row at nil"
    );
    p.ok(&["upgrade"]);
    // golang-migrate stopped half-way through a migration of its own.
    db.client()
        .await
        .batch_execute("UPDATE schema_migrations SET dirty = true")
        .await
        .unwrap();
    let r = p.run(&["downgrade", "-1"]);
    assert_eq!(r.code, 4, "{r}");
    assert!(
        r.stderr.contains("dirty") && r.stderr.contains("migrate force"),
        "{r}"
    );
    assert_eq!(
        count(&db.client().await, "tags").await,
        0,
        "nothing was changed"
    );
}

#[tokio::test]
async fn sqlx_s_rows_carry_the_checksum_sqlx_computes_and_a_changed_file_is_drift() {
    let db = TestDb::new().await;
    let mut p = Project::empty(&db.url);
    pairs(&p);
    set_layout(&mut p, "sqlx");
    p.ok(&["upgrade"]);
    let c = db.client().await;
    let rows = c
        .query(
            "SELECT version, description, success, checksum, execution_time FROM _sqlx_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    let second: (i64, String, bool, Vec<u8>, i64) = (
        rows[1].get(0),
        rows[1].get(1),
        rows[1].get(2),
        rows[1].get(3),
        rows[1].get(4),
    );
    assert_eq!(
        (second.0, second.1.as_str(), second.2),
        (20260102000000, "add email", true)
    );
    // SHA-384 of the file's bytes, CRLF and all, computed by the server.
    let file = std::fs::read(p.migrations().join("20260102000000_add_email.up.sql")).unwrap();
    let expected: Vec<u8> = c
        .query_one("SELECT sha384($1::bytea)", &[&file])
        .await
        .unwrap()
        .get(0);
    assert_eq!(second.3, expected);
    assert!(second.4 > 0, "execution_time is the step's, in nanoseconds");
    p.ok(&["downgrade", "-1"]);
    assert_eq!(
        c.query_one("SELECT max(version) FROM _sqlx_migrations", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        20260102000000
    );
    // Adopted by sqlx alone: the ledger knows nothing, and a file sqlx applied was edited
    // since. sqlx would refuse it; so does backstop.
    c.batch_execute("DROP TABLE backstop_migrations")
        .await
        .unwrap();
    write(
        &p,
        "20260101000000_create_users.up.sql",
        "CREATE TABLE users (id bigserial PRIMARY KEY, name text NOT NULL, age int);\n",
    );
    let r = p.run(&["upgrade"]);
    assert_eq!(r.code, 3, "{r}");
    assert!(r.stderr.contains("20260101000000_create_users"), "{r}");
}

#[tokio::test]
async fn pairs_are_read_as_the_tool_whose_table_the_database_has() {
    let db = TestDb::new().await;
    let p = Project::empty(&db.url);
    pairs(&p);
    // Neither table: only the ledger records, and the output says how to name the tool.
    let r = p.ok(&["upgrade", "20260101000000_create_users"]);
    assert!(r.stdout.contains("layout = \"sqlx\""), "{r}");
    // sqlx's table appears (the application's embedded migrator created it): kept from now on.
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT NULL, checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL);",
        )
        .await
        .unwrap();
    // An empty table while the ledger records a step: ambiguous, so refused with the way out.
    let r = p.run(&["upgrade"]);
    assert_eq!(r.code, 4, "{r}");
    assert!(
        r.stderr
            .contains("backstop stamp 20260101000000_create_users"),
        "{r}"
    );
    p.ok(&["stamp", "20260101000000_create_users"]);
    p.ok(&["upgrade"]);
    assert_eq!(
        strings(&db, "SELECT version::text FROM _sqlx_migrations ORDER BY 1").await,
        ["20260101000000", "20260102000000", "20260103000000"]
    );
}

/// The dbmate binary scripts/test installs (npm's dbmate).
fn dbmate() -> PathBuf {
    let p = std::env::var("BACKSTOP_TEST_DBMATE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".tmp/dbmate/node_modules/.bin/dbmate"));
    assert!(
        p.exists(),
        "{} is missing; scripts/test installs dbmate from npm",
        p.display()
    );
    p
}

fn run_dbmate(p: &Project, db: &TestDb, args: &[&str]) -> String {
    let url = format!("{}?sslmode=disable", db.url);
    let out = Command::new(dbmate())
        .args(["--no-dump-schema", "--migrations-dir"])
        .arg(p.migrations())
        .args(["--url", &url])
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dbmate {args:?}: {text}");
    text
}

#[tokio::test]
async fn dbmate_and_backstop_agree_on_the_same_database() {
    let db = TestDb::new().await;
    let p = Project::empty(&db.url);
    for (name, up, down) in [
        ("20260101000000_create_users", "CREATE TABLE users (id serial PRIMARY KEY, email text);\nINSERT INTO users (email) SELECT 'e' || g FROM generate_series(1, 40) g;", "DROP TABLE users;"),
        ("20260102000000_add_name", "ALTER TABLE users ADD COLUMN name text;\nUPDATE users SET name = 'n' || id;", "ALTER TABLE users DROP COLUMN name;"),
        ("20260103000000_create_tags", "CREATE TABLE tags (id int PRIMARY KEY);", "DROP TABLE tags;"),
    ] {
        write(
            &p,
            &format!("{name}.sql"),
            &format!("-- migrate:up\n{up}\n\n-- migrate:down\n{down}\n"),
        );
    }
    // dbmate applies the first two; backstop reads that without a stamp.
    run_dbmate(&p, &db, &["migrate"]);
    run_dbmate(&p, &db, &["rollback"]);
    assert_eq!(current(&p), "20260102000000_add_name");
    p.ok(&["upgrade"]);
    assert_eq!(current(&p), "20260103000000_create_tags (head)");
    // backstop's steps are dbmate's too: dbmate sees nothing pending, and rolls back what
    // backstop applied.
    let status = run_dbmate(&p, &db, &["status"]);
    assert!(status.contains("Pending: 0"), "{status}");
    // backstop's protected downgrade, then dbmate re-applies; the data comes back only
    // through backstop, but the record is the same either way.
    p.ok(&["downgrade", "-2"]);
    let status = run_dbmate(&p, &db, &["status"]);
    assert!(
        status.contains("Applied: 1") && status.contains("Pending: 2"),
        "{status}"
    );
    p.ok(&["upgrade", "--restore"]);
    let c = db.client().await;
    let named: i64 = c
        .query_one("SELECT count(*) FROM users WHERE name = 'n' || id", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(named, 40);
    run_dbmate(&p, &db, &["rollback"]);
    assert_eq!(current(&p), "20260102000000_add_name");
}
