//! The configuration tree: one serde structure serves the TOML file, the environment
//! overrides and the rest of the library; `load.rs` finds it and applies the environment.
//!
//! Unknown keys are rejected with the file, line and key, because a misspelt key that is
//! silently ignored is how a backup ends up somewhere nobody looks. Values are checked all
//! at once ([`Config::problems`]), so `config check` names every problem in one run.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::usage;

mod load;

pub use load::{process_env, Env, Loaded};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub database: DatabaseConfig,
    pub migrations: MigrationsConfig,
    pub storage: StorageConfig,
    pub backup: BackupConfig,
    #[serde(rename = "schedule")]
    pub schedules: Vec<ScheduleConfig>,
    pub retention: RetentionConfig,
    pub server: ServerConfig,
    pub notify: NotifyConfig,
}

/// A string that must never be printed: database URLs carry passwords, tokens are secrets.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// `[database]`: how to reach PostgreSQL and how long to wait for it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// libpq-style URL; `BACKSTOP_DATABASE_URL` and `DATABASE_URL` override it.
    #[serde(skip_serializing)]
    pub url: Option<Secret>,
    /// The schema whose tables migrations create and backups cover.
    pub schema: String,
    /// Give up connecting after this long, so an unreachable host fails instead of hanging.
    pub connect_timeout_secs: u64,
    /// `lock_timeout` for migration steps: a migration blocked by a long transaction fails
    /// with a clear message instead of queueing every other query behind it.
    pub lock_timeout_secs: u64,
    /// `statement_timeout` for catalog queries (schema snapshots, bookkeeping).
    pub statement_timeout_secs: u64,
    /// How long a schema-changing command waits for another run holding the migration lock.
    pub migration_lock_timeout_secs: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            schema: "public".into(),
            connect_timeout_secs: 10,
            lock_timeout_secs: 30,
            statement_timeout_secs: 60,
            migration_lock_timeout_secs: 60,
        }
    }
}

/// `[migrations]`: where the migrations live and how they are laid out.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MigrationsConfig {
    /// Relative paths are resolved against the config file's directory (or the working
    /// directory when there is no file), so a daemon started from `/` finds them.
    pub dir: PathBuf,
    /// Which tool's layout the folder follows; `auto` tells by what the folder holds.
    pub layout: LayoutSetting,
    /// How Alembic is started (`["uv", "run", "alembic"]`); default the project's
    /// `.venv/bin/python -m alembic` when it has one, else `python3 -m alembic`.
    pub command: Option<Vec<String>>,
    /// How long one Alembic run may take before it is stopped.
    pub render_timeout_secs: u64,
}

impl Default for MigrationsConfig {
    fn default() -> Self {
        MigrationsConfig {
            dir: PathBuf::from("migrations"),
            layout: LayoutSetting::Auto,
            command: None,
            render_timeout_secs: 120,
        }
    }
}

/// `[migrations] layout`: teams adopt backstop with the migrations they already have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayoutSetting {
    #[default]
    Auto,
    /// `<number>_<name>/up.sql, down.sql`.
    Backstop,
    /// `<timestamp>_<name>/up.sql, down.sql`, with `metadata.toml`.
    Diesel,
    /// `<version>_<name>.up.sql` and `.down.sql`.
    GolangMigrate,
    /// sqlx's reversible migrations: the same files as golang-migrate.
    Sqlx,
    /// `<version>_<name>.sql` with `-- migrate:up` and `-- migrate:down` sections.
    Dbmate,
    /// An Alembic project (`alembic.ini`), its SQL rendered by Alembic in offline mode.
    Alembic,
}

/// `[storage]`: where backups go.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `s3://bucket/prefix`, a directory path or a `file://` URL; default `./backstop-backups`.
    pub url: Option<String>,
    /// An S3-compatible endpoint; omit for AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Path-style addressing, needed by most self-hosted S3 services.
    pub force_path_style: bool,
    /// S3 credentials; prefer the standard AWS environment variables or profile chain.
    pub access_key_id: Option<String>,
    #[serde(skip_serializing)]
    pub secret_access_key: Option<Secret>,
    /// Give up opening a connection to the store after this long.
    pub connect_timeout_secs: u64,
    /// Give up on a request (one part of an upload, a listing page, a small object) that
    /// has no answer after this long, retries included, or a download that received nothing
    /// for this long. It bounds how long a downgrade holds its locks once the store stops
    /// answering, so the default is short: 20 s asks at least 1 MiB/s of the store (four
    /// parts of 5 MiB in flight).
    pub read_timeout_secs: u64,
    /// Give up on one request, retries included, after this long (the shorter of the two
    /// applies).
    pub operation_timeout_secs: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            url: None,
            endpoint: None,
            region: None,
            force_path_style: false,
            access_key_id: None,
            secret_access_key: None,
            connect_timeout_secs: 10,
            read_timeout_secs: 20,
            operation_timeout_secs: 600,
        }
    }
}

/// `[backup]`: what an on-demand backup covers and how it is compressed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// Tables to back up by default; empty means every user table of the schema.
    pub tables: Vec<String>,
    pub zstd_level: i32,
    /// Tables exported at once, each on its own connection sharing one snapshot.
    pub parallelism: usize,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            tables: Vec::new(),
            zstd_level: 1,
            parallelism: 2,
        }
    }
}

/// One `[[schedule]]` entry: a cron expression and the tables it backs up.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    pub name: String,
    /// Six fields, seconds first.
    pub cron: String,
    /// An IANA time zone name the cron expression is read in; UTC when absent.
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub tables: Vec<String>,
    /// The label of the schedule's backups; `schedule NAME` when absent.
    #[serde(default)]
    pub label: Option<String>,
    /// What a start does about slots that passed while no instance ran.
    #[serde(default)]
    pub catch_up: CatchUp,
}

/// `catch_up` of a `[[schedule]]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Run the latest missed slot once at start; record the others as missed.
    #[default]
    Latest,
    /// Only record them as missed.
    None,
}

/// `[retention]`: how many manual and scheduled backups `prune` keeps.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    pub keep_last: Option<u32>,
    pub keep_daily: Option<u32>,
    /// An upload without a manifest (or an unfinished multipart upload) older than this is
    /// abandoned and `prune` removes it; younger ones may still be in progress.
    pub incomplete_after_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            keep_last: None,
            keep_daily: None,
            incomplete_after_secs: 3600,
        }
    }
}

/// `[server]`: the daemon's HTTP endpoint.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    /// Bearer token that `POST /v1/backups` requires; without it the endpoint is off.
    #[serde(skip_serializing)]
    pub token: Option<Secret>,
    /// Connections served at once; more are closed as they arrive, so a flood of sockets
    /// cannot take the file descriptors the backups need.
    pub max_connections: usize,
    /// A connection that sends no complete request header for this long (a new one, or an
    /// idle keep-alive one) is closed.
    pub idle_timeout_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:9187".into(),
            token: None,
            max_connections: 64,
            idle_timeout_secs: 10,
        }
    }
}

/// `[notify]`: webhooks (healthchecks.io-style dead-man switches) told when a scheduled
/// backup starts, succeeds or fails, so a backup that stops happening is noticed. The URLs
/// are secrets: a ping URL is all it takes to report a false success.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    #[serde(skip_serializing)]
    pub on_start: Option<Secret>,
    #[serde(skip_serializing)]
    pub on_success: Option<Secret>,
    #[serde(skip_serializing)]
    pub on_failure: Option<Secret>,
}

impl NotifyConfig {
    /// The configured hooks with their keys, for checks and messages.
    pub fn hooks(&self) -> impl Iterator<Item = (&'static str, &Secret)> {
        [
            ("on_start", &self.on_start),
            ("on_success", &self.on_success),
            ("on_failure", &self.on_failure),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
    }
}

/// Why `url` cannot be a webhook address, if it cannot: an absolute `http` or `https` URL
/// with a host, and nothing a request line could not carry.
pub fn webhook_url_problem(url: &str) -> Option<&'static str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Some("is not an absolute URL (like \"https://hc-ping.com/UUID\")");
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Some("must use http or https");
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Some("has no host");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("contains spaces or control characters");
    }
    None
}

impl Config {
    /// Parses TOML text; `origin` names the file in error messages.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Config> {
        let config = Self::parse_syntax(text, origin)?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Parses TOML text into the tree (unknown keys and wrong types refused), without
    /// checking the values.
    pub fn parse_syntax(text: &str, origin: &str) -> anyhow::Result<Config> {
        match toml::from_str(text) {
            Ok(c) => Ok(c),
            Err(e) => usage(describe_toml_error(&e, text, origin)),
        }
    }

    fn validate(&self, origin: &str) -> anyhow::Result<()> {
        match self.problems(origin).into_iter().next() {
            Some(p) => usage(p),
            None => Ok(()),
        }
    }

    /// Everything wrong with the values (not the syntax), each as a sentence naming the file
    /// and key; `config check` reports them all at once.
    pub fn problems(&self, origin: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.database.schema.is_empty() {
            out.push(format!("{origin}: [database] schema must not be empty"));
        }
        if self
            .migrations
            .command
            .as_ref()
            .is_some_and(|c| c.first().is_none_or(|p| p.trim().is_empty()))
        {
            out.push(format!(
                "{origin}: [migrations] command is empty; give the program first, e.g. [\"python3\", \"-m\", \"alembic\"] or [\"uv\", \"run\", \"alembic\"]"
            ));
        }
        if !(1..=22).contains(&self.backup.zstd_level) {
            out.push(format!(
                "{origin}: [backup] zstd_level is {}; zstd levels run from 1 to 22",
                self.backup.zstd_level
            ));
        }
        // Zero would mean "wait forever" to PostgreSQL and the S3 client alike.
        let waits = [
            (
                "[database] connect_timeout_secs",
                self.database.connect_timeout_secs,
            ),
            (
                "[database] lock_timeout_secs",
                self.database.lock_timeout_secs,
            ),
            (
                "[database] statement_timeout_secs",
                self.database.statement_timeout_secs,
            ),
            (
                "[database] migration_lock_timeout_secs",
                self.database.migration_lock_timeout_secs,
            ),
            (
                "[migrations] render_timeout_secs",
                self.migrations.render_timeout_secs,
            ),
            (
                "[storage] connect_timeout_secs",
                self.storage.connect_timeout_secs,
            ),
            (
                "[storage] read_timeout_secs",
                self.storage.read_timeout_secs,
            ),
            (
                "[storage] operation_timeout_secs",
                self.storage.operation_timeout_secs,
            ),
        ];
        for (key, _) in waits.iter().filter(|(_, v)| *v == 0) {
            out.push(format!(
                "{origin}: {key} is 0, which would mean waiting without end; give it a number of seconds"
            ));
        }
        if self.backup.parallelism == 0 {
            out.push(format!("{origin}: [backup] parallelism must be at least 1"));
        }
        for (key, url) in self.notify.hooks() {
            if let Some(why) = webhook_url_problem(&url.0) {
                // The URL itself is a secret: name the key, not the value.
                out.push(format!(
                    "{origin}: [notify] {key} {why}; give the full URL your monitoring service shows"
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for s in &self.schedules {
            if !names.insert(&s.name) {
                out.push(format!(
                    "{origin}: two [[schedule]] entries are named {:?}; names must be unique",
                    s.name
                ));
            }
        }
        out
    }
}

/// Turns a TOML error into `file:line:column: message (in [section] key)`.
fn describe_toml_error(e: &toml::de::Error, text: &str, origin: &str) -> String {
    let message = e.message().trim().to_string();
    let Some(span) = e.span() else {
        return format!("{origin}: {message}");
    };
    let before = &text[..span.start.min(text.len())];
    let line_no = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    let section = text
        .lines()
        .take(line_no)
        .filter_map(|l| {
            let t = l.trim();
            (t.starts_with('[') && t.ends_with(']')).then(|| t.to_string())
        })
        .last();
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().to_string())
        .filter(|k| !k.starts_with('['));
    let place = match (section, key) {
        (Some(s), Some(k)) => format!(" (key `{k}` in {s})"),
        (None, Some(k)) => format!(" (key `{k}`)"),
        (Some(s), None) => format!(" (in {s})"),
        (None, None) => String::new(),
    };
    format!("{origin}:{line_no}:{col}: {message}{place}; see config/backstop.example.toml for every key")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ExitCode;

    #[test]
    fn example_config_parses_and_documents_every_section() {
        let text = include_str!("../../config/backstop.example.toml");
        let c = Config::parse(text, "backstop.example.toml").unwrap();
        assert_eq!(c.database.schema, "public");
        assert_eq!(c.backup.tables, vec!["tasks".to_string()]);
        assert_eq!(c.schedules.len(), 1);
        assert_eq!(c.retention.keep_last, Some(7));
    }

    #[test]
    fn webhook_urls_are_checked_without_printing_them() {
        for (url, ok) in [
            ("https://hc-ping.com/5f1b2c", true),
            ("http://127.0.0.1:8080/ping?x=1", true),
            ("hc-ping.com/5f1b2c", false),
            ("ftp://example.com/x", false),
            ("https:///path", false),
            ("https://host/a b", false),
        ] {
            assert_eq!(webhook_url_problem(url).is_none(), ok, "{url}");
        }
        let text = "[notify]\non_start = \"https://hc-ping.com/ok/start\"\non_failure = \"hc-ping.com/secret-uuid/fail\"\n";
        let err = Config::parse(text, "b.toml").unwrap_err();
        assert_eq!(ExitCode::of(&err), ExitCode::Usage);
        let msg = err.to_string();
        assert!(
            msg.contains("[notify] on_failure is not an absolute URL"),
            "{msg}"
        );
        assert!(!msg.contains("secret-uuid"), "{msg}");
    }

    #[test]
    fn waits_without_end_are_refused() {
        for (section, key) in [
            ("database", "lock_timeout_secs"),
            ("database", "connect_timeout_secs"),
            ("storage", "read_timeout_secs"),
            ("storage", "operation_timeout_secs"),
        ] {
            let text = format!("[{section}]\n{key} = 0\n");
            let err = Config::parse(&text, "b.toml").unwrap_err();
            assert_eq!(ExitCode::of(&err), ExitCode::Usage);
            assert!(
                err.to_string().contains(&format!("[{section}] {key} is 0")),
                "{err}"
            );
        }
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = "[database]\nschema = \"public\"\nshema = \"x\"\n";
        let err = Config::parse(text, "/etc/b.toml").unwrap_err();
        assert_eq!(ExitCode::of(&err), ExitCode::Usage);
        let msg = err.to_string();
        assert!(msg.starts_with("/etc/b.toml:3:1:"), "{msg}");
        assert!(msg.contains("shema"), "{msg}");
        assert!(msg.contains("[database]"), "{msg}");
    }

    #[test]
    fn type_error_names_key_and_section() {
        let text = "[backup]\n\nzstd_level = \"high\"\n";
        let msg = Config::parse(text, "b.toml").unwrap_err().to_string();
        assert!(msg.starts_with("b.toml:3:"), "{msg}");
        assert!(msg.contains("key `zstd_level` in [backup]"), "{msg}");
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        let msg = Config::parse("[backup]\nzstd_level = 40\n", "b.toml")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("zstd_level is 40"), "{msg}");
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let s = Secret("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
        let mut c = Config::default();
        c.database.url = Some(Secret("postgres://u:hunter2@h/d".into()));
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&c).unwrap().contains("hunter2"));
    }
}
