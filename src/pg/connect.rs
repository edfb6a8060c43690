//! Connecting to PostgreSQL: URL handling, TLS (rustls), timeouts, readable errors.
//!
//! tokio-postgres understands `sslmode=disable|prefer|require` but not `verify-ca`,
//! `verify-full` or `sslrootcert`, which hosted PostgreSQL setups rely on. This module takes
//! those out of the URL, hands the rest to tokio-postgres, and builds a rustls
//! configuration with libpq's semantics: `prefer`/`require` encrypt without checking the
//! certificate (unless `sslrootcert` is given, as libpq does), `verify-ca` checks the chain,
//! `verify-full` checks the chain and the host name.
//!
//! Nothing here ever formats the password: [`Database::describe`] is what messages use.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::Host;
use tokio_postgres::Client;

mod url;

use url::split_tls_params;
pub use url::sqlalchemy_url;

use super::error::PgError;
use crate::config::DatabaseConfig;
use crate::error::{err, usage, Kind};

/// libpq's `sslmode` values that backstop honours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RootCert {
    File(PathBuf),
    System,
}

/// A parsed, validated connection target. Cheap to clone; connects on demand.
#[derive(Clone)]
pub struct Database {
    config: tokio_postgres::Config,
    ssl_mode: SslMode,
    root_cert: Option<RootCert>,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Marks a connection the server refused for its user, password or database, as opposed to
/// a server that did not answer: `config check` reports it as a problem.
#[derive(Debug)]
pub struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the server refused the connection")
    }
}

impl Database {
    /// Parses a URL (`postgres://…`) or a libpq key/value string and applies the timeouts
    /// from `[database]`. Errors never repeat the URL, which may hold a password.
    pub fn parse(url: &str, settings: &DatabaseConfig) -> anyhow::Result<Database> {
        let (rest, ssl_mode, root_cert) = split_tls_params(url)?;
        let mut config = match tokio_postgres::Config::from_str(&rest) {
            Ok(c) => c,
            Err(e) => {
                let mut msg = e.to_string();
                if let Some(src) = std::error::Error::source(&e) {
                    msg = format!("{msg}: {src}");
                }
                return usage(format!(
                    "the database url is not valid ({msg}); expected postgres://user:password@host:port/dbname?sslmode=require"
                ));
            }
        };
        if config.get_hosts().is_empty()
            && config.get_user().is_none()
            && config.get_dbname().is_none()
        {
            // `postgres://${DB_URL_PART}` with the variable empty: connecting to a default
            // server would back up (or migrate) a database nobody named.
            return usage(
                "the database url names no host, user or database (an empty variable expanded into it?); write it whole: postgres://user:password@host:port/dbname",
            );
        }
        config.ssl_mode(match ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        if config.get_hosts().is_empty() {
            config.host("127.0.0.1");
        }
        if config.get_user().is_none() {
            config.user(std::env::var("USER").as_deref().unwrap_or("postgres"));
        }
        if config.get_dbname().is_none() {
            let user = config.get_user().unwrap_or("postgres").to_string();
            config.dbname(user);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(settings.connect_timeout_secs.max(1)));
        }
        if config.get_application_name().is_none() {
            config.application_name("backstop");
        }
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        config.keepalives_interval(Duration::from_secs(10));
        config.keepalives_retries(3);
        Ok(Database {
            config,
            ssl_mode,
            root_cert,
        })
    }

    /// The same server, another database (scratch databases, the maintenance database).
    pub fn with_dbname(&self, name: &str) -> Database {
        let mut other = self.clone();
        other.config.dbname(name);
        other
    }

    pub fn dbname(&self) -> &str {
        self.config.get_dbname().unwrap_or("postgres")
    }

    pub fn ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    /// `user@host:port/dbname`, for messages. Never includes the password.
    pub fn describe(&self) -> String {
        format!(
            "{}@{}/{}",
            self.config.get_user().unwrap_or("?"),
            self.endpoints(),
            self.dbname()
        )
    }

    fn endpoints(&self) -> String {
        let ports = self.config.get_ports();
        self.config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                match h {
                    Host::Tcp(name) => format!("{name}:{port}"),
                    Host::Unix(path) => format!("{}:{port}", path.display()),
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Opens a connection and spawns its driver task. A connection the server refused (the
    /// user, password or database) carries [`Refused`].
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(self.tls_config()?);
        let (client, connection) = self.config.connect(tls).await.map_err(|e| {
            let from_server = e.as_db_error().is_some();
            // Class 28 (the user or password) and 3D000 (no such database): the server
            // answered and said no, which only a changed url or server can cure.
            let refused = e.as_db_error().is_some_and(|d| {
                let code = d.code().code();
                code.starts_with("28") || code == "3D000"
            });
            let message = PgError::from(e).message;
            let hint = if message.contains("channel binding") {
                "channel_binding=require needs SCRAM password authentication over TLS, which this server did not offer; connect over TLS with a SCRAM password, or use channel_binding=prefer"
            } else if from_server {
                "check the user name, password and database name in the database url"
            } else {
                "check that the server is running and reachable there, and the host, port and sslmode in the database url"
            };
            let e = err(
                Kind::DatabaseUnavailable,
                format!(
                    "could not connect to PostgreSQL at {} (user {}, database {}): {}; {hint}",
                    self.endpoints(),
                    self.config.get_user().unwrap_or("?"),
                    self.dbname(),
                    message
                ),
            );
            if refused {
                e.context(Refused)
            } else {
                e
            }
        })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("database connection ended: {}", PgError::from(e));
            }
        });
        Ok(client)
    }

    /// Asks the server to cancel what `token`'s session is running (a COPY whose reader has
    /// failed, so the server stops sending the rest of the table). Best effort: a failure is
    /// only logged, since the session's end cancels it too.
    pub async fn cancel(&self, token: tokio_postgres::CancelToken) {
        let outcome = match self.tls_config() {
            Ok(tls) => token
                .cancel_query(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
                .await
                .map_err(|e| anyhow::anyhow!("{}", PgError::from(e))),
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            tracing::debug!("cancelling a statement on {}: {e:#}", self.describe());
        }
    }

    /// Runs a statement (a lock wait, say) until it ends or `ctx` is cancelled. On
    /// cancellation the server is asked to cancel the statement, and it is given a moment to
    /// end, so the session can roll back at once and drop the locks its transaction holds
    /// instead of waiting out `lock_timeout` with them.
    pub async fn unless_cancelled<T>(
        &self,
        ctx: &crate::context::OpContext,
        token: tokio_postgres::CancelToken,
        work: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        tokio::pin!(work);
        tokio::select! {
            r = &mut work => r,
            _ = ctx.cancelled() => {
                self.cancel(token).await;
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), work).await;
                Err(ctx.interrupted())
            }
        }
    }

    fn tls_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("setting up TLS")?;
        // libpq: with sslmode=require and a root certificate, verify like verify-ca.
        let verify = match (self.ssl_mode, &self.root_cert) {
            (SslMode::VerifyFull, _) => Some(true),
            (SslMode::VerifyCa, _) => Some(false),
            (SslMode::Require, Some(RootCert::File(_))) => Some(false),
            _ => None,
        };
        let config = match verify {
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
                .with_no_client_auth(),
            Some(check_name) => {
                let roots = Arc::new(self.root_store()?);
                let webpki =
                    rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                        .build()
                        .context("building the TLS certificate verifier")?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainVerifier {
                        inner: webpki,
                        check_name,
                    }))
                    .with_no_client_auth()
            }
        };
        Ok(config)
    }

    fn root_store(&self) -> anyhow::Result<RootCertStore> {
        let mut store = RootCertStore::empty();
        match self.root_cert.as_ref().unwrap_or(&RootCert::System) {
            RootCert::File(path) => {
                for cert in CertificateDer::pem_file_iter(path)
                    .with_context(|| format!("reading sslrootcert {}", path.display()))?
                {
                    let cert =
                        cert.with_context(|| format!("parsing sslrootcert {}", path.display()))?;
                    store.add(cert).with_context(|| {
                        format!("adding a certificate from sslrootcert {}", path.display())
                    })?;
                }
            }
            RootCert::System => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    let _ = store.add(cert);
                }
            }
        }
        if store.is_empty() {
            return usage(
                "no trusted root certificate found for sslmode=verify-ca/verify-full; set sslrootcert=FILE in the database url",
            );
        }
        Ok(store)
    }
}

/// libpq's `sslmode=require`: encrypted, certificate not checked; handshake signatures are.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-full` (chain and name) or `verify-ca` (chain only).
#[derive(Debug)]
struct ChainVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    check_name: bool,
}

impl ServerCertVerifier for ChainVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Database {
        Database::parse(url, &DatabaseConfig::default()).unwrap()
    }

    #[test]
    fn bad_sslmode_is_a_usage_error_without_the_password() {
        let err = Database::parse(
            "postgres://u:secretpw@h/db?sslmode=sometimes",
            &DatabaseConfig::default(),
        )
        .unwrap_err();
        assert_eq!(crate::error::kind_of(&err), Kind::Usage);
        assert!(!format!("{err:#}").contains("secretpw"));
        assert!(format!("{err:#}").contains("sometimes"));
    }

    #[test]
    fn a_url_that_names_nothing_is_refused() {
        for url in [
            "postgres://",
            "postgresql://",
            "postgres://?sslmode=require",
        ] {
            let err = Database::parse(url, &DatabaseConfig::default()).unwrap_err();
            assert_eq!(crate::error::kind_of(&err), Kind::Usage, "{url}");
            assert!(
                format!("{err:#}").contains("names no host, user or database"),
                "{url}"
            );
        }
        // A database alone is enough: the host is the local one.
        assert_eq!(parse("postgres:///app").dbname(), "app");
    }

    #[test]
    fn describe_never_shows_the_password() {
        let db = parse("postgres://app:secretpw@db.example.com:6543/appdb?sslmode=require");
        assert_eq!(db.describe(), "app@db.example.com:6543/appdb");
        assert!(!format!("{db:?}").contains("secretpw"));
        assert_eq!(db.with_dbname("other").dbname(), "other");
    }

    #[test]
    fn the_urls_sqlalchemy_projects_keep() {
        for (url, want) in [
            (
                "postgresql+asyncpg://u:pw@h/db?ssl=require",
                SslMode::Require,
            ),
            ("postgresql+asyncpg://u:pw@h/db?ssl=true", SslMode::Require),
            ("postgresql+asyncpg://u:pw@h/db?ssl=false", SslMode::Disable),
            (
                "postgresql+asyncpg://u:pw@h/db?ssl=disable",
                SslMode::Disable,
            ),
            ("postgresql+asyncpg://u:pw@h/db?ssl=prefer", SslMode::Prefer),
            (
                "postgresql+asyncpg://u:pw@h/db?ssl=verify-ca",
                SslMode::VerifyCa,
            ),
            (
                "postgresql+asyncpg://u:pw@h/db?ssl=verify-full",
                SslMode::VerifyFull,
            ),
            (
                "postgresql+psycopg://u:pw@h/db?sslmode=require",
                SslMode::Require,
            ),
            ("postgresql+psycopg2://u:pw@h/db", SslMode::Prefer),
            ("postgresql+pg8000://u:pw@h/db?ssl=true", SslMode::Require),
        ] {
            let db = parse(url);
            assert_eq!(db.ssl_mode(), want, "{url}");
            assert_eq!(db.describe(), "u@h:5432/db", "{url}");
        }
        // Neon's console string: channel binding and the endpoint option reach the server.
        let db = parse(
            "postgresql://u:pw@ep-cool-1.eu-central-1.aws.neon.tech/neondb?sslmode=require&channel_binding=require&options=endpoint%3Dep-cool-1",
        );
        assert_eq!(db.ssl_mode(), SslMode::Require);
        assert_eq!(
            db.config.get_channel_binding(),
            tokio_postgres::config::ChannelBinding::Require
        );
        assert_eq!(db.config.get_options(), Some("endpoint=ep-cool-1"));
        // What only the Python driver reads is dropped; what nobody reads is named.
        let db = parse("postgresql+asyncpg://u:pw@h/db?prepared_statement_cache_size=0");
        assert_eq!(db.dbname(), "db");
        for (url, named) in [
            ("postgresql+asyncpg://u:secretpw@h/db?sslfoo=1", "`sslfoo`"),
            ("postgresql+mysqldb://u:secretpw@h/db", "mysqldb"),
            (
                "postgresql+asyncpg://u:secretpw@h/db?ssl=maybe",
                "ssl=maybe",
            ),
        ] {
            let e = Database::parse(url, &DatabaseConfig::default()).unwrap_err();
            let text = format!("{e:#}");
            assert_eq!(crate::error::kind_of(&e), Kind::Usage, "{url}");
            assert!(text.contains(named), "{text}");
            assert!(!text.contains("secretpw"), "{text}");
        }
        assert_eq!(sqlalchemy_url("postgres://u@h/db"), "postgresql://u@h/db");
    }
}
