//! Error classes that decide the process exit code.
//!
//! Everything inside backstop returns `anyhow::Error` with context about what was being
//! done. The few failures that must end in a specific exit code (a bad config, a failed
//! verification, a refusal to destroy data) carry one of these values somewhere in their
//! chain; the binary looks for it and maps it to the code that DESIGN.md promises.

use std::fmt;

/// A failure whose kind scripts must be able to tell apart by exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line or the configuration is wrong; the user must change them (exit 2).
    #[error("{0}")]
    Usage(String),
    /// A check ran and found a difference: a schema diff, a checksum, a procedure criterion (exit 3).
    #[error("{0}")]
    Verification(String),
    /// backstop refused to go on because going on could lose data (exit 4).
    #[error("{0}")]
    Refused(String),
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
    /// Classifies an error by the first backstop [`Error`] found in its chain.
    pub fn of(err: &anyhow::Error) -> ExitCode {
        for cause in err.chain() {
            if let Some(e) = cause.downcast_ref::<Error>() {
                return match e {
                    Error::Usage(_) => ExitCode::Usage,
                    Error::Verification(_) => ExitCode::Verification,
                    Error::Refused(_) => ExitCode::Refused,
                };
            }
        }
        ExitCode::Failure
    }
}

impl fmt::Display for ExitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", *self as i32)
    }
}

/// Shorthand for `Err(Error::Usage(..).into())`.
pub fn usage<T>(msg: impl Into<String>) -> anyhow::Result<T> {
    Err(Error::Usage(msg.into()).into())
}

/// Shorthand for `Err(Error::Refused(..).into())`.
pub fn refused<T>(msg: impl Into<String>) -> anyhow::Result<T> {
    Err(Error::Refused(msg.into()).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn exit_code_found_under_context() {
        let err = usage::<()>("bad key")
            .context("loading config")
            .unwrap_err();
        assert_eq!(ExitCode::of(&err), ExitCode::Usage);
        let err = refused::<()>("no").context("a").context("b").unwrap_err();
        assert_eq!(ExitCode::of(&err), ExitCode::Refused);
        let err = anyhow::anyhow!("io");
        assert_eq!(ExitCode::of(&err), ExitCode::Failure);
    }
}
