//! Helpers shared by the integration tests: a database of one's own on the real server,
//! a project directory with config and migrations, and a way to run the real binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use tokio_postgres::{Client, NoTls};

/// The server the tests use: `BACKSTOP_TEST_DATABASE_URL`, else 127.0.0.1:5432 as postgres.
pub fn admin_url() -> String {
    std::env::var("BACKSTOP_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `admin_url()` with another database name.
pub fn url_for(dbname: &str) -> String {
    let base = admin_url();
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h.to_string(), format!("?{q}")),
        None => (base.clone(), String::new()),
    };
    let root = head.rsplit_once('/').map(|(r, _)| r).unwrap_or(&head);
    format!("{root}/{dbname}{query}")
}

pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    tokio::spawn(conn);
    client
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique name for this process and call.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}_{}_{n}_{nanos:x}", std::process::id())
}

/// A database created for one test and dropped when it goes out of scope.
pub struct TestDb {
    pub name: String,
    pub url: String,
    /// The server's maintenance URL, which created it and drops it.
    admin: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        TestDb::on(&admin_url()).await
    }

    /// A database on the server of `admin` (another PostgreSQL version).
    pub async fn on(admin: &str) -> TestDb {
        let name = unique("bst");
        connect(admin)
            .await
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap();
        let root = admin.split('?').next().unwrap().rsplit_once('/').unwrap().0;
        let url = if admin == admin_url() {
            url_for(&name)
        } else {
            format!("{root}/{name}")
        };
        TestDb {
            url,
            name,
            admin: admin.to_string(),
        }
    }

    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        block_on(async move {
            if let Ok((c, conn)) = tokio_postgres::connect(&admin, NoTls).await {
                tokio::spawn(conn);
                let _ = c
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await;
            }
        });
    }
}

/// Runs `work` to its end on a runtime of its own, on another thread: for code outside an
/// async context (Drop) or beside a test's own runtime.
pub fn block_on<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(work)
    })
    .join()
    .unwrap()
}

/// A working directory with a `backstop.toml` and a `migrations/` folder.
pub struct Project {
    pub dir: tempfile::TempDir,
    pub db_url: String,
    /// Extra TOML sections by name (`database` adds to the url line).
    pub sections: std::collections::BTreeMap<String, String>,
    /// Environment for the binary (S3 credentials).
    pub env: Vec<(String, String)>,
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl Project {
    /// A project with the repository's own migrations.
    pub fn new(db: &TestDb) -> Project {
        Project::new_with_url(&db.url)
    }

    /// The repository's own migrations against the database at `url`.
    pub fn new_with_url(url: &str) -> Project {
        let p = Project::empty(url);
        copy_dir(&repo_root().join("migrations"), &p.migrations());
        p
    }

    /// A project with no migrations yet.
    pub fn empty(db_url: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("migrations")).unwrap();
        let p = Project {
            dir,
            db_url: db_url.to_string(),
            sections: Default::default(),
            env: Vec::new(),
        };
        p.write_config();
        p
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn migrations(&self) -> PathBuf {
        self.dir.path().join("migrations")
    }

    /// Rewrites backstop.toml with `extra` appended under `[database]`.
    pub fn set_database_extra(&mut self, extra: &str) {
        self.set_section("database", extra);
    }

    /// Sets the body of a config section and rewrites backstop.toml.
    pub fn set_section(&mut self, name: &str, body: &str) {
        self.sections.insert(name.to_string(), body.to_string());
        self.write_config();
    }

    /// Points the project at a store (and its credentials, through the environment).
    pub fn use_store(&mut self, store: &TestStore) {
        self.set_section("storage", &store.config());
        self.env = store.env();
    }

    fn write_config(&self) {
        let mut text = if self.db_url.is_empty() {
            "[database]\n".to_string()
        } else {
            format!("[database]\nurl = \"{}\"\n", self.db_url)
        };
        if let Some(extra) = self.sections.get("database") {
            text.push_str(extra);
            text.push('\n');
        }
        let migrations = self
            .sections
            .get("migrations")
            .map_or("dir = \"migrations\"", String::as_str);
        text.push_str(&format!("\n[migrations]\n{migrations}\n"));
        for (name, body) in &self.sections {
            if name != "database" && name != "migrations" {
                text.push_str(&format!("\n[{name}]\n{body}\n"));
            }
        }
        std::fs::write(self.dir.path().join("backstop.toml"), text).unwrap();
    }

    /// Adds (or replaces) migration `rev` with the given scripts.
    pub fn add_migration(&self, rev: &str, up: &str, down: &str) {
        let d = self.migrations().join(rev);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("up.sql"), up).unwrap();
        std::fs::write(d.join("down.sql"), down).unwrap();
    }

    /// The binary, run in the project directory with a clean environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_backstop"));
        c.args(args)
            .current_dir(self.dir.path())
            .env_remove("DATABASE_URL")
            .env_remove("BACKSTOP_DATABASE_URL")
            .env_remove("BACKSTOP_STORAGE_URL")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_PROFILE")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.cmd(args).output().unwrap())
    }

    /// Runs and insists on exit code 0.
    pub fn ok(&self, args: &[&str]) -> Run {
        let r = self.run(args);
        assert_eq!(r.code, 0, "backstop {args:?} failed:\n{r}");
        r
    }

    /// Runs with `--json` and parses stdout.
    pub fn json(&self, args: &[&str]) -> (i32, serde_json::Value) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let r = self.run(&all);
        let v = serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("stdout of {all:?} is not one JSON document ({e}):\n{r}"));
        (r.code, v)
    }
}

/// What a run of the binary printed.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// Names of the tables in schema public.
pub async fn tables(c: &Client) -> Vec<String> {
    c.query(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Revisions recorded in backstop_migrations, in order.
pub async fn recorded(c: &Client) -> Vec<String> {
    c.query(
        "SELECT revision FROM backstop_migrations ORDER BY revision",
        &[],
    )
    .await
    .map(|rows| rows.iter().map(|r| r.get(0)).collect())
    .unwrap_or_default()
}

/// The S3 service the tests use, started by scripts/test.
pub struct S3Env {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
}

pub fn s3_env() -> S3Env {
    let get = |k: &str| {
        std::env::var(k).unwrap_or_else(|_| {
            panic!("{k} is not set: run the tests through scripts/test, which starts SeaweedFS")
        })
    };
    S3Env {
        endpoint: get("BACKSTOP_TEST_S3_ENDPOINT"),
        access_key: get("BACKSTOP_TEST_S3_ACCESS_KEY"),
        secret_key: get("BACKSTOP_TEST_S3_SECRET_KEY"),
    }
}

pub fn s3_client() -> aws_sdk_s3::Client {
    let env = s3_env();
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .http_client(backstop::store::http_client())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(env.endpoint)
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            env.access_key,
            env.secret_key,
            None,
            None,
            "test",
        ))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// A backup store of one test's own: a temporary directory, or a fresh S3 bucket.
pub enum TestStore {
    Dir(tempfile::TempDir),
    S3 { bucket: String, prefix: String },
}

impl TestStore {
    pub fn dir() -> TestStore {
        TestStore::Dir(tempfile::tempdir().unwrap())
    }

    pub async fn s3() -> TestStore {
        let bucket = unique("bst").replace('_', "-").to_lowercase();
        let client = s3_client();
        let mut last = None;
        // The S3 port can answer before SeaweedFS's filer is ready.
        for _ in 0..60 {
            match client.create_bucket().bucket(&bucket).send().await {
                Ok(_) => {
                    last = None;
                    break;
                }
                Err(e) => {
                    last = Some(format!("{}", aws_sdk_s3::error::DisplayErrorContext(e)));
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
        }
        if let Some(e) = last {
            panic!("creating bucket {bucket}: {e}");
        }
        TestStore::S3 {
            bucket,
            prefix: "backups".into(),
        }
    }

    pub async fn both() -> Vec<TestStore> {
        vec![TestStore::dir(), TestStore::s3().await]
    }

    pub fn name(&self) -> &'static str {
        match self {
            TestStore::Dir(_) => "directory",
            TestStore::S3 { .. } => "s3",
        }
    }

    /// The `[storage]` section for this store.
    pub fn config(&self) -> String {
        match self {
            TestStore::Dir(d) => format!("url = \"{}\"", d.path().display()),
            TestStore::S3 { bucket, prefix } => format!(
                "url = \"s3://{bucket}/{prefix}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nforce_path_style = true",
                s3_env().endpoint
            ),
        }
    }

    /// The store itself, as the library opens it (credentials from the config section).
    pub async fn open(&self) -> std::sync::Arc<backstop::store::Store> {
        let mut section = self.config();
        if let TestStore::S3 { .. } = self {
            let e = s3_env();
            section.push_str(&format!(
                "\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"",
                e.access_key, e.secret_key
            ));
        }
        let config: backstop::config::StorageConfig = toml::from_str(&section).unwrap();
        backstop::store::open(&config, |p| p.to_path_buf())
            .await
            .unwrap()
    }

    /// Credentials go through the standard AWS variables, as users are told to do.
    pub fn env(&self) -> Vec<(String, String)> {
        match self {
            TestStore::Dir(_) => Vec::new(),
            TestStore::S3 { .. } => {
                let e = s3_env();
                vec![
                    ("AWS_ACCESS_KEY_ID".into(), e.access_key),
                    ("AWS_SECRET_ACCESS_KEY".into(), e.secret_key),
                ]
            }
        }
    }

    /// Every object key, relative to the store's prefix.
    pub async fn keys(&self) -> Vec<String> {
        match self {
            TestStore::Dir(d) => {
                let mut out = Vec::new();
                fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
                    for e in std::fs::read_dir(dir).unwrap() {
                        let p = e.unwrap().path();
                        if p.is_dir() {
                            walk(root, &p, out);
                        } else {
                            out.push(p.strip_prefix(root).unwrap().display().to_string());
                        }
                    }
                }
                walk(d.path(), d.path(), &mut out);
                out.sort();
                out
            }
            TestStore::S3 { bucket, prefix } => {
                let resp = s3_client()
                    .list_objects_v2()
                    .bucket(bucket)
                    .send()
                    .await
                    .unwrap();
                let mut out: Vec<String> = resp
                    .contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .map(|k| {
                        k.strip_prefix(&format!("{prefix}/"))
                            .unwrap_or(k)
                            .to_string()
                    })
                    .collect();
                out.sort();
                out
            }
        }
    }

    pub async fn read(&self, key: &str) -> Vec<u8> {
        match self {
            TestStore::Dir(d) => std::fs::read(d.path().join(key)).unwrap(),
            TestStore::S3 { bucket, prefix } => s3_client()
                .get_object()
                .bucket(bucket)
                .key(format!("{prefix}/{key}"))
                .send()
                .await
                .unwrap()
                .body
                .collect()
                .await
                .unwrap()
                .to_vec(),
        }
    }

    pub async fn write(&self, key: &str, data: Vec<u8>) {
        match self {
            TestStore::Dir(d) => {
                let p = d.path().join(key);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, data).unwrap()
            }
            TestStore::S3 { bucket, prefix } => {
                s3_client()
                    .put_object()
                    .bucket(bucket)
                    .key(format!("{prefix}/{key}"))
                    .body(data.into())
                    .send()
                    .await
                    .unwrap();
            }
        }
    }

    pub async fn remove(&self, key: &str) {
        match self {
            TestStore::Dir(d) => std::fs::remove_file(d.path().join(key)).unwrap(),
            TestStore::S3 { bucket, prefix } => {
                s3_client()
                    .delete_object()
                    .bucket(bucket)
                    .key(format!("{prefix}/{key}"))
                    .send()
                    .await
                    .unwrap();
            }
        }
    }

    /// Unfinished multipart uploads in the bucket (always none for a directory).
    pub async fn pending_uploads(&self) -> usize {
        match self {
            TestStore::Dir(_) => 0,
            TestStore::S3 { bucket, .. } => s3_client()
                .list_multipart_uploads()
                .bucket(bucket)
                .send()
                .await
                .unwrap()
                .uploads()
                .len(),
        }
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        let TestStore::S3 { bucket, .. } = self else {
            return;
        };
        let bucket = bucket.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let c = s3_client();
                if let Ok(list) = c.list_objects_v2().bucket(&bucket).send().await {
                    for o in list.contents() {
                        if let Some(k) = o.key() {
                            let _ = c.delete_object().bucket(&bucket).key(k).send().await;
                        }
                    }
                }
                if let Ok(ups) = c.list_multipart_uploads().bucket(&bucket).send().await {
                    for u in ups.uploads() {
                        let _ = c
                            .abort_multipart_upload()
                            .bucket(&bucket)
                            .key(u.key().unwrap_or_default())
                            .upload_id(u.upload_id().unwrap_or_default())
                            .send()
                            .await;
                    }
                }
                let _ = c.delete_bucket().bucket(&bucket).send().await;
            })
        })
        .join();
    }
}

/// md5 over every row of a table in primary-key order, as text.
pub async fn table_md5(c: &Client, table: &str, order: &str) -> String {
    c.query_one(
        &format!("SELECT coalesce(md5(string_agg(t::text, E'\\n' ORDER BY {order})), 'empty') FROM {table} t"),
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

pub async fn count(c: &Client, table: &str) -> i64 {
    c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// Waits (up to `tries` × `every`) for a session of database `db` running a statement that
/// matches the LIKE `pattern`; with `terminate`, ends that session. True when one was seen.
pub async fn catch_statement(
    db: &str,
    pattern: &str,
    terminate: bool,
    tries: u32,
    every_ms: u64,
) -> bool {
    let admin = connect(&admin_url()).await;
    let sql = if terminate {
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1 AND query LIKE $2"
    } else {
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE $2"
    };
    for _ in 0..tries {
        let n: i64 = admin.query_one(sql, &[&db, &pattern]).await.unwrap().get(0);
        if n > 0 {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(every_ms)).await;
    }
    false
}

/// Sends `signal` (`-TERM`, `-INT`, `-HUP`) to the process `pid`, failing if it cannot.
pub fn send_signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid} failed");
}

/// Waits for `child` to exit, killing it and failing the test (naming `what`) if it is
/// still running after `limit`: a test of a bounded wait must not itself wait unbounded.
pub fn exit_within(
    mut child: std::process::Child,
    limit: std::time::Duration,
    what: &str,
) -> Output {
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            child.kill().unwrap();
            panic!("{what} still ran after {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}
