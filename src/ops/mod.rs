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

use crate::config::{process_env, Config, Loaded};
use crate::error::usage;
use crate::migrate::MigrationSet;
use crate::pg::Database;
use crate::store::{self, Store};
use migration::Migrator;

/// A loaded configuration and the database, store and migrations it names, each opened
/// only when an operation needs it (so `schema diff` never fails on a missing url, and
/// read-only commands never wait for the AWS credential chain).
pub struct Workspace {
    loaded: Loaded,
}

impl Workspace {
    /// Loads the configuration: `explicit`, else the default locations, then the environment.
    pub fn load(explicit: Option<&Path>) -> anyhow::Result<Workspace> {
        Ok(Workspace {
            loaded: Loaded::load(explicit, &process_env()?)?,
        })
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
        MigrationSet::load_as(
            &self.loaded.migrations_dir(),
            self.loaded.config.migrations.layout,
        )
    }

    /// What does not answer now, the database or the store, each as a sentence; empty when
    /// both do. For the daemon's readiness.
    pub async fn unavailable(&self) -> Vec<String> {
        let db = match self.database() {
            Ok(db) => db.connect().await.map(|_| ()),
            Err(e) => Err(e),
        };
        let store = match self.store().await {
            Ok(store) => store.check().await,
            Err(e) => Err(e),
        };
        [("database", db), ("store", store)]
            .into_iter()
            .filter_map(|(what, r)| {
                r.err()
                    .map(|e| format!("the {what} does not answer: {e:#}"))
            })
            .collect()
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
