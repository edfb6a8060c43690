//! PostgreSQL errors as one readable line that still answers questions (the SQLSTATE, the
//! position in the statement), and `.pg(|| "what was being done")` to add that context.

use std::fmt;

use tokio_postgres::error::SqlState;

/// A PostgreSQL error flattened into one readable line, keeping the SQLSTATE so callers
/// can still ask what happened (a lock timeout, a cancelled statement).
#[derive(Debug, Clone)]
pub struct PgError {
    pub message: String,
    pub code: Option<SqlState>,
    /// 1-based character offset into the statement, when the server reported one.
    pub position: Option<u32>,
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> PgError {
        if let Some(db) = e.as_db_error() {
            let mut message = db.message().to_string();
            if let Some(detail) = db.detail() {
                message.push_str(&format!(" (detail: {detail})"));
            }
            if let Some(hint) = db.hint() {
                message.push_str(&format!(" (hint: {hint})"));
            }
            // For COPY this names the line and column of the offending row.
            if let Some(place) = db.where_() {
                message.push_str(&format!(" (at: {place})"));
            }
            let position = match db.position() {
                Some(tokio_postgres::error::ErrorPosition::Original(p)) => Some(*p),
                _ => None,
            };
            return PgError {
                message,
                code: Some(db.code().clone()),
                position,
            };
        }
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        PgError {
            message,
            code: e.code().cloned(),
            position: None,
        }
    }
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PgError {}

impl PgError {
    /// The line of `sql` the server's error position points at.
    pub fn line_in(&self, sql: &str) -> Option<usize> {
        let pos = self.position? as usize;
        let before: String = sql.chars().take(pos.saturating_sub(1)).collect();
        Some(before.matches('\n').count() + 1)
    }
}

/// `.pg(|| "what was being done")` on tokio-postgres results.
pub trait PgContext<T> {
    fn pg<C: fmt::Display + Send + Sync + 'static>(
        self,
        what: impl FnOnce() -> C,
    ) -> anyhow::Result<T>;
}

impl<T> PgContext<T> for Result<T, tokio_postgres::Error> {
    fn pg<C: fmt::Display + Send + Sync + 'static>(
        self,
        what: impl FnOnce() -> C,
    ) -> anyhow::Result<T> {
        self.map_err(|e| anyhow::Error::new(PgError::from(e)).context(what()))
    }
}
