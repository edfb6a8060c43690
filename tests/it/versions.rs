//! The same migrations on every PostgreSQL the suite is given: the machine's server and
//! those in `BACKSTOP_TEST_OTHER_DATABASE_URLS` (scripts/test starts 13, 14, 16, 17 and 18).
//! Schema snapshots must be the same on each, so a `schema.json` written on one version
//! matches another (PostgreSQL 18 records NOT NULL as constraints; older ones do not), and
//! the seed's `rollback-test` passes everywhere against the repository's `schema.json`.

use crate::common::*;

/// Every server to test on, the machine's first.
fn servers() -> Vec<String> {
    let mut all = vec![admin_url()];
    if let Ok(list) = std::env::var("BACKSTOP_TEST_OTHER_DATABASE_URLS") {
        all.extend(
            list.split([' ', ','])
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        );
    }
    all
}

/// A schema with what versions record differently: NOT NULL everywhere, identity and
/// generated columns, a partitioned table, domains and enums, CHECKs, deferrable and
/// partial unique constraints, an index with INCLUDE, foreign keys with actions.
const REAL_UP: &str = "
CREATE TYPE task_state AS ENUM ('open', 'done');
CREATE DOMAIN slug AS text CHECK (VALUE ~ '^[a-z0-9]+(-[a-z0-9]+)*$');
CREATE TABLE projects (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    slug slug NOT NULL UNIQUE,
    budget numeric(12, 2) NOT NULL DEFAULT 0 CHECK (budget >= 0),
    name_length int GENERATED ALWAYS AS (length(name)) STORED
);
CREATE TABLE project_tasks (
    project_id bigint NOT NULL REFERENCES projects ON DELETE CASCADE,
    task_id int NOT NULL REFERENCES tasks (id) ON DELETE RESTRICT,
    state task_state NOT NULL DEFAULT 'open',
    rank int NOT NULL,
    PRIMARY KEY (project_id, task_id),
    CONSTRAINT rank_once UNIQUE (project_id, rank) DEFERRABLE INITIALLY DEFERRED
);
CREATE INDEX project_tasks_open ON project_tasks (project_id) INCLUDE (rank) WHERE state = 'open';
CREATE TABLE events (
    at timestamptz NOT NULL,
    kind text NOT NULL CHECK (kind IN ('created', 'closed')),
    payload jsonb
) PARTITION BY RANGE (at);
CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
";

const REAL_DOWN: &str = "
DROP TABLE events;
DROP TABLE project_tasks;
DROP TABLE projects;
DROP DOMAIN slug;
DROP TYPE task_state;
";

#[tokio::test]
async fn snapshots_are_the_same_on_every_version_and_the_seed_passes_on_each() {
    let servers = servers();
    let mut snapshots: Vec<(String, std::path::PathBuf)> = Vec::new();
    let keep = tempfile::tempdir().unwrap();
    for server in &servers {
        let db = TestDb::on(server).await;
        let version: String = db
            .client()
            .await
            .query_one("SHOW server_version", &[])
            .await
            .unwrap()
            .get(0);
        let p = Project::new_with_url(&db.url);
        // The seed alone, against the schema.json in the repository (written on 15).
        let r = p.run(&["rollback-test", "--rows", "100"]);
        assert_eq!(r.code, 0, "PostgreSQL {version}: {r}");
        assert!(!r.stdout.contains("SKIPPED"), "PostgreSQL {version}: {r}");

        p.add_migration("002_projects", REAL_UP, REAL_DOWN);
        // Its schema.json is the seed's; this schema is compared across versions below.
        std::fs::remove_file(p.migrations().join("schema.json")).unwrap();
        p.ok(&["upgrade"]);
        let file = keep.path().join(format!("{version}.json"));
        std::fs::write(&file, p.ok(&["schema", "--json"]).stdout).unwrap();
        snapshots.push((version.clone(), file));
        let r = p.run(&["rollback-test", "--rows", "50"]);
        assert_eq!(r.code, 0, "PostgreSQL {version}: {r}");
    }
    let p = Project::empty("");
    let (first, first_file) = &snapshots[0];
    for (version, file) in &snapshots[1..] {
        let r = p.run(&[
            "schema",
            "diff",
            first_file.to_str().unwrap(),
            file.to_str().unwrap(),
        ]);
        assert_eq!(r.code, 0, "PostgreSQL {first} vs {version}: {r}");
    }
    eprintln!(
        "compared snapshots of PostgreSQL {}",
        snapshots
            .iter()
            .map(|(v, _)| v.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
}
