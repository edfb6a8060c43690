//! The slots table: which instance runs each scheduled slot, how it ended, and whether the
//! instance running it is still alive (a heartbeat), so that no slot stays `running` for
//! ever when its instance dies.

use tokio_postgres::GenericClient;

use super::Ledger;
use crate::pg::catalog::SLOTS_TABLE;
use crate::pg::{qualified, PgContext};

/// A slot whose instance died while running it.
#[derive(Debug, Clone)]
pub struct LostSlot {
    pub slot: chrono::DateTime<chrono::Utc>,
    pub instance: String,
    /// What the slot's record now says.
    pub error: String,
}

impl Ledger {
    fn slots(&self) -> String {
        qualified(&self.schema, SLOTS_TABLE)
    }

    /// Creates the slots table if it is missing, and adds the heartbeat column to a table
    /// made before it had one. Called before every use of the table, so it takes no lock
    /// when there is nothing to do (an `ALTER TABLE` would take an exclusive one each time).
    pub async fn ensure_slots(&self, client: &impl GenericClient) -> anyhow::Result<()> {
        let current: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                 WHERE attrelid = pg_catalog.to_regclass($1) AND attname = 'heartbeat_at' AND NOT attisdropped)",
                &[&self.slots()],
            )
            .await
            .pg(|| format!("looking for {}", self.slots()))?
            .get(0);
        if current {
            return Ok(());
        }
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {0} (
                     schedule text NOT NULL,
                     slot timestamptz NOT NULL,
                     state text NOT NULL,
                     backup_id text,
                     instance text,
                     error text,
                     started_at timestamptz NOT NULL DEFAULT now(),
                     finished_at timestamptz,
                     heartbeat_at timestamptz,
                     PRIMARY KEY (schedule, slot)
                 );
                 ALTER TABLE {0} ADD COLUMN IF NOT EXISTS heartbeat_at timestamptz",
                self.slots()
            ))
            .await
            .pg(|| format!("creating {}", self.slots()))
    }

    /// Takes `slot` of `schedule` for this instance: true when nobody had it, so exactly one
    /// instance runs each slot, however many share the database.
    pub async fn claim_slot(
        &self,
        client: &impl GenericClient,
        schedule: &str,
        slot: chrono::DateTime<chrono::Utc>,
        instance: &str,
        state: SlotState,
    ) -> anyhow::Result<bool> {
        let n = client
            .execute(
                &format!(
                    "INSERT INTO {} (schedule, slot, state, instance, heartbeat_at) VALUES ($1, $2, $3, $4, now())
                     ON CONFLICT (schedule, slot) DO NOTHING",
                    self.slots()
                ),
                &[&schedule, &slot, &state.as_str(), &instance],
            )
            .await
            .pg(|| format!("claiming a slot of schedule {schedule}"))?;
        Ok(n == 1)
    }

    /// Records `slots` of `schedule` as missed, in one statement, where no instance has them
    /// yet; returns those it recorded, oldest first.
    pub async fn claim_missed(
        &self,
        client: &impl GenericClient,
        schedule: &str,
        slots: &[chrono::DateTime<chrono::Utc>],
        instance: &str,
        why: &str,
    ) -> anyhow::Result<Vec<chrono::DateTime<chrono::Utc>>> {
        if slots.is_empty() {
            return Ok(Vec::new());
        }
        let rows = client
            .query(
                &format!(
                    "INSERT INTO {} (schedule, slot, state, instance, error)
                     SELECT $1, s, $3, $4, $5 FROM unnest($2::timestamptz[]) s
                     ON CONFLICT (schedule, slot) DO NOTHING
                     RETURNING slot",
                    self.slots()
                ),
                &[
                    &schedule,
                    &slots,
                    &SlotState::Missed.as_str(),
                    &instance,
                    &why,
                ],
            )
            .await
            .pg(|| format!("recording missed slots of schedule {schedule}"))?;
        let mut claimed: Vec<chrono::DateTime<chrono::Utc>> =
            rows.iter().map(|r| r.get(0)).collect();
        claimed.sort();
        Ok(claimed)
    }

    /// Records how a claimed slot ended.
    pub async fn finish_slot(
        &self,
        client: &impl GenericClient,
        schedule: &str,
        slot: chrono::DateTime<chrono::Utc>,
        state: SlotState,
        backup_id: Option<&str>,
        error: Option<&str>,
    ) -> anyhow::Result<()> {
        client
            .execute(
                &format!(
                    "UPDATE {} SET state = $3, backup_id = $4, error = $5, finished_at = now()
                     WHERE schedule = $1 AND slot = $2",
                    self.slots()
                ),
                &[&schedule, &slot, &state.as_str(), &backup_id, &error],
            )
            .await
            .pg(|| format!("recording a slot of schedule {schedule}"))?;
        Ok(())
    }

    /// The latest slot of `schedule` on record, in any state.
    pub async fn last_slot(
        &self,
        client: &impl GenericClient,
        schedule: &str,
    ) -> anyhow::Result<Option<chrono::DateTime<chrono::Utc>>> {
        Ok(client
            .query_one(
                &format!("SELECT max(slot) FROM {} WHERE schedule = $1", self.slots()),
                &[&schedule],
            )
            .await
            .pg(|| format!("reading the slots of schedule {schedule}"))?
            .get(0))
    }

    /// Marks as failed (`instance_lost`) the running slots of `schedule` whose instance has
    /// not beaten for `stale`: it died (kill -9, OOM, power loss) with the slot claimed.
    pub async fn reap_lost(
        &self,
        client: &impl GenericClient,
        schedule: &str,
        stale: std::time::Duration,
    ) -> anyhow::Result<Vec<LostSlot>> {
        let secs = stale.as_secs_f64();
        let rows = client
            .query(
                &format!(
                    "UPDATE {} SET state = 'failed', finished_at = now(),
                         error = 'instance_lost: instance ' || coalesce(instance, '?') || ' stopped answering at '
                                 || coalesce(heartbeat_at, started_at)::text || ' with the slot running'
                     WHERE schedule = $1 AND state = 'running'
                       AND coalesce(heartbeat_at, started_at) < now() - make_interval(secs => $2)
                     RETURNING slot, coalesce(instance, '?'), error",
                    self.slots()
                ),
                &[&schedule, &secs],
            )
            .await
            .pg(|| format!("looking for slots of schedule {schedule} whose instance is gone"))?;
        let mut lost: Vec<LostSlot> = rows
            .iter()
            .map(|r| LostSlot {
                slot: r.get(0),
                instance: r.get(1),
                error: r.get(2),
            })
            .collect();
        lost.sort_by_key(|l| l.slot);
        Ok(lost)
    }

    /// Takes a slot lost with its instance to run it again: true for the one instance that
    /// gets it.
    pub async fn reclaim_lost(
        &self,
        client: &impl GenericClient,
        schedule: &str,
        slot: chrono::DateTime<chrono::Utc>,
        instance: &str,
    ) -> anyhow::Result<bool> {
        let n = client
            .execute(
                &format!(
                    "UPDATE {} SET state = 'running', instance = $3, error = NULL, started_at = now(),
                         heartbeat_at = now(), finished_at = NULL
                     WHERE schedule = $1 AND slot = $2 AND state = 'failed' AND error LIKE 'instance\\_lost:%'",
                    self.slots()
                ),
                &[&schedule, &slot, &instance],
            )
            .await
            .pg(|| format!("taking a lost slot of schedule {schedule}"))?;
        Ok(n == 1)
    }

    /// Says this instance is still running `slot`.
    pub async fn beat_slot(
        &self,
        client: &impl GenericClient,
        schedule: &str,
        slot: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<()> {
        client
            .execute(
                &format!(
                    "UPDATE {} SET heartbeat_at = now() WHERE schedule = $1 AND slot = $2 AND state = 'running'",
                    self.slots()
                ),
                &[&schedule, &slot],
            )
            .await
            .pg(|| format!("recording that a slot of schedule {schedule} still runs"))?;
        Ok(())
    }
}

/// What became of a scheduled slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    Running,
    Done,
    Failed,
    /// No instance ran while the slot passed.
    Missed,
}

impl SlotState {
    pub fn as_str(self) -> &'static str {
        match self {
            SlotState::Running => "running",
            SlotState::Done => "done",
            SlotState::Failed => "failed",
            SlotState::Missed => "missed",
        }
    }
}
