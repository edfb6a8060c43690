//! `schema` and `schema diff`.

use crate::common::*;

#[tokio::test]
async fn snapshot_is_deterministic_and_diff_finds_changes() {
    let db = TestDb::new().await;
    let p = Project::new(&db);
    p.ok(&["upgrade"]);
    let a = p.ok(&["schema", "--json"]).stdout;
    let b = p.ok(&["schema", "--json"]).stdout;
    assert_eq!(a, b, "two snapshots of the same schema differ");
    std::fs::write(p.path().join("a.json"), &a).unwrap();
    let same = p.ok(&["schema", "diff", "a.json", "a.json"]);
    assert!(same.stdout.contains("identical"), "{same}");

    // The committed head snapshot is what this database holds.
    let committed = std::fs::read_to_string(p.migrations().join("schema.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&committed).unwrap();
    let w: serde_json::Value = serde_json::from_str(&a).unwrap();
    assert_eq!(v, w);

    let c = db.client().await;
    c.batch_execute(
        "ALTER TABLE tasks ALTER COLUMN title TYPE text;
         DROP INDEX idx_tasks_user_id;
         CREATE TABLE extra (id int PRIMARY KEY);",
    )
    .await
    .unwrap();
    std::fs::write(p.path().join("b.json"), p.ok(&["schema", "--json"]).stdout).unwrap();
    let r = p.run(&["schema", "diff", "a.json", "b.json"]);
    assert_eq!(r.code, 3, "{r}");
    assert!(r.stdout.contains("~ column tasks.title"), "{r}");
    assert!(
        r.stdout.contains("character varying(200)") && r.stdout.contains("title text NOT NULL"),
        "{r}"
    );
    assert!(r.stdout.contains("- index tasks.idx_tasks_user_id"), "{r}");
    assert!(r.stdout.contains("+ table extra"), "{r}");
    let (code, v) = p.json(&["schema", "diff", "a.json", "b.json"]);
    assert_eq!(code, 3);
    assert_eq!(v["identical"], false);
    assert!(v["changes"].as_array().unwrap().len() >= 4);
}

#[tokio::test]
async fn snapshot_leaves_out_bookkeeping_and_other_schemas() {
    let db = TestDb::new().await;
    let p = Project::new(&db);
    p.ok(&["upgrade"]);
    db.client()
        .await
        .batch_execute("CREATE SCHEMA other; CREATE TABLE other.t (id int);")
        .await
        .unwrap();
    let (_, v) = p.json(&["schema"]);
    let tables: Vec<&String> = v["tables"].as_object().unwrap().keys().collect();
    assert_eq!(tables, ["tasks"]);
    assert!(v["sequences"]
        .as_object()
        .unwrap()
        .contains_key("tasks_id_seq"));
}

#[tokio::test]
async fn diff_of_something_that_is_not_a_snapshot_is_a_usage_error() {
    let p = Project::empty("postgres://x@127.0.0.1:1/x");
    std::fs::write(p.path().join("x.json"), "{\"hello\": 1}").unwrap();
    let r = p.run(&["schema", "diff", "x.json", "x.json"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("not a backstop schema snapshot"), "{r}");
    let r = p.run(&["schema", "diff", "x.json", "missing.json"]);
    assert_eq!(r.code, 2, "{r}");
}
