//! Projects adopted as they are: diesel, golang-migrate (and sqlx) and dbmate folders run,
//! downgrade and come back with their data; a Flyway folder, a mixed folder and an empty
//! one are errors rather than a green run of nothing; a script that needs to run outside a
//! transaction says how its own layout marks that.

use crate::common::*;

fn write(p: &Project, rel: &str, text: &str) {
    let path = p.migrations().join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A golang-migrate (or sqlx) migration: `<stem>.up.sql` and `<stem>.down.sql`.
fn pair(p: &Project, stem: &str, up: &str, down: &str) {
    write(p, &format!("{stem}.up.sql"), up);
    write(p, &format!("{stem}.down.sql"), down);
}

/// What `current` says, without the trailing newline.
fn current(p: &Project) -> String {
    p.ok(&["current"]).stdout.trim_end().to_string()
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    db.client().await.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn a_diesel_folder_with_dashed_versions_spaces_and_metadata_toml() {
    let db = TestDb::new().await;
    let p = Project::empty(&db.url);
    // diesel's own first migration, as `diesel setup` writes it.
    write(
        &p,
        "00000000000000_diesel_initial_setup/up.sql",
        "CREATE OR REPLACE FUNCTION diesel_manage_updated_at(_tbl regclass) RETURNS VOID AS $$\nBEGIN\n    EXECUTE format('CREATE TRIGGER set_updated_at BEFORE UPDATE ON %s\n                    FOR EACH ROW EXECUTE PROCEDURE diesel_set_updated_at()', _tbl);\nEND;\n$$ LANGUAGE plpgsql;\n\nCREATE OR REPLACE FUNCTION diesel_set_updated_at() RETURNS trigger AS $$\nBEGIN\n    IF (\n        NEW IS DISTINCT FROM OLD AND\n        NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at\n    ) THEN\n        NEW.updated_at := current_timestamp;\n    END IF;\n    RETURN NEW;\nEND;\n$$ LANGUAGE plpgsql;\n",
    );
    write(
        &p,
        "00000000000000_diesel_initial_setup/down.sql",
        "DROP FUNCTION IF EXISTS diesel_manage_updated_at(_tbl regclass);\nDROP FUNCTION IF EXISTS diesel_set_updated_at();\n",
    );
    write(
        &p,
        "2019-02-26-002946_create_users/up.sql",
        "CREATE TABLE users (id SERIAL PRIMARY KEY, name TEXT NOT NULL, updated_at TIMESTAMP NOT NULL DEFAULT now());\nSELECT diesel_manage_updated_at('users');\n",
    );
    write(
        &p,
        "2019-02-26-002946_create_users/down.sql",
        "DROP TABLE users;\n",
    );
    write(
        &p,
        "2019-03-01-101010_add user email/up.sql",
        "ALTER TABLE users ADD COLUMN email TEXT;\n",
    );
    write(
        &p,
        "2019-03-01-101010_add user email/down.sql",
        "ALTER TABLE users DROP COLUMN email;\n",
    );
    write(
        &p,
        "2019-03-02-000000_index_email/up.sql",
        "CREATE INDEX CONCURRENTLY users_email ON users (email);\n",
    );
    write(
        &p,
        "2019-03-02-000000_index_email/down.sql",
        "DROP INDEX CONCURRENTLY users_email;\n",
    );
    write(
        &p,
        "2019-03-02-000000_index_email/metadata.toml",
        "run_in_transaction = false\n",
    );
    write(&p, ".keep", "");
    let r = p.ok(&["upgrade"]);
    assert!(!r.stderr.contains("ignoring"), "{r}");
    assert_eq!(current(&p), "2019-03-02-000000_index_email (head)");
    db.client()
        .await
        .batch_execute("INSERT INTO users (name, email) SELECT 'u' || g, 'u' || g || '@x' FROM generate_series(1, 50) g")
        .await
        .unwrap();
    // Down over the index (outside a transaction), then past the email column: its values
    // are saved, then come back.
    let r = p.ok(&["downgrade", "-1"]);
    assert!(
        r.stdout.contains("reverted 2019-03-02-000000_index_email"),
        "{r}"
    );
    p.ok(&["downgrade", "-1"]);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM information_schema.columns WHERE column_name = 'email'"
        )
        .await,
        0
    );
    p.ok(&["upgrade", "--restore"]);
    assert_eq!(
        count(&db, "SELECT count(*) FROM users WHERE email = name || '@x'").await,
        50
    );
    let r = p.ok(&["rollback-test", "--rows", "20"]);
    assert!(r.stdout.contains("result: PASS"), "{r}");

    // diesel 2.x names folders with a `-0000` after the time; they follow the older ones.
    write(
        &p,
        "2026-06-26-100902-0000_add_tags/up.sql",
        "CREATE TABLE tags (id SERIAL PRIMARY KEY, user_id INT NOT NULL REFERENCES users, tag TEXT NOT NULL);\n",
    );
    write(
        &p,
        "2026-06-26-100902-0000_add_tags/down.sql",
        "DROP TABLE tags;\n",
    );
    write(
        &p,
        "2026-07-01-080000-0000_tag_color/up.sql",
        "ALTER TABLE tags ADD COLUMN color TEXT NOT NULL DEFAULT 'blue';\n",
    );
    write(
        &p,
        "2026-07-01-080000-0000_tag_color/down.sql",
        "ALTER TABLE tags DROP COLUMN color;\n",
    );
    let history = p.ok(&["history"]).stdout;
    let order: Vec<&str> = history
        .lines()
        .map(|l| l.split("  ").next().unwrap())
        .collect();
    assert_eq!(
        order[order.len() - 3..],
        [
            "2019-03-02-000000_index_email",
            "2026-06-26-100902-0000_add_tags",
            "2026-07-01-080000-0000_tag_color"
        ],
        "{history}"
    );
    p.ok(&["upgrade"]);
    assert_eq!(current(&p), "2026-07-01-080000-0000_tag_color (head)");
    db.client()
        .await
        .batch_execute(
            "INSERT INTO tags (user_id, tag, color) SELECT id, 't' || id, 'red' FROM users",
        )
        .await
        .unwrap();
    p.ok(&["downgrade", "2019-03-02-000000_index_email"]);
    p.ok(&["upgrade", "--restore"]);
    assert_eq!(
        count(&db, "SELECT count(*) FROM tags WHERE color = 'red'").await,
        50
    );
}

#[tokio::test]
async fn golang_migrate_and_sqlx_files_run_in_version_order() {
    let db = TestDb::new().await;
    let p = Project::empty(&db.url);
    // golang-migrate runs files as they are, so projects wrap them in BEGIN … COMMIT.
    pair(
        &p,
        "000001_create_users",
        "BEGIN;\nCREATE TABLE users (id bigserial PRIMARY KEY, name text NOT NULL);\nCOMMIT;\n",
        "DROP TABLE users;\n",
    );
    pair(
        &p,
        "000002_add_email",
        "ALTER TABLE users ADD COLUMN email text;\n",
        "ALTER TABLE users DROP COLUMN email;\n",
    );
    pair(
        &p,
        "000010_add_age",
        "ALTER TABLE users ADD COLUMN age int;\n",
        "ALTER TABLE users DROP COLUMN age;\n",
    );
    write(&p, "README.md", "how to write migrations\n");
    let r = p.ok(&["upgrade"]);
    assert!(r.stderr.contains("README.md"), "strays are named: {r}");
    assert_eq!(current(&p), "000010_add_age (head)");
    let (_, history) = p.json(&["history"]);
    let order: Vec<&str> = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["revision"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        ["000001_create_users", "000002_add_email", "000010_add_age"]
    );
    let r = p.ok(&["rollback-test", "--rows", "20"]);
    assert!(r.stdout.contains("result: PASS"), "{r}");

    // A pair without its down file is named, with every other problem, in one run.
    write(&p, "000011_a.up.sql", "SELECT 1;\n");
    write(&p, "000012_b.down.sql", "SELECT 1;\n");
    let r = p.run(&["upgrade"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("2 problems"), "{r}");
    assert!(r.stderr.contains("000011_a.down.sql is missing"), "{r}");
    assert!(r.stderr.contains("000012_b.up.sql is missing"), "{r}");
}

#[tokio::test]
async fn dbmate_files_with_sections_and_transaction_false() {
    let db = TestDb::new().await;
    let p = Project::empty(&db.url);
    write(
        &p,
        "20151129054053_create_users.sql",
        "-- migrate:up\nCREATE TABLE users (id serial PRIMARY KEY, name text);\n\n-- migrate:down\nDROP TABLE users;\n",
    );
    write(
        &p,
        "20151129060000_index_users.sql",
        "-- migrate:up transaction:false\nCREATE INDEX CONCURRENTLY users_name ON users (name);\n\n-- migrate:down transaction:false\nDROP INDEX CONCURRENTLY users_name;\n",
    );
    p.ok(&["upgrade"]);
    assert_eq!(current(&p), "20151129060000_index_users (head)");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'users_name'"
        )
        .await,
        1
    );
    let r = p.ok(&["rollback-test", "--rows", "20"]);
    assert!(r.stdout.contains("result: PASS"), "{r}");
    // A server error in the down section points at the file's own line.
    write(
        &p,
        "20151129070000_broken.sql",
        "-- migrate:up\nSELECT 1;\n-- migrate:down\nSELECT 1;\nSELEC 2;\n",
    );
    p.ok(&["upgrade"]);
    let r = p.run(&["downgrade", "-1"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stderr
            .contains("20151129070000_broken.sql (migrate:down)")
            && r.stderr.contains("line 5"),
        "{r}"
    );
}

#[tokio::test]
async fn folders_backstop_cannot_read_are_errors_not_a_green_run_of_nothing() {
    let db = TestDb::new().await;
    // Flyway: versioned files with no way down.
    let p = Project::empty(&db.url);
    write(&p, "V1__init.sql", "CREATE TABLE a (id int);\n");
    write(&p, "V2__more.sql", "CREATE TABLE b (id int);\n");
    for args in [&["upgrade"][..], &["rollback-test"][..], &["current"][..]] {
        let r = p.run(args);
        assert_eq!(r.code, 2, "{args:?}: {r}");
        assert!(
            r.stderr.contains("holds no migrations backstop can read"),
            "{r}"
        );
        assert!(r.stderr.contains("V1__init.sql, V2__more.sql"), "{r}");
        assert!(r.stderr.contains("golang-migrate or sqlx"), "{r}");
        assert!(r.stderr.contains("Flyway"), "{r}");
    }
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pg_tables WHERE tablename IN ('a', 'b')"
        )
        .await,
        0
    );

    // Two layouts in one folder.
    let p = Project::empty(&db.url);
    write(&p, "001_a/up.sql", "SELECT 1;\n");
    write(&p, "001_a/down.sql", "SELECT 1;\n");
    pair(&p, "000002_b", "SELECT 1;\n", "SELECT 1;\n");
    let r = p.run(&["upgrade"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("mixes layouts"), "{r}");
    assert!(r.stderr.contains("[migrations] layout"), "{r}");
    // Told which one to read, the other is left aside with a warning.
    p_with_layout(&p, "golang-migrate");
    let r = p.ok(&["upgrade"]);
    assert!(r.stderr.contains("001_a/"), "{r}");
    assert_eq!(current(&p), "000002_b (head)");

    // Nothing at all: upgrade and rollback-test refuse rather than pass.
    let p = Project::empty(&db.url);
    for (args, says) in [
        (&["upgrade"][..], "nothing to upgrade"),
        (&["rollback-test"][..], "rollback-test has nothing to test"),
    ] {
        let r = p.run(args);
        assert_eq!(r.code, 2, "{args:?}: {r}");
        assert!(r.stderr.contains(says), "{r}");
    }
}

fn p_with_layout(p: &Project, layout: &str) {
    let path = p.path().join("backstop.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "[migrations]\ndir = \"migrations\"\n",
        &format!("[migrations]\ndir = \"migrations\"\nlayout = \"{layout}\"\n"),
    );
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn a_script_that_cannot_run_in_a_transaction_names_its_layouts_marker() {
    for (layout, files, says) in [
        (
            "backstop",
            vec![
                ("001_t/up.sql", "CREATE TABLE t (id int);"),
                ("001_t/down.sql", "DROP TABLE t;"),
                ("002_i/up.sql", "CREATE INDEX CONCURRENTLY t_id ON t (id);"),
                ("002_i/down.sql", "DROP INDEX t_id;"),
            ],
            "-- backstop:no-transaction",
        ),
        (
            "diesel",
            vec![
                ("2020-01-01-000000_t/up.sql", "CREATE TABLE t (id int);"),
                ("2020-01-01-000000_t/down.sql", "DROP TABLE t;"),
                (
                    "2020-01-02-000000_i/up.sql",
                    "CREATE INDEX CONCURRENTLY t_id ON t (id);",
                ),
                ("2020-01-02-000000_i/down.sql", "DROP INDEX t_id;"),
            ],
            "run_in_transaction = false",
        ),
        (
            "dbmate",
            vec![
                (
                    "20200101000000_t.sql",
                    "-- migrate:up\nCREATE TABLE t (id int);\n-- migrate:down\nDROP TABLE t;",
                ),
                (
                    "20200102000000_i.sql",
                    "-- migrate:up\nVACUUM t;\n-- migrate:down\nSELECT 1;",
                ),
            ],
            "transaction:false",
        ),
    ] {
        let db = TestDb::new().await;
        let p = Project::empty(&db.url);
        for (rel, text) in files {
            write(&p, rel, text);
        }
        let r = p.run(&["upgrade"]);
        assert_eq!(r.code, 1, "{layout}: {r}");
        assert!(
            r.stderr.contains("must run outside a transaction"),
            "{layout}: {r}"
        );
        assert!(r.stderr.contains(says), "{layout}: {r}");
        // Nothing of the failed step stays.
        assert_eq!(
            count(
                &db,
                "SELECT count(*) FROM pg_indexes WHERE indexname = 't_id'"
            )
            .await,
            0,
            "{layout}"
        );
    }
}

#[tokio::test]
async fn a_database_golang_migrate_migrated_is_adopted_from_its_table() {
    let db = TestDb::new().await;
    let p = Project::empty(&db.url);
    pair(
        &p,
        "000001_create_users",
        "CREATE TABLE users (id bigserial PRIMARY KEY, name text NOT NULL);\n",
        "DROP TABLE users;\n",
    );
    pair(
        &p,
        "000002_add_email",
        "ALTER TABLE users ADD COLUMN email text;\n",
        "ALTER TABLE users DROP COLUMN email;\n",
    );
    // golang-migrate ran both, and keeps its own table.
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE users (id bigserial PRIMARY KEY, name text NOT NULL, email text);
             CREATE TABLE schema_migrations (version bigint PRIMARY KEY, dirty boolean NOT NULL);
             INSERT INTO schema_migrations VALUES (2, false);
             INSERT INTO users (name, email) SELECT 'u' || g, 'e' || g FROM generate_series(1, 30) g;",
        )
        .await
        .unwrap();
    // Its table says where the database is: no stamp needed, nothing to apply.
    assert_eq!(current(&p), "000002_add_email (head)");
    let r = p.ok(&["upgrade"]);
    assert!(
        r.stdout
            .contains("recorded from golang-migrate's schema_migrations"),
        "{r}"
    );
    // From here on, a downgrade is protected like any other.
    p.ok(&["downgrade", "-1"]);
    assert_eq!(
        count(&db, "SELECT version FROM schema_migrations WHERE NOT dirty").await,
        1
    );
    p.ok(&["upgrade", "--restore"]);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM users WHERE email = 'e' || substr(name, 2)"
        )
        .await,
        30
    );
}

#[tokio::test]
async fn config_check_reads_the_migrations_folder_too() {
    let db = TestDb::new().await;
    let p = Project::empty(&db.url);
    write(&p, "V1__init.sql", "CREATE TABLE a (id int);\n");
    let r = p.run(&["config", "check"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stdout.contains("[migrations]"), "{r}");
    assert!(
        r.stdout.contains("holds no migrations backstop can read"),
        "{r}"
    );
    std::fs::remove_file(p.migrations().join("V1__init.sql")).unwrap();
    pair(&p, "000001_a", "SELECT 1;\n", "SELECT 1;\n");
    p.ok(&["config", "check"]);
}
