//! Running one planned script with its bookkeeping: in a transaction of its own, inside a
//! caller's transaction (protected downgrades, `upgrade --restore`), or outside any
//! transaction for scripts marked `backstop:no-transaction`.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient};

use super::lexer::split;
use super::plan::{Direction, PlannedStep};
use crate::error::{err, Kind};
use crate::ledger::tool::ToolTable;
use crate::ledger::Ledger;
use crate::migrate::MigrationSet;
use crate::pg::session::TransactionGuard;
use crate::pg::{PgContext, PgError};

/// What one executed step did.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub revision: String,
    pub direction: Direction,
    pub duration_ms: u64,
}

/// Runs steps against one database and records them in its ledger.
pub struct StepRunner<'a> {
    pub ledger: &'a Ledger,
    /// For the message when a step waited too long for a lock.
    pub lock_timeout_secs: u64,
    /// The steps are an Alembic project's: each must move `alembic_version` as it moves
    /// the ledger, or `alembic current` and `backstop current` would disagree.
    pub alembic: bool,
    /// The migration tool's own table, recorded in the same transaction as the ledger.
    pub tool: Option<ToolTable>,
    /// The migrations the steps come from (the tool's table records versions of them).
    pub set: &'a MigrationSet,
}

impl StepRunner<'_> {
    /// A failed script as a message naming the file, the revision and (when the server
    /// says) the line; a lock wait that timed out is [`Kind::LockHeld`].
    pub fn error(&self, e: tokio_postgres::Error, file: &str, step: &PlannedStep) -> anyhow::Error {
        let pg = PgError::from(e);
        let place = pg
            .line_in(&step.sql)
            .map(|l| format!(" at line {l}"))
            .unwrap_or_default();
        if pg.code.as_ref() == Some(&SqlState::ACTIVE_SQL_TRANSACTION) {
            anyhow::Error::new(pg).context(format!(
                "{file} of {} failed{place} (it must run outside a transaction: {})",
                step.revision, step.script.no_transaction_hint
            ))
        } else if pg.code.as_ref() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
            err(
                Kind::LockHeld,
                format!(
                    "{file} of {} waited more than {}s for a lock held by another session ({}); retry when the table is idle or raise [database] lock_timeout_secs",
                    step.revision, self.lock_timeout_secs, pg.message
                ),
            )
        } else {
            anyhow::Error::new(pg).context(format!("{file} of {} failed{place}", step.revision))
        }
    }

    fn what(&self, step: &PlannedStep) -> String {
        format!("{} of {}", step.script.name, step.revision)
    }

    /// Records a step in the ledger, inside `tx`.
    pub async fn record(
        &self,
        tx: &impl GenericClient,
        direction: Direction,
        step: &PlannedStep,
        took: Duration,
    ) -> anyhow::Result<()> {
        if self.alembic {
            let holds = self.ledger.alembic_holds(tx, &step.revision).await?;
            if holds != (direction == Direction::Up) {
                anyhow::bail!(
                    "after {} of {}, alembic_version {} {}, so Alembic and backstop would disagree on the current revision; the step was not recorded (check alembic_version against `backstop history`)",
                    step.script.name,
                    step.revision,
                    if holds { "still holds" } else { "does not hold" },
                    step.revision
                );
            }
        }
        match direction {
            Direction::Up => {
                self.ledger
                    .record_applied(tx, &step.revision, &step.checksum, took)
                    .await?
            }
            Direction::Down => self.ledger.record_reverted(tx, &step.revision).await?,
        }
        if let Some(tool) = &self.tool {
            tool.record(tx, self.set, direction, &step.revision, took)
                .await?;
        }
        Ok(())
    }

    /// Runs a step and its bookkeeping inside the caller's transaction: the one way a
    /// transactional step runs, whoever owns the transaction (a step alone, a downgrade, an
    /// upgrade with restores). SQL that ends the transaction (a `COMMIT` in the script) is
    /// caught before anything else runs.
    pub async fn run_in(
        &self,
        tx: &impl GenericClient,
        direction: Direction,
        step: &PlannedStep,
    ) -> anyhow::Result<StepReport> {
        let started = Instant::now();
        tracing::info!(
            "{} {} ({})",
            verb(direction),
            step.revision,
            step.script.name
        );
        let guard = TransactionGuard::start(tx).await?;
        tx.batch_execute(&step.sql)
            .await
            .map_err(|e| self.error(e, &step.script.name, step))?;
        guard.check(tx, &self.what(step)).await?;
        self.record(tx, direction, step, started.elapsed()).await?;
        Ok(report(direction, step, started))
    }

    /// Runs a step in a transaction of its own (or, for a no-transaction script, outside
    /// any, with the bookkeeping in a transaction right after).
    pub async fn run(
        &self,
        client: &mut Client,
        direction: Direction,
        step: &PlannedStep,
    ) -> anyhow::Result<StepReport> {
        let file = step.script.name.as_str();
        if step.no_transaction {
            tracing::info!("{} {} ({file})", verb(direction), step.revision);
            let started = Instant::now();
            // One statement at a time: sent together, PostgreSQL would run them in one
            // implicit transaction, which CREATE INDEX CONCURRENTLY and VACUUM refuse.
            for statement in split(&step.sql) {
                client
                    .batch_execute(statement.text(&step.sql))
                    .await
                    .map_err(|e| {
                        self.error(e, file, step).context(format!(
                            "the statement at line {} failed outside a transaction (backstop:no-transaction), so the statements before it stay applied: check the schema by hand",
                            statement.line
                        ))
                    })?;
            }
            let tx = client
                .transaction()
                .await
                .pg(|| "starting the bookkeeping")?;
            self.record(&tx, direction, step, started.elapsed()).await?;
            tx.commit()
                .await
                .pg(|| format!("recording {}", step.revision))?;
            Ok(report(direction, step, started))
        } else {
            let tx = client
                .transaction()
                .await
                .pg(|| format!("starting {}", step.revision))?;
            let done = self
                .run_in(&tx, direction, step)
                .await
                .context("the step was rolled back")?;
            tx.commit()
                .await
                .pg(|| format!("committing {} ({file})", step.revision))?;
            Ok(done)
        }
    }
}

fn verb(direction: Direction) -> &'static str {
    match direction {
        Direction::Up => "applying",
        Direction::Down => "reverting",
    }
}

fn report(direction: Direction, step: &PlannedStep, started: Instant) -> StepReport {
    StepReport {
        revision: step.revision.clone(),
        direction,
        duration_ms: started.elapsed().as_millis() as u64,
    }
}
