//! Where the configuration comes from: `--config FILE`, else `./backstop.toml`, else
//! `/etc/backstop/backstop.toml`, else defaults; then the environment (and `.env`), which
//! carries the secrets a service's environment file holds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{Config, Secret};
use crate::error::usage;

/// Where the configuration came from, kept for messages and for resolving relative paths.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// The file that was read, or `None` when only defaults and environment apply.
    pub source: Option<PathBuf>,
}

/// The variables that override the file; a map so tests need not touch the process environment.
pub type Env = HashMap<String, String>;

impl Config {
    /// Applies `BACKSTOP_DATABASE_URL`, then `DATABASE_URL`, then `BACKSTOP_STORAGE_URL` and
    /// `BACKSTOP_SERVER_TOKEN` (secrets belong in the service's environment file).
    pub fn apply_env(&mut self, env: &Env) {
        if let Some(url) = env
            .get("BACKSTOP_DATABASE_URL")
            .or_else(|| env.get("DATABASE_URL"))
            .filter(|u| !u.is_empty())
        {
            self.database.url = Some(Secret(url.clone()));
        }
        if let Some(url) = env.get("BACKSTOP_STORAGE_URL").filter(|u| !u.is_empty()) {
            self.storage.url = Some(url.clone());
        }
        if let Some(token) = env.get("BACKSTOP_SERVER_TOKEN").filter(|t| !t.is_empty()) {
            self.server.token = Some(Secret(token.clone()));
        }
    }
}

impl Loaded {
    /// Finds, reads and validates the configuration, then applies the environment.
    pub fn load(explicit: Option<&Path>, env: &Env) -> anyhow::Result<Loaded> {
        let loaded = Self::read(explicit, env)?;
        if let Some(problem) = loaded.config.problems(&loaded.origin()).into_iter().next() {
            return usage(problem);
        }
        Ok(loaded)
    }

    /// Finds and reads the configuration (syntax and types checked, values not), then
    /// applies the environment: for `config check`, which reports every problem at once.
    pub fn read(explicit: Option<&Path>, env: &Env) -> anyhow::Result<Loaded> {
        let candidates: Vec<PathBuf> = match explicit {
            Some(p) => {
                if !p.is_file() {
                    return usage(format!(
                        "config file {} does not exist or is not a file; check --config",
                        p.display()
                    ));
                }
                vec![p.to_path_buf()]
            }
            None => vec![
                PathBuf::from("backstop.toml"),
                PathBuf::from("/etc/backstop/backstop.toml"),
            ],
        };
        let mut loaded = Loaded {
            config: Config::default(),
            source: None,
        };
        if let Some(path) = candidates.into_iter().find(|p| p.is_file()) {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            loaded.config = Config::parse_syntax(&text, &path.display().to_string())?;
            loaded.source = Some(path);
        }
        loaded.config.apply_env(env);
        Ok(loaded)
    }

    /// The file the configuration came from, for messages.
    pub fn origin(&self) -> String {
        self.source
            .as_deref()
            .map_or("the default configuration".to_string(), |p| {
                p.display().to_string()
            })
    }

    /// Resolves a path from the config against the config file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            return path.to_path_buf();
        }
        match self.source.as_deref().and_then(Path::parent) {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }

    /// The migrations directory, resolved.
    pub fn migrations_dir(&self) -> PathBuf {
        self.resolve(&self.config.migrations.dir)
    }
}

/// The process environment plus `DATABASE_URL` from a `.env` file in the working directory,
/// as the original procedure reads it. Real environment variables win over the file.
pub fn process_env() -> anyhow::Result<Env> {
    let mut env: Env = std::env::vars().collect();
    match dotenvy::from_filename_iter(".env") {
        Ok(iter) => {
            for item in iter {
                let (k, v) = item.context("reading .env in the working directory")?;
                env.entry(k).or_insert(v);
            }
        }
        Err(e) if e.not_found() => {}
        Err(e) => return Err(e).context("reading .env in the working directory"),
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_precedence() {
        let mut c = Config::default();
        let mut env = Env::new();
        env.insert("DATABASE_URL".into(), "postgres://a/db1".into());
        c.apply_env(&env);
        assert_eq!(c.database.url.as_ref().unwrap().0, "postgres://a/db1");
        env.insert("BACKSTOP_DATABASE_URL".into(), "postgres://b/db2".into());
        c.apply_env(&env);
        assert_eq!(c.database.url.as_ref().unwrap().0, "postgres://b/db2");
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let l = Loaded {
            config: Config::default(),
            source: Some(PathBuf::from("/etc/backstop/backstop.toml")),
        };
        assert_eq!(
            l.migrations_dir(),
            PathBuf::from("/etc/backstop/migrations")
        );
        let l = Loaded {
            config: Config::default(),
            source: None,
        };
        assert_eq!(l.migrations_dir(), PathBuf::from("migrations"));
    }
}
