//! `backups prune [--dry-run]`: apply `[retention]`, remove incomplete uploads and abort
//! stale multipart uploads. Planned first, so a dry run shows exactly what would go.

use crate::backup::catalog::scan;
use crate::backup::prune::{execute_prune, plan_prune, PrunePlan};
use crate::config::RetentionConfig;
use crate::store::Store;

/// Plans against what the store holds now and, unless `dry_run`, carries the plan out.
pub async fn prune(
    store: &Store,
    retention: &RetentionConfig,
    dry_run: bool,
    now: time::OffsetDateTime,
) -> anyhow::Result<PrunePlan> {
    let catalog = scan(store).await?;
    let pending = store.pending_uploads().await?;
    let plan = plan_prune(&catalog, pending, retention, now);
    if !dry_run {
        execute_prune(store, &plan).await?;
    }
    Ok(plan)
}
