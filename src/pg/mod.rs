//! PostgreSQL, as backstop uses it: connections (TLS with libpq's `sslmode` semantics),
//! readable errors, quoting, session settings, the catalog queries that decide which
//! relations count, and the advisory lock that serialises schema changes.

pub mod catalog;
mod connect;
mod error;
pub mod lock;
pub mod session;
mod sql;

pub use connect::{sqlalchemy_url, Database, Refused, SslMode};
pub use error::{render, PgContext, PgError};
pub use sql::{qualified, quote_ident, quote_literal};
