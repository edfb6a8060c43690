//! Connection strings as projects keep them: libpq URLs and key/value strings, SQLAlchemy's
//! `postgresql+driver://` URLs, asyncpg's `ssl=`, Neon's console strings. The TLS options
//! are taken out for [`super::Database`]'s own TLS; the rest goes to tokio-postgres, and an
//! option nobody reads is an error that names it.

use std::path::PathBuf;

use super::{RootCert, SslMode};
use crate::error::usage;

/// Options tokio-postgres reads itself, passed on as they are.
const PASSED_ON: &[&str] = &[
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "sslnegotiation",
    "host",
    "hostaddr",
    "port",
    "connect_timeout",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
];

/// Query options of SQLAlchemy's dialects that concern the Python driver, not the server.
const DRIVER_ONLY: &[&str] = &["prepared_statement_cache_size", "async_fallback"];

/// SQLAlchemy's drivers for PostgreSQL, whose URLs (`postgresql+asyncpg://`) name the same
/// server as `postgresql://`.
const SQLALCHEMY_DRIVERS: &[&str] = &["asyncpg", "psycopg", "psycopg2", "psycopg2cffi", "pg8000"];

/// The URL with a SQLAlchemy scheme (`postgresql+asyncpg://`) read as `postgresql://`.
fn without_driver(url: &str) -> anyhow::Result<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(url.to_string());
    };
    let Some((base, driver)) = scheme.split_once('+') else {
        return Ok(url.to_string());
    };
    if !matches!(base, "postgresql" | "postgres") {
        return usage(format!(
            "the database url's scheme {scheme}:// is not PostgreSQL; use postgres:// or postgresql://"
        ));
    }
    if !SQLALCHEMY_DRIVERS.contains(&driver) {
        return usage(format!(
            "the database url names the driver {driver} ({scheme}://), which backstop does not know; use postgresql:// or one of {}",
            SQLALCHEMY_DRIVERS
                .iter()
                .map(|d| format!("postgresql+{d}://"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(format!("postgresql://{rest}"))
}

/// The same database as a SQLAlchemy URL (`postgres://` is not one), for Alembic's env.py.
pub fn sqlalchemy_url(url: &str) -> String {
    match url.strip_prefix("postgres://") {
        Some(rest) => format!("postgresql://{rest}"),
        None => url.to_string(),
    }
}

/// Removes `sslmode`, asyncpg's `ssl` and `sslrootcert` from a URL or key/value string,
/// reading SQLAlchemy URLs as the PostgreSQL URL they name; an option nobody reads is an
/// error that names it.
pub(super) fn split_tls_params(url: &str) -> anyhow::Result<(String, SslMode, Option<RootCert>)> {
    let mut mode = SslMode::Prefer;
    let mut root = None;
    let mut apply = |key: &str, value: &str| -> anyhow::Result<bool> {
        match key {
            "sslmode" => {
                mode = match value {
                    "disable" | "allow" => SslMode::Disable,
                    "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return usage(format!(
                            "sslmode={other} in the database url is not one of disable, prefer, require, verify-ca, verify-full"
                        ))
                    }
                };
                Ok(true)
            }
            // asyncpg's spelling, in the URLs SQLAlchemy projects keep in .env.
            "ssl" => {
                mode = match value.to_ascii_lowercase().as_str() {
                    "disable" | "allow" | "false" => SslMode::Disable,
                    "prefer" => SslMode::Prefer,
                    "require" | "true" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return usage(format!(
                            "ssl={other} in the database url is not one of disable, allow, prefer, require, verify-ca, verify-full, true, false"
                        ))
                    }
                };
                Ok(true)
            }
            "sslrootcert" => {
                root = Some(if value == "system" {
                    RootCert::System
                } else {
                    RootCert::File(PathBuf::from(value))
                });
                Ok(true)
            }
            k if DRIVER_ONLY.contains(&k) => Ok(true),
            k if PASSED_ON.contains(&k) => Ok(false),
            other => usage(format!(
                "the database url has the option `{other}`, which backstop does not know; remove it, or use one of sslmode, ssl, sslrootcert, {}",
                PASSED_ON.join(", ")
            )),
        }
    };
    let url = without_driver(url)?;
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_string(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if !apply(&percent_decode(k), &percent_decode(v))? {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for token in url.split_whitespace() {
            let (k, v) = token.split_once('=').unwrap_or((token, ""));
            if !apply(k.trim(), v.trim_matches('\''))? {
                kept.push(token);
            }
        }
        kept.join(" ")
    };
    Ok((rest, mode, root))
}

pub(super) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_params_are_taken_out_of_urls() {
        let (rest, mode, root) = split_tls_params(
            "postgres://u:p@h:5/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@h:5/db?application_name=x");
        assert_eq!(mode, SslMode::VerifyFull);
        assert_eq!(root, Some(RootCert::File("/tmp/ca.pem".into())));
        let (rest, mode, _) = split_tls_params("host=h sslmode=require dbname=d").unwrap();
        assert_eq!(rest, "host=h dbname=d");
        assert_eq!(mode, SslMode::Require);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("%2Fa%20b"), "/a b");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
