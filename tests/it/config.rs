//! Configuration lookup, validation and environment overrides, through the binary.

use crate::common::*;

#[tokio::test]
async fn unknown_key_is_rejected_with_file_line_and_key() {
    let p = Project::empty("postgres://x@127.0.0.1/x");
    std::fs::write(
        p.path().join("backstop.toml"),
        "[database]\nurl = \"postgres://x@127.0.0.1/x\"\n\n[storage]\nurll = \"s3://b/p\"\n",
    )
    .unwrap();
    let r = p.run(&["current"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("backstop.toml:5:1"), "{r}");
    assert!(
        r.stderr.contains("urll") && r.stderr.contains("[storage]"),
        "{r}"
    );
}

#[tokio::test]
async fn type_error_is_rejected_with_the_key() {
    let p = Project::empty("postgres://x@127.0.0.1/x");
    let cfg = p.path().join("elsewhere.toml");
    std::fs::write(&cfg, "[backup]\nzstd_level = \"fast\"\n").unwrap();
    let r = p.run(&["--config", cfg.to_str().unwrap(), "current"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("elsewhere.toml:2:"), "{r}");
    assert!(r.stderr.contains("zstd_level"), "{r}");
}

#[tokio::test]
async fn missing_config_file_and_missing_url_are_usage_errors() {
    let p = Project::empty("postgres://x@127.0.0.1/x");
    let r = p.run(&["--config", "/nonexistent/backstop.toml", "current"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stderr
            .contains("/nonexistent/backstop.toml does not exist"),
        "{r}"
    );
    std::fs::write(
        p.path().join("backstop.toml"),
        "[database]\nschema = \"public\"\n",
    )
    .unwrap();
    let r = p.run(&["current"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("DATABASE_URL"), "{r}");
}

#[tokio::test]
async fn database_url_from_env_and_dotenv_in_order() {
    let db = TestDb::new().await;
    let p = Project::new(&db);
    // The file names a server that does not exist; the environment wins over it.
    std::fs::write(
        p.path().join("backstop.toml"),
        "[database]\nurl = \"postgres://nobody@127.0.0.1:1/none\"\n",
    )
    .unwrap();
    assert_eq!(p.run(&["current"]).code, 1);

    // .env in the working directory, as the original procedure reads it.
    std::fs::write(p.path().join(".env"), format!("DATABASE_URL={}\n", db.url)).unwrap();
    assert_eq!(p.ok(&["current"]).stdout, "(none)\n");

    // A real DATABASE_URL beats .env; BACKSTOP_DATABASE_URL beats both.
    let bad = "postgres://nobody@127.0.0.1:1/none";
    let r = Run::from(
        p.cmd(&["current"])
            .env("DATABASE_URL", bad)
            .output()
            .unwrap(),
    );
    assert_eq!(r.code, 1, "{r}");
    let r = Run::from(
        p.cmd(&["current"])
            .env("DATABASE_URL", bad)
            .env("BACKSTOP_DATABASE_URL", &db.url)
            .output()
            .unwrap(),
    );
    assert_eq!(r.code, 0, "{r}");
}

#[tokio::test]
async fn example_config_is_accepted_by_the_binary() {
    let db = TestDb::new().await;
    let p = Project::new(&db);
    let example = repo_root().join("config/backstop.example.toml");
    let text = std::fs::read_to_string(example).unwrap();
    std::fs::write(p.path().join("backstop.toml"), text).unwrap();
    // The example's url points at db.example.com; the environment overrides it here.
    let r = Run::from(
        p.cmd(&["current"])
            .env("BACKSTOP_DATABASE_URL", &db.url)
            .output()
            .unwrap(),
    );
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.stdout, "(none)\n");
}

#[tokio::test]
async fn config_check_names_every_problem_at_once() {
    let db = TestDb::new().await;
    let p = Project::new(&db);
    p.ok(&["upgrade"]);
    let bad = p.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "[database]\nurl = \"{}\"\nlock_timeout_secs = 0\n\n\
             [[schedule]]\nname = \"nightly\"\ncron = \"0 3 * * *\"\n\n\
             [[schedule]]\nname = \"berlin\"\ncron = \"0 0 3 * * *\"\ntimezone = \"Europe/Berlim\"\n\n\
             [[schedule]]\nname = \"hourly\"\ncron = \"0 0 * * * *\"\ntables = [\"tasks\", \"nope\"]\n\n\
             [notify]\non_failure = \"hc-ping.com/secret-uuid/fail\"\n\n\
             [server]\nlisten = \"localhost\"\n",
            db.url
        ),
    )
    .unwrap();
    let r = p.run(&["--config", bad.to_str().unwrap(), "config", "check"]);
    assert_eq!(r.code, 2, "{r}");
    for text in [
        "[database] lock_timeout_secs is 0",
        "[[schedule]] \"nightly\": cron \"0 3 * * *\" is not a six-field expression",
        "timezone \"Europe/Berlim\" is not an IANA time zone",
        "[server] listen \"localhost\" is not an address",
        "[[schedule]] \"hourly\" names table \"nope\"",
        "[notify] on_failure is not an absolute URL",
        "6 problem(s)",
    ] {
        assert!(r.stdout.contains(text), "missing {text:?} in\n{r}");
    }
    assert!(!r.stdout.contains("secret-uuid"), "{r}");
    assert!(!r.stdout.contains("\"tasks\""), "{r}");

    let good = p.path().join("good.toml");
    std::fs::write(
        &good,
        format!(
            "[database]\nurl = \"{}\"\n\n[[schedule]]\nname = \"nightly\"\ncron = \"0 0 3 * * *\"\ntimezone = \"Europe/Berlin\"\ntables = [\"tasks\"]\n",
            db.url
        ),
    )
    .unwrap();
    let r = p.run(&["--config", good.to_str().unwrap(), "config", "check"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("configuration OK (1 schedule(s))"), "{r}");
}

#[tokio::test]
async fn config_check_reports_a_database_that_refuses_the_connection() {
    let db = TestDb::new().await;
    let p = Project::new(&db);
    let (base, _) = db.url.rsplit_once('/').unwrap();
    let (scheme, host) = base.split_once("://").unwrap();
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    for (url, says) in [
        (
            format!("{base}/no_such_database_here"),
            "database \"no_such_database_here\" does not exist",
        ),
        (
            format!("{scheme}://nobody_here:hunter2@{host}/{}", db.name),
            "role \"nobody_here\" does not exist",
        ),
    ] {
        let file = p.path().join("refused.toml");
        std::fs::write(
            &file,
            format!("[database]\nurl = \"{url}\"\n\n[[schedule]]\nname = \"nightly\"\ncron = \"0 0 3 * * *\"\n"),
        )
        .unwrap();
        let r = p.run(&["--config", file.to_str().unwrap(), "config", "check"]);
        assert_eq!(r.code, 2, "{r}");
        assert!(r.stdout.contains("[database] url:"), "{r}");
        assert!(r.stdout.contains(says), "{r}");
        assert!(!r.stdout.contains("configuration OK"), "{r}");
        assert!(!format!("{r}").contains("hunter2"), "{r}");
    }
}

/// Every key path of a TOML document (`database.url`, `schedule.name`), arrays of tables
/// read through.
fn key_paths(v: &toml::Value, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(path.clone());
                key_paths(v, &path, out);
            }
        }
        toml::Value::Array(items) => {
            for item in items.iter().filter(|i| i.is_table()) {
                key_paths(item, prefix, out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_example_config_shows_every_key_of_the_config_tree() {
    let text = std::fs::read_to_string(repo_root().join("config/backstop.example.toml")).unwrap();
    // A key shown commented out (`# token = "..."`) counts as shown.
    let uncommented: Vec<&str> = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if rest.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                }) =>
            {
                rest
            }
            _ => l,
        })
        .collect();
    let uncommented = uncommented.join("\n");
    // Every key the example shows is one the configuration has (unknown keys are refused)...
    let parsed: backstop::config::Config = toml::from_str(&uncommented)
        .unwrap_or_else(|e| panic!("the example, its keys uncommented, does not parse: {e}"));
    let mut shown = std::collections::BTreeSet::new();
    key_paths(&toml::from_str(&uncommented).unwrap(), "", &mut shown);
    // ...and every key the configuration has (secrets aside, which never serialise) is shown.
    let mut tree = std::collections::BTreeSet::new();
    key_paths(&toml::Value::try_from(&parsed).unwrap(), "", &mut tree);
    let missing: Vec<&String> = tree.difference(&shown).collect();
    assert!(
        missing.is_empty(),
        "keys the example does not show: {missing:?}"
    );
    for key in [
        "migrations.layout",
        "migrations.command",
        "server.token",
        "notify.on_failure",
    ] {
        assert!(shown.contains(key), "{key} not shown");
    }
    assert!(tree.len() > 30, "{tree:?}");
}
