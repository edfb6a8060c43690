//! Operations: one module per thing a user (or the daemon) asks for. Each takes its options
//! and an [`OpContext`](crate::context::OpContext), plans, then executes, and returns a
//! serialisable report; front ends only turn arguments into options and reports into text,
//! JSON or metrics. [`Workspace`] opens what the configuration names, on demand.

pub mod backup;
pub mod config_check;
pub mod downgrade;
pub mod list;
pub mod migration;
pub mod prune;
pub mod restore;
pub mod rollback_test;
pub mod scheduled;
pub mod schema;
pub mod stamp;
pub mod upgrade;
pub mod verify;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::{process_env, Config, Env, Loaded, Secret};
use crate::error::usage;
use crate::migrate::{alembic, LoadOptions, MigrationSet};
use crate::pg::Database;
use crate::store::{self, Store};
use migration::Migrator;

/// A loaded configuration and the database, store and migrations it names, each opened
/// only when an operation needs it (so `schema diff` never fails on a missing url, and
/// read-only commands never wait for the AWS credential chain).
pub struct Workspace {
    loaded: Loaded,
    /// The process environment with the working directory's `.env`.
    env: Env,
}

impl Workspace {
    /// Loads the configuration: `explicit`, else the default locations, then the environment.
    pub fn load(explicit: Option<&Path>) -> anyhow::Result<Workspace> {
        let env = process_env()?;
        let mut loaded = Loaded::load(explicit, &env)?;
        project_database_url(&mut loaded)?;
        Ok(Workspace { loaded, env })
    }

    pub fn config(&self) -> &Config {
        &self.loaded.config
    }

    /// The file the configuration came from, for messages.
    pub fn origin(&self) -> String {
        self.loaded.origin()
    }

    pub fn database(&self) -> anyhow::Result<Database> {
        let Some(url) = &self.loaded.config.database.url else {
            return usage(
                "no database configured: set [database] url in backstop.toml, or BACKSTOP_DATABASE_URL / DATABASE_URL (also read from .env)",
            );
        };
        Database::parse(&url.0, &self.loaded.config.database)
    }

    pub async fn store(&self) -> anyhow::Result<Arc<Store>> {
        store::open(&self.loaded.config.storage, |p| self.loaded.resolve(p)).await
    }

    pub fn migrations(&self) -> anyhow::Result<MigrationSet> {
        load_migrations(&self.loaded, &self.env)
    }

    /// Whether the store answers.
    pub async fn check_store(&self) -> anyhow::Result<()> {
        self.store().await?.check().await
    }

    /// For commands that only read or record revisions.
    pub fn migrator(&self) -> anyhow::Result<Migrator> {
        Ok(Migrator::new(
            self.database()?,
            self.config().database.clone(),
            self.migrations()?,
        ))
    }

    /// With the backup store, for `upgrade` and `downgrade`.
    pub async fn migrator_with_store(&self) -> anyhow::Result<Migrator> {
        let migrator = self.migrator()?;
        Ok(migrator.with_store(self.store().await?, self.config().backup.clone()))
    }
}

/// The variables of a `.env` file; none when it does not exist.
fn dotenv_vars(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    match dotenvy::from_path_iter(path) {
        Ok(iter) => iter
            .map(|item| item.with_context(|| format!("reading {}", path.display())))
            .collect(),
        Err(e) if e.not_found() => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// One variable of a `.env` file, if it sets it (to something).
fn dotenv_var(path: &Path, name: &str) -> anyhow::Result<Option<String>> {
    Ok(dotenv_vars(path)?
        .into_iter()
        .find(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v))
}

/// With no database configured, an Alembic project's `.env` (beside alembic.ini) names it,
/// as the project's own `DATABASE_URL`.
pub(crate) fn project_database_url(loaded: &mut Loaded) -> anyhow::Result<()> {
    if loaded.config.database.url.is_none() {
        if let Some(project) = alembic::project_dir(&loaded.migrations_dir()) {
            if let Some(url) = dotenv_var(&project.join(".env"), "DATABASE_URL")? {
                loaded.config.database.url = Some(Secret(url));
            }
        }
    }
    Ok(())
}

/// The migrations the configuration names, read as `[migrations]` says (for Alembic: its
/// command, the project's environment, the render timeout).
pub(crate) fn load_migrations(loaded: &Loaded, env: &Env) -> anyhow::Result<MigrationSet> {
    let dir = loaded.migrations_dir();
    let config = &loaded.config.migrations;
    MigrationSet::load_with(
        &dir,
        &LoadOptions {
            layout: config.layout,
            command: config.command.clone(),
            env: alembic_env(loaded, env, &dir)?,
            timeout: Duration::from_secs(config.render_timeout_secs),
        },
    )
}

/// What Alembic's env.py expects beyond the process environment: the variables of the
/// working directory's `.env` and the project's, and `DATABASE_URL` (from the configured
/// database, as SQLAlchemy spells it) when neither sets it. Offline mode never connects.
fn alembic_env(loaded: &Loaded, env: &Env, dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let Some(project) = alembic::project_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut extra: Env = env
        .iter()
        .filter(|(k, _)| std::env::var_os(k).is_none())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in dotenv_vars(&project.join(".env"))? {
        if std::env::var_os(&k).is_none() {
            extra.entry(k).or_insert(v);
        }
    }
    if std::env::var_os("DATABASE_URL").is_none() && !extra.contains_key("DATABASE_URL") {
        if let Some(url) = &loaded.config.database.url {
            extra.insert("DATABASE_URL".into(), crate::pg::sqlalchemy_url(&url.0));
        }
    }
    let mut out: Vec<(String, String)> = extra.into_iter().collect();
    out.sort();
    Ok(out)
}
