//! PostgreSQL errors as one readable line that still answers questions (the SQLSTATE, the
//! position in the statement), and `.pg(|| "what was being done")` to add that context.

use std::fmt;

use tokio_postgres::error::SqlState;

/// A PostgreSQL error flattened into one readable line, keeping the SQLSTATE so callers
/// can still ask what happened (a lock timeout, a cancelled statement).
///
/// Its `Display` never shows row values: a duplicate key's detail or a COPY line's value is
/// data, and data stays out of logs and JSON output. The front end that was asked for them
/// (`-v`) renders the error with [`render`], which uses the full text kept here.
#[derive(Debug, Clone)]
pub struct PgError {
    /// The message without the row values PostgreSQL named.
    pub message: String,
    /// The message with them, when it differs.
    with_values: Option<String>,
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
        PgError::build(e, false)
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
            let text = |hides: bool| {
                let mut message = if hides {
                    without_value(db.message()).to_string()
                } else {
                    db.message().to_string()
                };
                match db.detail() {
                    Some(_) if hides => {
                        message.push_str(" (its detail names row values: -v shows it)")
                    }
                    Some(detail) => message.push_str(&format!(" (detail: {detail})")),
                    None => {}
                }
                if let Some(hint) = db.hint() {
                    message.push_str(&format!(" (hint: {hint})"));
                }
                // For COPY this names the line and column of the offending row.
                if let Some(place) = db.where_() {
                    let place = if hides { without_value(place) } else { place };
                    message.push_str(&format!(" (at: {place})"));
                }
                message
            };
            let hides = !show && names_values(db.code());
            let position = match db.position() {
                Some(tokio_postgres::error::ErrorPosition::Original(p)) => Some(*p),
                _ => None,
            };
            return PgError {
                message: text(hides),
                with_values: hides.then(|| text(false)),
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
            with_values: None,
            code: e.code().cloned(),
            position: None,
        }
    }

    /// The message with the row values PostgreSQL named (for a front end asked for them).
    pub fn message_with_values(&self) -> &str {
        self.with_values.as_deref().unwrap_or(&self.message)
    }
}

/// `err` as `{:#}` prints it (its chain, joined by `: `), with the row values PostgreSQL
/// named in its errors when `values` is set (`-v`).
pub fn render(err: &anyhow::Error, values: bool) -> String {
    if !values {
        return format!("{err:#}");
    }
    err.chain()
        .map(|c| match c.downcast_ref::<PgError>() {
            Some(pg) => pg.message_with_values().to_string(),
            None => c.to_string(),
        })
        .collect::<Vec<_>>()
        .join(": ")
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
