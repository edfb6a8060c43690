//! Schema migrations: up and down scripts in the layout a team already has (backstop's,
//! diesel's, golang-migrate's and sqlx's, dbmate's), applied in order, one transaction per
//! step together with its row in `backstop_migrations`.
//!
//! [`layout`] tells which layout a folder follows; [`source`] reads and validates the files; [`target`] parses where to go; [`status`]
//! compares the files with what the database recorded; [`plan`] works out the steps (all
//! three pure); [`step`] runs one step with its bookkeeping.

pub mod alembic;
pub mod layout;
pub mod lexer;
pub mod plan;
pub mod reapply;
pub mod source;
pub mod status;
pub mod step;
pub mod target;
pub mod tool;

pub use plan::{plan, Direction, Plan, PlannedStep};
pub use source::{AlembicProject, LoadOptions, Migration, MigrationSet};
pub use status::{Entry, EntryState, Status};
pub use step::{StepReport, StepRunner};
pub use target::{DownTarget, Target, UpTarget};
pub use tool::{Tool, ToolChoice};
