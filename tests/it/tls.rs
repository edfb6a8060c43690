//! TLS and authentication against a PostgreSQL server of the test's own, started with
//! `ssl=on`, a certificate from a throwaway CA, password (SCRAM) authentication, and
//! `hostnossl ... reject` so a plaintext connection cannot succeed by accident.

use std::path::{Path, PathBuf};
use std::process::Command;

use backstop::config::DatabaseConfig;
use backstop::pg::Database;

use crate::cluster::{as_owner, is_root, pg_bindir, run_ok};
use crate::common::*;

const PASSWORD: &str = "Tls-Te5t-pw";

struct TlsCluster {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A CA and a certificate signed by it; `server` also gets names localhost and 127.0.0.1.
fn make_ca(dir: &Path, name: &str) {
    run_ok(Command::new("openssl").current_dir(dir).args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-keyout",
        &format!("{name}.key"),
        "-out",
        &format!("{name}.crt"),
        "-subj",
        &format!("/CN={name}"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]));
}

impl TlsCluster {
    fn start() -> TlsCluster {
        let dir = tempfile::Builder::new()
            .prefix("bst-tls")
            .tempdir_in("/tmp")
            .unwrap();
        let base = dir.path();
        make_ca(base, "ca");
        make_ca(base, "other-ca");
        std::fs::write(
            base.join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        run_ok(Command::new("openssl").current_dir(base).args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]));
        run_ok(Command::new("openssl").current_dir(base).args([
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]));
        std::fs::write(base.join("pw"), PASSWORD).unwrap();
        if is_root() {
            run_ok(Command::new("chown").arg("-R").arg("postgres").arg(base));
        }
        run_ok(
            Command::new("chmod")
                .arg("600")
                .arg(base.join("server.key")),
        );
        let bindir = pg_bindir();
        let data = base.join("data");
        run_ok(
            as_owner(&bindir.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "-A", "scram-sha-256", "--pwfile"])
                .arg(base.join("pw")),
        );
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\nhostnossl all all 127.0.0.1/32 reject\n",
        )
        .unwrap();
        let port = free_port();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            base.display(),
            base.join("server.crt").display(),
            base.join("server.key").display()
        );
        run_ok(
            as_owner(&bindir.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(base.join("log"))
                .args(["-w", "-o", &opts, "start"]),
        );
        TlsCluster { dir, bindir, port }
    }

    fn url(&self, host: &str, password: &str, params: &str) -> String {
        format!(
            "postgres://postgres:{password}@{host}:{}/postgres?{params}",
            self.port
        )
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let _ = as_owner(&self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

async fn ssl_in_use(url: &str) -> anyhow::Result<bool> {
    let db = Database::parse(url, &DatabaseConfig::default())?;
    let client = db.connect().await?;
    Ok(client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?
        .get(0))
}

#[tokio::test]
async fn tls_modes_and_password_authentication() {
    let c = TlsCluster::start();

    // sslmode=require: encrypted, certificate not checked (libpq semantics).
    assert!(ssl_in_use(&c.url("127.0.0.1", PASSWORD, "sslmode=require"))
        .await
        .unwrap());
    // prefer (the default) upgrades to TLS when the server offers it.
    assert!(ssl_in_use(&c.url("127.0.0.1", PASSWORD, "")).await.unwrap());

    // verify-full: chain and host name, by DNS name and by IP address.
    let ca = c.file("ca.crt");
    for host in ["localhost", "127.0.0.1"] {
        let url = c.url(
            host,
            PASSWORD,
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        );
        assert!(ssl_in_use(&url).await.unwrap(), "{host}");
    }
    // A certificate from another CA is refused by verify-full and verify-ca, and by require
    // once a root certificate is named.
    let other = c.file("other-ca.crt");
    for mode in ["verify-full", "verify-ca", "require"] {
        let url = c.url(
            "localhost",
            PASSWORD,
            &format!("sslmode={mode}&sslrootcert={other}"),
        );
        let err = format!("{:#}", ssl_in_use(&url).await.unwrap_err());
        assert!(err.contains("localhost:"), "{mode}: {err}");
        assert!(!err.contains(PASSWORD), "{mode}: {err}");
    }

    // Neon's console string: channel binding over TLS with SCRAM; and the asyncpg URL a
    // FastAPI project keeps in .env.
    let neon = c.url(
        "127.0.0.1",
        PASSWORD,
        "sslmode=require&channel_binding=require&options=-c%20application_name%3Dneon-style",
    );
    assert!(ssl_in_use(&neon).await.unwrap());
    let asyncpg = format!(
        "postgresql+asyncpg://postgres:{PASSWORD}@127.0.0.1:{}/postgres?ssl=require&channel_binding=require",
        c.port
    );
    assert!(ssl_in_use(&asyncpg).await.unwrap());
    let p = Project::empty(&asyncpg);
    assert_eq!(p.ok(&["current"]).stdout, "(none)\n");
    // A server that cannot bind the channel (trust authentication, here the test server)
    // is refused, saying why.
    let e = format!(
        "{:#}",
        ssl_in_use(&format!(
            "{}?channel_binding=require",
            admin_url().split('?').next().unwrap()
        ))
        .await
        .unwrap_err()
    );
    assert!(
        e.contains("channel binding") && e.contains("channel_binding=prefer"),
        "{e}"
    );

    // Plaintext is rejected by the server; the error names host and port.
    let err = format!(
        "{:#}",
        ssl_in_use(&c.url("127.0.0.1", PASSWORD, "sslmode=disable"))
            .await
            .unwrap_err()
    );
    assert!(err.contains(&format!("127.0.0.1:{}", c.port)), "{err}");

    // The binary over TLS, and a wrong password that never shows up in any output.
    let p = Project::empty(&c.url("127.0.0.1", PASSWORD, "sslmode=require"));
    assert_eq!(p.ok(&["current"]).stdout, "(none)\n");
    let wrong = "Wr0ng-Secret-pw";
    let p = Project::empty(&c.url("127.0.0.1", wrong, "sslmode=require"));
    let r = p.run(&["current"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("password authentication failed"), "{r}");
    assert!(r.stderr.contains(&format!("127.0.0.1:{}", c.port)), "{r}");
    assert!(r.stderr.contains("check the user name, password"), "{r}");
    for text in [&r.stdout, &r.stderr] {
        assert!(!text.contains(wrong) && !text.contains(PASSWORD), "{r}");
    }
    let r = p.run(&["-v", "--json", "current"]);
    assert!(
        !r.stdout.contains(wrong) && !r.stderr.contains(wrong),
        "{r}"
    );
}
