//! An Alembic project the way the seed's is made: `alembic init -t async alembic` in
//! `backend/`, an env.py that reads `DATABASE_URL`, a `.env` holding the asyncpg URL, and
//! revision files as Alembic writes them. Alembic itself (the real one, from PyPI) renders
//! and, where a test needs it, migrates online.

use std::path::PathBuf;
use std::process::Command;

use crate::common::*;

/// The Python that has Alembic, SQLAlchemy and asyncpg (scripts/test installs them).
pub fn python() -> PathBuf {
    let p = std::env::var("BACKSTOP_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".venv/bin/python"));
    let ok = Command::new(&p)
        .args(["-c", "import alembic, sqlalchemy, asyncpg, greenlet"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{} cannot import alembic, sqlalchemy, asyncpg and greenlet; scripts/test installs them into .venv",
        p.display()
    );
    p
}

/// The seed's own first revision, as the procedure's project has it.
pub const SEED: &str = include_str!("../fixtures/alembic/001_initial_create_tasks_table.py");

/// A lookup table seeded by its up step (`bulk_insert` and a raw INSERT); its downgrade
/// drops it.
pub const ROLES: &str = include_str!("../fixtures/alembic/3f2a9c1d7b44_add_roles.py");

/// A NOT NULL column with a concurrently built index (an autocommit block); its downgrade
/// drops the column.
pub const PRIORITY: &str = include_str!("../fixtures/alembic/9e0d51c2aa10_tasks_priority.py");

/// The revision ids of [`SEED`], [`ROLES`], [`PRIORITY`], in order.
pub const REVISIONS: [&str; 3] = ["001", "3f2a9c1d7b44", "9e0d51c2aa10"];

/// A `backend/` Alembic project beside a `backstop.toml` that names only the folder: the
/// database comes from `backend/.env`, as the procedure keeps it.
pub struct AlembicProject {
    pub project: Project,
    pub db_url: String,
}

impl AlembicProject {
    /// `alembic init -t async`, env.py reading DATABASE_URL, `.env` with the asyncpg URL
    /// (`ssl=disable`: the test server has no TLS), and the three revisions above.
    pub fn new(db: &TestDb) -> AlembicProject {
        let p = AlembicProject::bare(db);
        p.revision("001_initial_create_tasks_table.py", SEED);
        p.revision("3f2a9c1d7b44_add_roles.py", ROLES);
        p.revision("9e0d51c2aa10_tasks_priority.py", PRIORITY);
        p
    }

    /// The project without revisions.
    pub fn bare(db: &TestDb) -> AlembicProject {
        let mut project = Project::empty("");
        let backend = project.path().join("backend");
        std::fs::create_dir_all(&backend).unwrap();
        let out = Command::new(python())
            .args(["-m", "alembic", "init", "-t", "async", "alembic"])
            .current_dir(&backend)
            .output()
            .unwrap();
        assert!(out.status.success(), "alembic init: {out:?}");
        std::fs::create_dir_all(backend.join("alembic/versions")).unwrap();
        let env_py = backend.join("alembic/env.py");
        let text = std::fs::read_to_string(&env_py).unwrap();
        let text = text.replacen(
            "config = context.config\n",
            "config = context.config\n\nimport os\n\nconfig.set_main_option(\"sqlalchemy.url\", os.environ[\"DATABASE_URL\"])\n",
            1,
        );
        assert!(text.contains("os.environ[\"DATABASE_URL\"]"));
        std::fs::write(&env_py, text).unwrap();
        let asyncpg = asyncpg_url(&db.url);
        std::fs::write(backend.join(".env"), format!("DATABASE_URL={asyncpg}\n")).unwrap();
        project.set_section(
            "migrations",
            &format!(
                "dir = \"backend\"\ncommand = [\"{}\", \"-m\", \"alembic\"]",
                python().display()
            ),
        );
        project.set_section("storage", "url = \"backups\"");
        AlembicProject {
            project,
            db_url: asyncpg,
        }
    }

    pub fn backend(&self) -> PathBuf {
        self.project.path().join("backend")
    }

    pub fn versions(&self) -> PathBuf {
        self.backend().join("alembic/versions")
    }

    pub fn revision(&self, file: &str, text: &str) {
        std::fs::write(self.versions().join(file), text).unwrap();
    }

    /// Runs the real Alembic online in `backend/`, as `python -m alembic ARGS`.
    pub fn alembic(&self, args: &[&str]) -> Run {
        Run::from(
            Command::new(python())
                .args(["-m", "alembic"])
                .args(args)
                .current_dir(self.backend())
                .env("DATABASE_URL", &self.db_url)
                .output()
                .unwrap(),
        )
    }

    /// What `alembic current` says: the revision id, or "" on a database at base.
    pub fn alembic_current(&self) -> String {
        let r = self.alembic(&["current"]);
        assert_eq!(r.code, 0, "alembic current:\n{r}");
        r.stdout
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    }

    /// What `backstop current` says, as a revision id ("" at base).
    pub fn backstop_current(&self) -> String {
        let (code, v) = self.project.json(&["current"]);
        assert_eq!(code, 0, "{v}");
        v["current"].as_str().unwrap_or_default().to_string()
    }

    /// Both tools agree, on `want`.
    pub fn both_at(&self, want: &str) {
        assert_eq!(self.backstop_current(), want, "backstop current");
        assert_eq!(self.alembic_current(), want, "alembic current");
    }
}

/// `postgres://u@h:p/db` as the asyncpg URL a FastAPI project keeps in `.env`.
pub fn asyncpg_url(url: &str) -> String {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .expect("a postgres:// url");
    let rest = rest.split('?').next().unwrap();
    format!("postgresql+asyncpg://{rest}?ssl=disable")
}

/// `n` revisions in a line, each adding and dropping a table of its own with a few rows
/// seeded, for histories grown over time.
pub fn grow(p: &AlembicProject, after: &str, n: usize) -> String {
    let mut parent = after.to_string();
    for i in 0..n {
        let id = format!("{:012x}", 0xa000_0000_0000u64 + i as u64);
        let text = format!(
            "\"\"\"step {i}\n\nRevision ID: {id}\nRevises: {parent}\n\"\"\"\nfrom alembic import op\nimport sqlalchemy as sa\n\nrevision = '{id}'\ndown_revision = '{parent}'\nbranch_labels = None\ndepends_on = None\n\n\ndef upgrade():\n    op.create_table('t{i}', sa.Column('id', sa.Integer(), primary_key=True), sa.Column('note', sa.Text()))\n    op.add_column('tasks', sa.Column('c{i}', sa.Text(), nullable=True))\n\n\ndef downgrade():\n    op.drop_column('tasks', 'c{i}')\n    op.drop_table('t{i}')\n"
        );
        p.revision(&format!("{id}_step_{i}.py"), &text);
        parent = id;
    }
    parent
}
