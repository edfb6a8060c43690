//! PostgreSQL errors as one readable line that still answers questions (the SQLSTATE, the
//! position in the statement), and `.pg(|| "what was being done")` to add that context.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_postgres::error::SqlState;

/// Whether error messages may show row values (`-v`). Off by default: a duplicate key's
/// detail or a COPY line's value is data, and data stays out of logs and JSON output.
static SHOW_ROW_VALUES: AtomicBool = AtomicBool::new(false);

/// Lets messages carry the row values PostgreSQL puts in them (for `-v`).
pub fn show_row_values(on: bool) {
    SHOW_ROW_VALUES.store(on, Ordering::Relaxed);
}

/// Whether messages may carry row values (`-v`).
pub fn row_values_shown() -> bool {
    SHOW_ROW_VALUES.load(Ordering::Relaxed)
}

/// A PostgreSQL error flattened into one readable line, keeping the SQLSTATE so callers
/// can still ask what happened (a lock timeout, a cancelled statement).
#[derive(Debug, Clone)]
pub struct PgError {
    pub message: String,
    pub code: Option<SqlState>,
    /// 1-based character offset into the statement, when the server reported one.
    pub position: Option<u32>,
}

/// Data errors (class 22) and constraint violations (class 23) quote the values at fault.
fn names_values(code: &SqlState) -> bool {
    let c = code.code();
    c.starts_with("22") || c.starts_with("23")
}

/// `COPY t, line 2, column c: "value"` → `COPY t, line 2, column c`; `invalid input syntax
/// for type date: "x"` → `invalid input syntax for type date`.
fn without_value(text: &str) -> &str {
    match text.find(": \"") {
        Some(i) => &text[..i],
        None => text,
    }
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> PgError {
        PgError::build(e, SHOW_ROW_VALUES.load(Ordering::Relaxed))
    }
}

impl PgError {
    /// The error with the row values PostgreSQL names, whatever `-v` says: only for rows
    /// backstop made up itself (rollback-test's generated data on its scratch database).
    pub fn with_values(e: tokio_postgres::Error) -> PgError {
        PgError::build(e, true)
    }

    fn build(e: tokio_postgres::Error, show: bool) -> PgError {
        if let Some(db) = e.as_db_error() {
            let hides = !show && names_values(db.code());
            let mut message = if hides {
                without_value(db.message()).to_string()
            } else {
                db.message().to_string()
            };
            match db.detail() {
                Some(_) if hides => message.push_str(" (its detail names row values: -v shows it)"),
                Some(detail) => message.push_str(&format!(" (detail: {detail})")),
                None => {}
            }
            if let Some(hint) = db.hint() {
                message.push_str(&format!(" (hint: {hint})"));
            }
            // For COPY this names the line and column of the offending row.
            if let Some(place) = db.where_() {
                let place = if show { place } else { without_value(place) };
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
        self.map_err(|e| {
            let lost = e.is_closed();
            let err = anyhow::Error::new(PgError::from(e)).context(what());
            if lost {
                err.context(crate::error::Error::new(
                    crate::error::Kind::DatabaseUnavailable,
                    "the connection to PostgreSQL was lost",
                ))
            } else {
                err
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_cut_from_messages_and_copy_lines() {
        let cases = [
            (
                r#"COPY tasks, line 2, column due_on: "2026-13-45""#,
                "COPY tasks, line 2, column due_on",
            ),
            (
                r#"invalid input syntax for type date: "x""#,
                "invalid input syntax for type date",
            ),
            ("COPY tasks, line 2", "COPY tasks, line 2"),
        ];
        for (text, want) in cases {
            assert_eq!(without_value(text), want);
        }
        assert!(names_values(&SqlState::UNIQUE_VIOLATION));
        assert!(names_values(&SqlState::INVALID_DATETIME_FORMAT));
        assert!(!names_values(&SqlState::LOCK_NOT_AVAILABLE));
    }
}
