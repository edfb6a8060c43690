//! `rollback-test`: the checklist on a scratch database.

use crate::common::*;

/// The `criteria` entry called `name` in a `rollback-test --json` report.
pub fn criterion(report: &serde_json::Value, name: &str) -> serde_json::Value {
    report["criteria"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no criterion {name} in {report}"))
        .clone()
}

async fn database_exists(name: &str) -> bool {
    connect(&admin_url())
        .await
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
            &[&name],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn passes_on_the_seed_and_drops_its_scratch_database() {
    let db = TestDb::new().await;
    let p = Project::new(&db);
    let r = p.ok(&["rollback-test"]);
    for criterion in [
        "upgrade applies",
        "schema matches",
        "downgrade succeeds",
        "schema reverts completely",
        "re-apply succeeds",
        "schema identical",
        "data restored",
    ] {
        let line = r
            .stdout
            .lines()
            .find(|l| l.starts_with(criterion))
            .unwrap_or_else(|| panic!("{r}"));
        assert!(line.contains("PASS"), "{criterion}: {line}");
    }
    let (code, v) = p.json(&["rollback-test"]);
    assert_eq!(code, 0, "{v}");
    let scratch = v["scratch_database"].as_str().unwrap();
    assert!(scratch.starts_with("backstop_rt_"));
    assert!(!database_exists(scratch).await, "{scratch} was left behind");
    // The configured database itself was never touched.
    assert!(tables(&db.client().await).await.is_empty());
}

#[tokio::test]
async fn a_down_script_that_leaves_an_index_behind_fails_with_exit_3() {
    let db = TestDb::new().await;
    let p = Project::new(&db);
    p.add_migration(
        "002_index",
        "CREATE INDEX idx_tasks_title ON tasks (title);\nCREATE TABLE notes (id int);\n",
        "DROP TABLE notes;\n",
    );
    std::fs::remove_file(p.migrations().join("schema.json")).unwrap();
    let (code, v) = p.json(&["rollback-test", "--keep"]);
    assert_eq!(code, 3, "{v}");
    let scratch = v["scratch_database"].as_str().unwrap().to_string();
    let outcome = |name: &str| criterion(&v, name)["outcome"].clone();
    assert_eq!(outcome("upgrade applies"), "pass");
    assert_eq!(outcome("schema matches"), "skipped");
    assert_eq!(outcome("schema reverts completely"), "fail");
    let diffs = v["differences"].to_string();
    assert!(
        diffs.contains("after reverting 002_index vs 001_initial: + index tasks.idx_tasks_title"),
        "{diffs}"
    );
    // --keep leaves the scratch database for inspection; the test removes it.
    assert!(database_exists(&scratch).await);
    connect(&admin_url())
        .await
        .batch_execute(&format!("DROP DATABASE \"{scratch}\" WITH (FORCE)"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_head_schema_that_differs_from_schema_json_fails() {
    let db = TestDb::new().await;
    let p = Project::new(&db);
    p.add_migration(
        "002_more",
        "ALTER TABLE tasks ADD COLUMN due date;\n",
        "ALTER TABLE tasks DROP COLUMN due;\n",
    );
    let r = p.run(&["rollback-test"]);
    assert_eq!(r.code, 3, "{r}");
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("schema matches"))
        .unwrap();
    assert!(line.contains("FAIL"), "{r}");
    assert!(r.stdout.contains("+ column tasks.due"), "{r}");
    assert!(r.stdout.contains("result: FAIL"), "{r}");
}

#[tokio::test]
async fn a_failing_down_script_is_reported() {
    let db = TestDb::new().await;
    let p = Project::new(&db);
    p.add_migration(
        "002_bad_down",
        "CREATE TABLE t2 (id int);\n",
        "DROP TABLE t2_typo;\n",
    );
    std::fs::remove_file(p.migrations().join("schema.json")).unwrap();
    let r = p.run(&["rollback-test"]);
    assert_eq!(r.code, 3, "{r}");
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("downgrade succeeds"))
        .unwrap();
    assert!(line.contains("FAIL") && line.contains("t2_typo"), "{r}");
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("re-apply succeeds"))
        .unwrap();
    assert!(line.contains("NOT RUN"), "{r}");
}

#[tokio::test]
async fn interrupting_drops_the_scratch_database() {
    let db = TestDb::new().await;
    let p = Project::new(&db);
    p.add_migration("002_slow", "SELECT pg_sleep(30.0417);\n", "SELECT 1;\n");
    let mut child = p.cmd(&["rollback-test"]).spawn().unwrap();
    let admin = connect(&admin_url()).await;
    let mut scratch = None;
    for _ in 0..200 {
        if let Some(row) = admin
            .query_opt(
                "SELECT datname::text FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30.0417)%' AND datname LIKE 'backstop_rt_%'",
                &[],
            )
            .await
            .unwrap()
        {
            scratch = Some(row.get::<_, String>(0));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let scratch = scratch.expect("the slow migration never started");
    assert!(database_exists(&scratch).await);
    send_signal(child.id(), "-INT");
    let status = child.wait().unwrap();
    assert_ne!(status.code(), Some(0));
    assert!(
        !database_exists(&scratch).await,
        "{scratch} survived Ctrl-C"
    );
}

#[tokio::test]
async fn data_survives_the_whole_cycle_with_a_second_migration() {
    let db = TestDb::new().await;
    let p = Project::new(&db);
    std::fs::remove_file(p.migrations().join("schema.json")).unwrap();
    p.add_migration(
        "002_tags",
        "ALTER TABLE tasks ADD COLUMN priority smallint NOT NULL DEFAULT 0, ADD COLUMN due_on date, ADD COLUMN meta jsonb;
         CREATE TYPE tag_kind AS ENUM ('plain', 'it''s \"quoted\"');
         CREATE TABLE tags (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                            task_id integer NOT NULL REFERENCES tasks(id),
                            kind tag_kind NOT NULL, name text, score numeric(8, 3), seen interval,
                            UNIQUE (task_id, name));",
        "DROP TABLE tags; DROP TYPE tag_kind; ALTER TABLE tasks DROP COLUMN meta, DROP COLUMN due_on, DROP COLUMN priority;",
    );
    let (code, v) = p.json(&["rollback-test", "--rows", "300"]);
    assert_eq!(code, 0, "{v}");
    let data = criterion(&v, "data restored");
    assert_eq!(data["outcome"], "pass", "{v}");
    assert!(
        data["detail"]
            .as_str()
            .unwrap()
            .contains("2 table(s) checked, 600 row(s), md5-identical"),
        "{v}"
    );
    // --rows 0 skips the data check, and says so.
    let (code, v) = p.json(&["rollback-test", "--rows", "0"]);
    assert_eq!(code, 0, "{v}");
    let data = criterion(&v, "data restored");
    assert_eq!(data["outcome"], "skipped");
}
