//! Error kinds: what a failure means to whoever started the operation.
//!
//! Everything inside backstop returns `anyhow::Error` with context about what was being
//! done. A failure whose meaning matters to the caller (a script reading the exit code, an
//! HTTP client of the daemon, a scheduler deciding whether to retry) carries an [`Error`]
//! with its [`Kind`] somewhere in its chain. [`kind_of`] finds it; [`Kind::exit_code`] and
//! [`Kind::http_status`] are the only two mappings, so the command line and the daemon
//! never disagree about what a failure was.

use std::fmt;

/// What kind of failure happened, as a caller needs to tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The command line, the request or the configuration is wrong; the user must change it.
    Usage,
    /// A check ran and found a difference: a schema diff, a checksum, a criterion.
    Verification,
    /// backstop refused to go on because going on could lose data.
    Refused,
    /// Another run holds the migration lock (or a table lock) for longer than allowed.
    LockHeld,
    /// PostgreSQL could not be reached or the connection broke.
    DatabaseUnavailable,
    /// The backup store could not be reached or refused a request.
    StoreUnavailable,
    /// The operation was cancelled (a signal, a daemon shutting down) and stopped cleanly.
    Interrupted,
    /// Anything else: a bug, or a failure with no more specific meaning.
    Internal,
}

impl Kind {
    /// The kind's name as JSON, logs and the `reason` label of metrics spell it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Usage => "usage",
            Kind::Verification => "verification",
            Kind::Refused => "refused",
            Kind::LockHeld => "lock_held",
            Kind::DatabaseUnavailable => "database_unavailable",
            Kind::StoreUnavailable => "store_unavailable",
            Kind::Interrupted => "interrupted",
            Kind::Internal => "internal",
        }
    }

    /// The process exit code DESIGN.md documents: 2 usage, 3 verification, 4 refused, 1 else.
    pub fn exit_code(self) -> ExitCode {
        match self {
            Kind::Usage => ExitCode::Usage,
            Kind::Verification => ExitCode::Verification,
            Kind::Refused => ExitCode::Refused,
            Kind::LockHeld
            | Kind::DatabaseUnavailable
            | Kind::StoreUnavailable
            | Kind::Interrupted
            | Kind::Internal => ExitCode::Failure,
        }
    }

    /// The HTTP status the daemon answers with when an operation fails this way.
    pub fn http_status(self) -> u16 {
        match self {
            Kind::Usage => 400,
            Kind::Refused => 409,
            Kind::Verification => 422,
            Kind::LockHeld => 423,
            Kind::Internal => 500,
            Kind::DatabaseUnavailable | Kind::StoreUnavailable | Kind::Interrupted => 503,
        }
    }

    /// Whether the same operation may succeed when tried again later, unchanged.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Kind::LockHeld | Kind::DatabaseUnavailable | Kind::StoreUnavailable | Kind::Interrupted
        )
    }
}

/// A failure with a kind, carried in an `anyhow` chain (as its root or as context).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: Kind,
    pub message: String,
}

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// The kind of the outermost [`Error`] in `err`'s chain; [`Kind::Internal`] when none.
pub fn kind_of(err: &anyhow::Error) -> Kind {
    // `downcast_ref` sees kinds attached as context too; the chain walk finds kinds that
    // other error types carry as their source.
    if let Some(e) = err.downcast_ref::<Error>() {
        return e.kind;
    }
    err.chain()
        .find_map(|c| c.downcast_ref::<Error>())
        .map_or(Kind::Internal, |e| e.kind)
}

/// Adds a kind to a result's error without losing the chain under it.
pub trait WithKind<T> {
    fn kind(self, kind: Kind, message: impl FnOnce() -> String) -> anyhow::Result<T>;
}

impl<T> WithKind<T> for anyhow::Result<T> {
    fn kind(self, kind: Kind, message: impl FnOnce() -> String) -> anyhow::Result<T> {
        self.map_err(|e| e.context(Error::new(kind, message())))
    }
}

/// Process exit codes, as documented in DESIGN.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Success = 0,
    Failure = 1,
    Usage = 2,
    Verification = 3,
    Refused = 4,
}

impl ExitCode {
    /// The exit code for a failed command.
    pub fn of(err: &anyhow::Error) -> ExitCode {
        kind_of(err).exit_code()
    }
}

impl fmt::Display for ExitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", *self as i32)
    }
}

/// An error of `kind` with `message`, as an `anyhow::Error`.
pub fn err(kind: Kind, message: impl Into<String>) -> anyhow::Error {
    Error::new(kind, message).into()
}

/// Shorthand for `Err(err(Kind::Usage, ..))`.
pub fn usage<T>(msg: impl Into<String>) -> anyhow::Result<T> {
    Err(err(Kind::Usage, msg))
}

/// Shorthand for `Err(err(Kind::Refused, ..))`.
pub fn refused<T>(msg: impl Into<String>) -> anyhow::Result<T> {
    Err(err(Kind::Refused, msg))
}

/// Shorthand for `Err(err(Kind::Verification, ..))`.
pub fn verification<T>(msg: impl Into<String>) -> anyhow::Result<T> {
    Err(err(Kind::Verification, msg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn kinds_are_found_as_root_and_as_context() {
        let cases: Vec<(anyhow::Error, Kind)> = vec![
            (
                usage::<()>("bad key")
                    .context("loading config")
                    .unwrap_err(),
                Kind::Usage,
            ),
            (
                refused::<()>("no").context("a").context("b").unwrap_err(),
                Kind::Refused,
            ),
            (anyhow::anyhow!("io"), Kind::Internal),
            (
                Err::<(), _>(anyhow::anyhow!("timed out"))
                    .kind(Kind::StoreUnavailable, || "store".into())
                    .context("backing up")
                    .unwrap_err(),
                Kind::StoreUnavailable,
            ),
            // The outermost kind wins: a refused downgrade whose backup met a dead store.
            (
                Err::<(), _>(err(Kind::StoreUnavailable, "dead"))
                    .kind(Kind::Refused, || "downgrade refused".into())
                    .unwrap_err(),
                Kind::Refused,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(kind_of(&e), want, "{e:#}");
        }
    }

    #[test]
    fn one_mapping_to_exit_codes_and_one_to_http() {
        let table = [
            (Kind::Usage, 2, 400, false),
            (Kind::Verification, 3, 422, false),
            (Kind::Refused, 4, 409, false),
            (Kind::LockHeld, 1, 423, true),
            (Kind::DatabaseUnavailable, 1, 503, true),
            (Kind::StoreUnavailable, 1, 503, true),
            (Kind::Interrupted, 1, 503, true),
            (Kind::Internal, 1, 500, false),
        ];
        for (kind, exit, http, transient) in table {
            assert_eq!(kind.exit_code() as i32, exit, "{kind:?}");
            assert_eq!(kind.http_status(), http, "{kind:?}");
            assert_eq!(kind.is_transient(), transient, "{kind:?}");
            // The name in metrics and logs is the name in JSON.
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.name(), "{kind:?}");
        }
    }
}
