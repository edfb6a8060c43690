//! Schema migrations: folders of `up.sql`/`down.sql`, applied in order, one transaction per
//! step together with its row in `backstop_migrations`, serialised by an advisory lock.
//!
//! [`source`] reads and validates the files; [`engine`] compares them with the database,
//! plans a move to a target revision and executes the plan. `--dry-run` prints the same
//! plan the execution would follow.

pub mod engine;
pub mod protect;
pub mod source;

pub use engine::{
    DownTarget, Engine, MigrateReport, MigrateRequest, Plan, StampReport, Status, Target, UpTarget,
};
pub use source::{Migration, MigrationSet};
