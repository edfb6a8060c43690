//! Integration tests: the real binary against a real PostgreSQL. Each test makes its own
//! database (see `common::TestDb`), so they run in parallel.

mod alembic;
mod alembic_project;
mod backup;
mod bounded;
mod cluster;
mod common;
mod config;
mod downgrade;
mod history;
mod layouts;
mod migrate;
mod ops;
mod rollback_real;
mod rollback_test;
mod schema;
mod sequences;
mod serve;
mod shapes;
mod stall;
mod tls;
mod tool_tables;
mod versions;
