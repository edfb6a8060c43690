//! `config check`: every problem in the configuration at once, before a daemon or a cron job
//! trips over them one by one: values, schedules (cron and time zone), the listen address,
//! the database and store locations, the migrations folder, and, when the database answers,
//! the tables named.

use std::net::SocketAddr;
use std::path::Path;

use serde::Serialize;

use crate::config::{process_env, Config, Loaded};
use crate::pg::catalog::{data_tables, Schemas};
use crate::pg::Database;
use crate::schedule::Schedule;
use crate::store::Location;

/// What `config check` found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The file read, or the default configuration.
    pub origin: String,
    /// Every problem, each naming the key and what to do.
    pub problems: Vec<String>,
    /// What could not be checked, and why (the database did not answer).
    pub unchecked: Vec<String>,
    pub schedules: usize,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What can be known wrong with a configuration without connecting anywhere, and the
/// schedules it defines. `config check` lists these problems; `serve` refuses to start on any
/// of them (exit 2), since no retry can cure them.
pub struct Checked {
    pub problems: Vec<String>,
    pub schedules: Vec<Schedule>,
}

/// The checks [`Checked`] describes: values, schedules (cron and time zone), the listen
/// address, the store and database locations.
pub fn check_offline(config: &Config, origin: &str) -> Checked {
    let mut problems = config.problems(origin);
    let schedules: Vec<Schedule> = config
        .schedules
        .iter()
        .filter_map(|s| {
            Schedule::parse(s)
                .map_err(|e| problems.push(format!("{origin}: {e}")))
                .ok()
        })
        .collect();
    if config.server.listen.parse::<SocketAddr>().is_err() {
        problems.push(format!(
            "{origin}: [server] listen {:?} is not an address and port (like \"127.0.0.1:9187\")",
            config.server.listen
        ));
    }
    if config.server.max_connections == 0 || config.server.idle_timeout_secs == 0 {
        problems.push(format!(
            "{origin}: [server] max_connections and idle_timeout_secs must be at least 1"
        ));
    }
    if let Some(url) = &config.storage.url {
        if let Err(e) = Location::parse(url) {
            problems.push(format!("{origin}: {e:#}"));
        }
    }
    if let Some(url) = &config.database.url {
        if let Err(e) = Database::parse(&url.0, &config.database) {
            problems.push(format!("{origin}: {e:#}"));
        }
    }
    Checked {
        problems,
        schedules,
    }
}

pub async fn check(explicit: Option<&Path>) -> anyhow::Result<CheckReport> {
    let env = process_env()?;
    let mut loaded = Loaded::read(explicit, &env)?;
    super::project_database_url(&mut loaded)?;
    let origin = loaded.origin();
    let config = &loaded.config;
    let Checked {
        mut problems,
        schedules,
    } = check_offline(config, &origin);
    let mut unchecked = Vec::new();
    let migrations = loaded.migrations_dir();
    if migrations.is_dir() {
        if let Err(e) = super::load_migrations(&loaded, &env) {
            problems.push(format!("{origin}: [migrations] {e:#}"));
        }
    } else {
        // A host that only runs the daemon needs no migrations.
        unchecked.push(format!(
            "no migrations directory at {} ([migrations] dir), so none were checked",
            migrations.display()
        ));
    }
    match &config.database.url {
        None => unchecked.push(
            "no database url is configured, so the tables named could not be checked".to_string(),
        ),
        Some(url) => {
            // A url that does not parse is among the problems already.
            if let Ok(db) = Database::parse(&url.0, &config.database) {
                match db.connect().await {
                    // The server answered and said no: that is the configuration's problem.
                    Err(e) if e.downcast_ref::<crate::pg::Refused>().is_some() => {
                        problems.push(format!("{origin}: [database] url: {e:#}"))
                    }
                    Err(e) => unchecked.push(format!(
                        "the database did not answer, so the tables named were not checked: {e:#}"
                    )),
                    Ok(_) => match missing_tables(config, &schedules, &db, &origin).await {
                        Err(e) => {
                            unchecked.push(format!("the tables named were not checked: {e:#}"))
                        }
                        Ok(missing) => problems.extend(missing),
                    },
                }
            }
        }
    }
    Ok(CheckReport {
        origin,
        problems,
        unchecked,
        schedules: schedules.len(),
    })
}

/// The tables that `[backup] tables` and the schedules name but the database does not have,
/// each as a sentence naming who names it; an error when the database does not answer.
/// `serve` asks this at start and on reload, so a schedule never fails on a typo at 3 a.m.
pub async fn missing_tables(
    config: &Config,
    schedules: &[Schedule],
    db: &Database,
    origin: &str,
) -> anyhow::Result<Vec<String>> {
    let named: Vec<(String, &String)> = schedules
        .iter()
        .flat_map(|s| {
            s.tables
                .iter()
                .map(move |t| (format!("[[schedule]] {:?}", s.name), t))
        })
        .chain(
            config
                .backup
                .tables
                .iter()
                .map(|t| ("[backup] tables".to_string(), t)),
        )
        .collect();
    if named.is_empty() {
        return Ok(Vec::new());
    }
    let client = db.connect().await?;
    let schema = &config.database.schema;
    let tables = data_tables(&client, Schemas::One(schema)).await?;
    let mut problems = Vec::new();
    for (whose, table) in named {
        let found = tables.iter().any(|t| t.is_named(table, schema));
        if !found {
            problems.push(format!(
                "{origin}: {whose} names table {table:?}, which is not in schema {schema} of {}",
                db.describe()
            ));
        }
    }
    Ok(problems)
}
