//! Alembic projects, as the procedure backstop replaces has one: revisions read through
//! the real Alembic (offline), run with backups and `--restore` like any layout, with
//! `alembic current` agreeing with `backstop current` after every command; a database that
//! Alembic migrated is adopted as it is; what cannot be rendered offline is refused.

use crate::alembic_project::*;
use crate::common::*;

const HEAD: &str = REVISIONS[2];

#[tokio::test]
async fn the_seed_procedure_on_an_alembic_project() {
    let db = TestDb::new().await;
    let a = AlembicProject::new(&db);
    let p = &a.project;
    // The database comes from backend/.env, as an asyncpg URL; nothing else names it.
    let config = std::fs::read_to_string(p.path().join("backstop.toml")).unwrap();
    assert!(!config.contains("url = \"postgres"), "{config}");

    assert_eq!(p.ok(&["current"]).stdout.trim(), "(none)");
    let history = p.ok(&["history"]).stdout;
    let order: Vec<&str> = history
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(order, REVISIONS, "{history}");

    p.ok(&["upgrade", "head"]);
    a.both_at(HEAD);
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO tasks (title, description, user_id, priority)
         SELECT 'task ' || g, CASE WHEN g % 5 = 0 THEN NULL ELSE E'line\\nbreak, \"quoted\"' END,
                'user-' || (g % 7), g % 4
         FROM generate_series(1, 300) g;
         INSERT INTO roles (id, name) VALUES (10, 'auditor'), (11, 'owner');",
    )
    .await
    .unwrap();
    let tasks = table_md5(&c, "tasks", "id").await;
    let roles = table_md5(&c, "roles", "id").await;
    assert_eq!(
        count(&c, "roles").await,
        5,
        "three seeded and two of the user's"
    );

    // downgrade -1 drops the NOT NULL column: backed up first.
    let (code, v) = p.json(&["downgrade", "-1"]);
    assert_eq!(code, 0, "{v}");
    let backup = v["protection"]["backup_id"].as_str().unwrap().to_string();
    assert_eq!(v["protection"]["losses"][0]["table"], "tasks", "{v}");
    a.both_at(REVISIONS[1]);
    let columns: i64 = c
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'tasks' AND column_name = 'priority'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(columns, 0, "the downgrade dropped the column");
    assert!(p.ok(&["backups", "list"]).stdout.contains(&backup));

    // ... and back, exact.
    p.ok(&["upgrade", "--restore"]);
    a.both_at(HEAD);
    assert_eq!(table_md5(&c, "tasks", "id").await, tasks);

    // Two steps down drops the seeded lookup table too; the user's rows in it come back
    // beside the seed the up step writes again.
    p.ok(&["downgrade", "-2"]);
    a.both_at(REVISIONS[0]);
    assert!(!tables(&c).await.contains(&"roles".to_string()));
    let r = p.ok(&["upgrade", "head", "--restore"]);
    assert!(!r.stderr.contains("was not loaded"), "{r}");
    a.both_at(HEAD);
    assert_eq!(table_md5(&c, "roles", "id").await, roles);
    assert_eq!(table_md5(&c, "tasks", "id").await, tasks);

    // A seed that no longer matches the user's row with its key is a conflict: named, and
    // the whole upgrade rolls back.
    c.batch_execute("UPDATE roles SET name = 'administrator' WHERE id = 1")
        .await
        .unwrap();
    p.ok(&["downgrade", "-1"]);
    p.ok(&["downgrade", "-1"]);
    a.both_at(REVISIONS[0]);
    let r = p.run(&["upgrade", "+1", "--restore"]);
    assert_eq!(r.code, 4, "{r}");
    assert!(
        r.stderr
            .contains("public.roles: 1 backed-up row(s) have the same key (id)"),
        "{r}"
    );
    assert!(
        !r.stderr.contains("administrator"),
        "no row values without -v: {r}"
    );
    a.both_at(REVISIONS[0]);
    assert!(!tables(&c).await.contains(&"roles".to_string()));
    p.ok(&["upgrade", "head", "--restore", "--restore-skip", "roles"]);
    a.both_at(HEAD);
    assert_eq!(table_md5(&c, "tasks", "id").await, tasks);

    // stamp moves alembic_version too.
    p.ok(&["stamp", REVISIONS[1]]);
    a.both_at(REVISIONS[1]);
    p.ok(&["stamp", "head"]);
    a.both_at(HEAD);

    // An edited revision file is drift, as an edited up.sql is.
    let file = a.versions().join("3f2a9c1d7b44_add_roles.py");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("'viewer'", "'guest'")).unwrap();
    assert!(p.ok(&["history"]).stdout.contains("DRIFT"));
    assert_eq!(p.run(&["downgrade", "-1"]).code, 3);
}

#[tokio::test]
async fn a_database_alembic_migrated_is_adopted_and_followed() {
    let db = TestDb::new().await;
    let a = AlembicProject::new(&db);
    let p = &a.project;
    // Alembic migrates, online, as the team always did.
    let r = a.alembic(&["upgrade", REVISIONS[1]]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(a.alembic_current(), REVISIONS[1]);
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO tasks (title, user_id) SELECT 't' || g, 'u' FROM generate_series(1, 50) g",
    )
    .await
    .unwrap();

    // backstop reads where it is from alembic_version: no stamp.
    assert_eq!(a.backstop_current(), REVISIONS[1]);
    let history = p.ok(&["history"]).stdout;
    assert!(
        history.contains("001") && history.contains("applied"),
        "{history}"
    );
    p.ok(&["upgrade"]);
    a.both_at(HEAD);
    assert_eq!(
        recorded(&c).await.len(),
        3,
        "the ledger holds every revision now"
    );

    // Alembic downgrades on its own; backstop follows, then downgrades with a backup.
    let r = a.alembic(&["downgrade", "-1"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(a.backstop_current(), REVISIONS[1]);
    let (code, v) = p.json(&["downgrade", "base"]);
    assert_eq!(code, 0, "{v}");
    assert!(v["protection"]["backup_id"].is_string(), "{v}");
    a.both_at("");
    assert_eq!(p.ok(&["current"]).stdout.trim(), "(none)");
    p.ok(&["upgrade", "--restore"]);
    a.both_at(HEAD);
    assert_eq!(count(&c, "tasks").await, 50);
}

#[tokio::test]
async fn env_py_gets_database_url_from_the_configured_database_when_nothing_sets_it() {
    let db = TestDb::new().await;
    let mut a = AlembicProject::new(&db);
    std::fs::remove_file(a.backend().join(".env")).unwrap();
    a.project
        .set_database_extra(&format!("url = \"{}\"", db.url));
    // env.py reads os.environ["DATABASE_URL"]; backstop sets it, as SQLAlchemy spells it.
    a.project.ok(&["config", "check"]);
    let r = a.project.ok(&["upgrade"]);
    assert!(r.stdout.contains("current: 9e0d51c2aa10 (head)"), "{r}");
    a.both_at(HEAD);
}

#[tokio::test]
async fn rollback_test_passes_every_criterion_on_the_alembic_project() {
    let db = TestDb::new().await;
    let a = AlembicProject::new(&db);
    let p = &a.project;
    p.ok(&["upgrade"]);
    let schema = p.ok(&["schema", "--json"]).stdout;
    std::fs::write(a.backend().join("schema.json"), schema).unwrap();
    let (code, v) = p.json(&["rollback-test", "--rows", "200"]);
    assert_eq!(code, 0, "{v:#}");
    for c in v["criteria"].as_array().unwrap() {
        assert_eq!(c["outcome"], "pass", "{c}");
    }
    assert_eq!(v["criteria"].as_array().unwrap().len(), 7);
    // The configured database was only read.
    a.both_at(HEAD);
}

#[tokio::test]
async fn a_history_grown_over_time_goes_down_and_back_with_its_data() {
    let db = TestDb::new().await;
    let a = AlembicProject::new(&db);
    let head = grow(&a, HEAD, 40);
    let p = &a.project;
    let history = p.ok(&["history"]).stdout;
    assert_eq!(history.lines().count(), 43, "{history}");
    assert!(
        history.lines().last().unwrap().starts_with(&head),
        "{history}"
    );
    p.ok(&["upgrade"]);
    a.both_at(&head);
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO tasks (title, user_id, c0, c17, c39) SELECT 't' || g, 'u', 'a' || g, 'b', NULL FROM generate_series(1, 100) g;
         INSERT INTO t20 VALUES (1, 'kept'), (2, 'also');",
    )
    .await
    .unwrap();
    let tasks = table_md5(&c, "tasks", "id").await;
    p.ok(&["downgrade", "001"]);
    a.both_at("001");
    p.ok(&["upgrade", "--restore"]);
    a.both_at(&head);
    assert_eq!(table_md5(&c, "tasks", "id").await, tasks);
    assert_eq!(count(&c, "t20").await, 2);
}

#[tokio::test]
async fn a_merge_is_followed_as_alembic_linearises_it() {
    let db = TestDb::new().await;
    let a = AlembicProject::bare(&db);
    a.revision("001_initial_create_tasks_table.py", SEED);
    let branch = |id: &str, parent: &str, table: &str| {
        format!("revision = '{id}'\ndown_revision = '{parent}'\nbranch_labels = None\ndepends_on = None\nfrom alembic import op\nimport sqlalchemy as sa\n\ndef upgrade():\n    op.create_table('{table}', sa.Column('id', sa.Integer(), primary_key=True))\n\ndef downgrade():\n    op.drop_table('{table}')\n")
    };
    a.revision("aaaa_left.py", &branch("aaaa", "001", "left_side"));
    a.revision("bbbb_right.py", &branch("bbbb", "001", "right_side"));
    a.revision(
        "mmmm_merge.py",
        "revision = 'mmmm'\ndown_revision = ('aaaa', 'bbbb')\nbranch_labels = None\ndepends_on = None\n\ndef upgrade():\n    pass\n\ndef downgrade():\n    pass\n",
    );
    let p = &a.project;
    p.ok(&["upgrade"]);
    a.both_at("mmmm");
    let c = db.client().await;
    c.batch_execute("INSERT INTO left_side VALUES (1), (2); INSERT INTO right_side VALUES (3)")
        .await
        .unwrap();
    // Step by step to base: the version table holds both branches in between, as Alembic
    // would have it, and backstop's current is the last step of its line.
    for _ in 0..4 {
        p.ok(&["downgrade", "-1"]);
        let heads: Vec<String> = c
            .query(
                "SELECT version_num::text FROM alembic_version ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let current = a.backstop_current();
        assert!(
            current.is_empty() || heads.contains(&current),
            "{current} not in {heads:?}"
        );
    }
    a.both_at("");
    p.ok(&["upgrade", "--restore"]);
    a.both_at("mmmm");
    assert_eq!(count(&c, "left_side").await, 2);
    assert_eq!(count(&c, "right_side").await, 1);
}

#[tokio::test]
async fn what_alembic_cannot_render_offline_is_refused_before_anything_runs() {
    let db = TestDb::new().await;
    let a = AlembicProject::new(&db);
    let p = &a.project;
    let refused = |what: &str| -> String {
        let r = p.run(&["upgrade"]);
        assert_eq!(r.code, 2, "{what}: {r}");
        assert!(tables_sync(&db).is_empty(), "{what}: nothing ran");
        r.stderr
    };

    // A revision that reads the database has no database offline.
    a.revision(
        "c0ffee000001_backfill.py",
        "revision = 'c0ffee000001'\ndown_revision = '9e0d51c2aa10'\nfrom alembic import op\nimport sqlalchemy as sa\n\ndef upgrade():\n    conn = op.get_bind()\n    for row in conn.execute(sa.text('SELECT id FROM tasks')):\n        pass\n\ndef downgrade():\n    pass\n",
    );
    let e = refused("get_bind");
    assert!(
        e.contains("revision c0ffee000001 cannot be rendered offline"),
        "{e}"
    );
    assert!(
        e.contains("op.get_bind()") && e.contains("c0ffee000001_backfill.py:7"),
        "{e}"
    );

    // One that branches on offline mode renders something else than it runs.
    a.revision(
        "c0ffee000001_backfill.py",
        "revision = 'c0ffee000001'\ndown_revision = '9e0d51c2aa10'\nfrom alembic import op, context\n\ndef upgrade():\n    if not context.is_offline_mode():\n        op.execute('DELETE FROM tasks')\n\ndef downgrade():\n    pass\n",
    );
    let e = refused("is_offline_mode");
    assert!(e.contains("context.is_offline_mode()"), "{e}");

    // Two heads are named, with how to merge them.
    a.revision(
        "c0ffee000001_backfill.py",
        "revision = 'c0ffee000001'\ndown_revision = '3f2a9c1d7b44'\nfrom alembic import op\n\ndef upgrade():\n    op.execute('SELECT 1')\n\ndef downgrade():\n    op.execute('SELECT 1')\n",
    );
    let e = refused("two heads");
    assert!(
        e.contains("has 2 heads (") && e.contains("c0ffee000001") && e.contains("9e0d51c2aa10"),
        "{e}"
    );
    assert!(e.contains("alembic merge"), "{e}");
    let r = p.run(&["config", "check"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stdout.contains("has 2 heads") || r.stderr.contains("has 2 heads"),
        "{r}"
    );

    // Alembic's own error, with the revision file and line.
    a.revision(
        "c0ffee000001_backfill.py",
        "revision = 'c0ffee000001'\ndown_revision = '9e0d51c2aa10'\nfrom alembic import op\n\ndef upgrade():\n    op.create_tabel('typo')\n\ndef downgrade():\n    pass\n",
    );
    let e = refused("python error");
    assert!(
        e.contains("AttributeError") && e.contains("create_tabel"),
        "{e}"
    );
    assert!(e.contains("c0ffee000001_backfill.py:6"), "{e}");
    std::fs::remove_file(a.versions().join("c0ffee000001_backfill.py")).unwrap();

    // A Python without Alembic: what to install, or what to set.
    let bare_venv = tempfile::tempdir().unwrap();
    let made = std::process::Command::new("python3")
        .args(["-m", "venv", "--without-pip"])
        .arg(bare_venv.path())
        .status()
        .unwrap();
    assert!(made.success());
    let bare_python = bare_venv.path().join("bin/python");
    let mut p3 = Project::empty("");
    copy_dir(&a.backend(), &p3.path().join("backend"));
    p3.set_section(
        "migrations",
        &format!(
            "dir = \"backend\"\ncommand = [\"{}\", \"-m\", \"alembic\"]",
            bare_python.display()
        ),
    );
    let r = p3.run(&["history"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stderr.contains("Alembic is not installed for")
            && r.stderr.contains("pip install alembic"),
        "{r}"
    );

    // No Python where the config says: what to set.
    let mut p2 = Project::empty("");
    copy_dir(&a.backend(), &p2.path().join("backend"));
    p2.set_section(
        "migrations",
        "dir = \"backend/alembic/versions\"\ncommand = [\"/nonexistent/python3\", \"-m\", \"alembic\"]",
    );
    let r = p2.run(&["current"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stderr.contains("[migrations] command") && r.stderr.contains("uv"),
        "{r}"
    );
    // Without a command, the project's own .venv is used; here it is a link to one that
    // has Alembic. The versions folder is enough to find the project.
    let venv = python().parent().unwrap().parent().unwrap().to_path_buf();
    std::os::unix::fs::symlink(&venv, p2.path().join("backend/.venv")).unwrap();
    p2.set_section("migrations", "dir = \"backend/alembic/versions\"");
    let r = p2.ok(&["history"]);
    assert!(r.stdout.contains("9e0d51c2aa10"), "{r}");
}

/// Tables of schema public other than bookkeeping, from a closure that is not async.
fn tables_sync(db: &TestDb) -> Vec<String> {
    let url = db.url.clone();
    block_on(async move {
        tables(&connect(&url).await)
            .await
            .into_iter()
            .filter(|t| !t.starts_with("backstop_") && t != "alembic_version")
            .collect()
    })
}

/// Rows a generator could never make: a slug that must match a regular expression, and a
/// column only a trigger writes.
const SLUGS: &str = r#""""tasks.slug and a trigger-maintained search column

Revision ID: 5b7c0ffee5b7
Revises: 9e0d51c2aa10
"""
from alembic import op

revision = '5b7c0ffee5b7'
down_revision = '9e0d51c2aa10'
branch_labels = None
depends_on = None


def upgrade():
    op.execute("ALTER TABLE tasks ADD COLUMN slug text CHECK (slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$')")
    op.execute("ALTER TABLE tasks ADD COLUMN search text")
    op.execute("""
        CREATE FUNCTION tasks_search() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.search := lower(NEW.title) || ' ' || coalesce(NEW.slug, '');
            RETURN NEW;
        END $$
    """)
    op.execute("CREATE TRIGGER tasks_search BEFORE INSERT OR UPDATE ON tasks FOR EACH ROW EXECUTE FUNCTION tasks_search()")


def downgrade():
    op.execute("DROP TRIGGER tasks_search ON tasks")
    op.execute("DROP FUNCTION tasks_search()")
    op.drop_column('tasks', 'search')
    op.drop_column('tasks', 'slug')
"#;

#[tokio::test]
async fn rollback_test_on_a_copy_of_the_real_data() {
    let db = TestDb::new().await;
    let a = AlembicProject::new(&db);
    a.revision("5b7c0ffee5b7_slugs.py", SLUGS);
    let p = &a.project;
    let c = db.client().await;

    // A copy taken at an earlier revision: the pending migrations run on its rows.
    p.ok(&["upgrade", REVISIONS[1]]);
    c.batch_execute(
        "INSERT INTO tasks (title, user_id) SELECT 'Early ' || g, 'u' FROM generate_series(1, 40) g;
         INSERT INTO roles VALUES (7, 'editor');",
    )
    .await
    .unwrap();
    let (code, v) = p.json(&["backup", "--label", "before priority"]);
    assert_eq!(code, 0, "{v}");
    let early = v["id"]
        .as_str()
        .or(v["backup_id"].as_str())
        .unwrap()
        .to_string();

    p.ok(&["upgrade"]);
    c.batch_execute(
        "INSERT INTO tasks (title, user_id, priority, slug)
         SELECT 'Task ' || g, 'user-' || g % 3, g % 5, 'release-' || g || '-notes' FROM generate_series(1, 250) g",
    )
    .await
    .unwrap();
    let search: String = c
        .query_one(
            "SELECT search FROM tasks WHERE slug = 'release-7-notes'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        search, "task 7 release-7-notes",
        "the trigger wrote the column"
    );
    let real = table_md5(&c, "tasks", "id").await;
    let mut scratch = Vec::new();

    // A fresh copy (the default), at head: the last step goes down and back, on real rows.
    let (code, v) = p.json(&["rollback-test", "--copy"]);
    assert_eq!(code, 0, "{v:#}");
    scratch.push(v["scratch_database"].as_str().unwrap().to_string());
    for crit in v["criteria"].as_array().unwrap() {
        assert!(
            matches!(crit["outcome"].as_str(), Some("pass" | "skipped")),
            "{crit}"
        );
    }
    assert_eq!(v["copy"]["revision"], "5b7c0ffee5b7", "{v}");
    assert_eq!(v["copy"]["rows"], 290 + 4, "{v}");
    assert!(
        v["copy"]["source"]
            .as_str()
            .unwrap()
            .starts_with("a fresh backup of"),
        "{v}"
    );
    assert!(v["copy"]["total_seconds"].as_f64().unwrap() > 0.0);
    let data = v["criteria"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "data restored")
        .unwrap()
        .clone();
    assert_eq!(data["outcome"], "pass", "{data}");
    // The fresh copy did not go to the configured store.
    assert!(
        !p.ok(&["backups", "list"]).stdout.contains("rollback-test"),
        "the copy stays out of the store"
    );

    // A named backup from the store, two revisions back.
    let (code, v) = p.json(&["rollback-test", "--copy", &early]);
    assert_eq!(code, 0, "{v:#}");
    scratch.push(v["scratch_database"].as_str().unwrap().to_string());
    assert_eq!(v["copy"]["revision"], REVISIONS[1], "{v}");
    let applies = &v["criteria"][0];
    assert!(
        applies["detail"]
            .as_str()
            .unwrap()
            .starts_with("2 pending migration(s)"),
        "{applies}"
    );
    // latest is that same backup (the only one).
    let (code, v) = p.json(&["rollback-test", "--copy", "latest"]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["copy"]["backup_id"], early.as_str());

    // The real database was only read; no scratch database is left.
    a.both_at("5b7c0ffee5b7");
    assert_eq!(table_md5(&c, "tasks", "id").await, real);
    let left = scratch_databases(&c).await;
    assert!(
        scratch.iter().all(|s| !left.contains(s)),
        "{scratch:?} in {left:?}"
    );

    // A pending migration that real data breaks (generated rows never would): named, exit
    // 3, the real database untouched, the scratch database gone.
    a.revision(
        "6c0ffee6c0ff_unique_user.py",
        "revision = '6c0ffee6c0ff'\ndown_revision = '5b7c0ffee5b7'\nfrom alembic import op\n\ndef upgrade():\n    op.create_unique_constraint('uq_tasks_user_id', 'tasks', ['user_id'])\n\ndef downgrade():\n    op.drop_constraint('uq_tasks_user_id', 'tasks', type_='unique')\n",
    );
    let (code, v) = p.json(&["rollback-test", "--copy"]);
    assert_eq!(code, 3, "{v:#}");
    let applies = &v["criteria"][0];
    assert_eq!(applies["outcome"], "fail", "{applies}");
    let detail = applies["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("6c0ffee6c0ff:") && detail.contains("uq_tasks_user_id"),
        "{detail}"
    );
    assert!(
        !detail.contains("user-1"),
        "row values only with -v: {detail}"
    );
    let left = scratch_databases(&c).await;
    assert!(!left.contains(&v["scratch_database"].as_str().unwrap().to_string()));
    assert_eq!(a.backstop_current(), "5b7c0ffee5b7");
    assert_eq!(table_md5(&c, "tasks", "id").await, real);
    std::fs::remove_file(a.versions().join("6c0ffee6c0ff_unique_user.py")).unwrap();

    // A pre-downgrade backup is not a copy.
    p.ok(&["downgrade", "-1"]);
    let (_, l) = p.json(&["backups", "list"]);
    let pre = l["backups"][0]["id"].as_str().unwrap().to_string();
    let r = p.run(&["rollback-test", "--copy", &pre]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("holds only what it dropped"), "{r}");
}

async fn scratch_databases(c: &tokio_postgres::Client) -> Vec<String> {
    c.query(
        "SELECT datname::text FROM pg_database WHERE datname LIKE 'backstop_rt_%' ORDER BY 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}
