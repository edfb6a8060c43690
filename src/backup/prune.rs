//! Retention: which backups `prune` removes, planned first (pure, so `--dry-run` prints the
//! same plan) and then executed. Pre-downgrade backups are never removed by retention.

use serde::Serialize;
use time::OffsetDateTime;

use super::catalog::{created, Catalog, Incomplete};
use super::manifest::{Kind, Manifest};
use crate::config::RetentionConfig;
use crate::store::{PendingUpload, Store};

/// A backup `prune` keeps or removes, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub id: String,
    pub reason: String,
}

/// What `prune` will do.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PrunePlan {
    pub keep: Vec<Decision>,
    pub remove: Vec<Decision>,
    /// Incomplete uploads old enough to remove.
    pub incomplete: Vec<Incomplete>,
    /// Unfinished multipart uploads old enough to abort (key and upload id).
    pub stale_uploads: Vec<(String, String)>,
    #[serde(skip)]
    pending: Vec<PendingUpload>,
}

/// Applies `[retention]` to manual and scheduled backups; pre-downgrade backups are kept.
pub fn plan_prune(
    catalog: &Catalog,
    pending: Vec<PendingUpload>,
    retention: &RetentionConfig,
    now: OffsetDateTime,
) -> PrunePlan {
    let mut plan = PrunePlan::default();
    let configured = retention.keep_last.is_some() || retention.keep_daily.is_some();
    let mut days_kept: Vec<time::Date> = Vec::new();
    let mut rotating = 0u32;
    for m in &catalog.backups {
        let keep = |reason: &str| Decision {
            id: m.id.clone(),
            reason: reason.to_string(),
        };
        if m.kind == Kind::PreDowngrade {
            plan.keep
                .push(keep("pre-downgrade backups are kept until removed by hand"));
            continue;
        }
        if !configured {
            plan.keep.push(keep("no [retention] configured"));
            continue;
        }
        rotating += 1;
        let mut reasons = Vec::new();
        if let Some(n) = retention.keep_last {
            if rotating <= n {
                reasons.push(format!("one of the last {n}"));
            }
        }
        if let (Some(d), Some(day)) = (retention.keep_daily, created(m).map(|t| t.date())) {
            if !days_kept.contains(&day) && days_kept.len() < d as usize {
                days_kept.push(day);
                reasons.push(format!("newest of {day} (keep_daily {d})"));
            }
        }
        if reasons.is_empty() {
            plan.remove.push(Decision {
                id: m.id.clone(),
                reason: "outside [retention]".into(),
            });
        } else {
            plan.keep.push(Decision {
                id: m.id.clone(),
                reason: reasons.join(", "),
            });
        }
    }
    let after =
        time::Duration::seconds(retention.incomplete_after_secs.min(i64::MAX as u64) as i64);
    let old = |t: Option<OffsetDateTime>| t.is_some_and(|t| now - t >= after);
    // A folder with a fresh lease is a backup being written, however old its first parts.
    plan.incomplete = catalog
        .incomplete
        .iter()
        .filter(|i| old(i.newest) && !i.in_progress(now))
        .cloned()
        .collect();
    let live: Vec<&str> = catalog
        .incomplete
        .iter()
        .filter(|i| i.in_progress(now))
        .map(|i| i.id.as_str())
        .collect();
    for p in pending {
        let of_live = live.iter().any(|id| p.key.starts_with(&format!("{id}/")));
        if old(p.initiated) && !of_live {
            plan.stale_uploads
                .push((p.key.clone(), p.upload_id.clone()));
            plan.pending.push(p);
        }
    }
    plan
}

/// Carries out a plan: removes backups (manifest first, so a half-removed backup is never
/// mistaken for a complete one), incomplete uploads and stale multipart uploads.
pub async fn execute_prune(store: &Store, plan: &PrunePlan) -> anyhow::Result<()> {
    for d in &plan.remove {
        let objects: Vec<String> = store
            .list(&format!("{}/", d.id))
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect();
        let manifest = Manifest::manifest_key(&d.id);
        store.delete(std::slice::from_ref(&manifest)).await?;
        let rest: Vec<String> = objects.into_iter().filter(|k| k != &manifest).collect();
        store.delete(&rest).await?;
    }
    for i in &plan.incomplete {
        store.delete(&i.objects).await?;
    }
    for p in &plan.pending {
        store.abort_pending(p).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, kind: Kind, created_at: &str) -> Manifest {
        Manifest::empty(id, kind, created_at)
    }

    #[test]
    fn retention_keeps_last_and_daily_and_never_pre_downgrade() {
        let catalog = Catalog {
            backups: vec![
                m(
                    "20261124T120000Z-manual-a",
                    Kind::Manual,
                    "2026-11-24T12:00:00Z",
                ),
                m(
                    "20261124T110000Z-scheduled-b",
                    Kind::Scheduled,
                    "2026-11-24T11:00:00Z",
                ),
                m(
                    "20261123T100000Z-pre-downgrade-c",
                    Kind::PreDowngrade,
                    "2026-11-23T10:00:00Z",
                ),
                m(
                    "20261123T090000Z-scheduled-d",
                    Kind::Scheduled,
                    "2026-11-23T09:00:00Z",
                ),
                m(
                    "20261123T080000Z-scheduled-e",
                    Kind::Scheduled,
                    "2026-11-23T08:00:00Z",
                ),
                m(
                    "20261122T080000Z-scheduled-f",
                    Kind::Scheduled,
                    "2026-11-22T08:00:00Z",
                ),
            ],
            ..Default::default()
        };
        let retention = RetentionConfig {
            keep_last: Some(1),
            keep_daily: Some(2),
            ..Default::default()
        };
        let now = time::macros::datetime!(2026-11-24 13:00 UTC);
        let plan = plan_prune(&catalog, vec![], &retention, now);
        let kept: Vec<&str> = plan.keep.iter().map(|d| &d.id[..]).collect();
        let removed: Vec<&str> = plan.remove.iter().map(|d| &d.id[..]).collect();
        assert_eq!(
            kept,
            [
                "20261124T120000Z-manual-a",
                "20261123T100000Z-pre-downgrade-c",
                "20261123T090000Z-scheduled-d"
            ]
        );
        assert_eq!(
            removed,
            [
                "20261124T110000Z-scheduled-b",
                "20261123T080000Z-scheduled-e",
                "20261122T080000Z-scheduled-f"
            ]
        );

        let none = plan_prune(&catalog, vec![], &RetentionConfig::default(), now);
        assert!(none.remove.is_empty());
    }

    #[test]
    fn only_old_incomplete_uploads_go_and_never_one_with_a_fresh_lease() {
        let now = time::macros::datetime!(2026-11-24 13:00 UTC);
        let folder = |id: &str, newest_mins: i64, lease_mins: Option<i64>| Incomplete {
            id: id.into(),
            objects: vec![format!("{id}/x")],
            newest: Some(now - time::Duration::minutes(newest_mins)),
            lease: lease_mins.map(|m| now - time::Duration::minutes(m)),
        };
        let catalog = Catalog {
            incomplete: vec![
                folder("old", 120, None),
                folder("new", 5, None),
                // Its first object is hours old, but its lease was written a minute ago.
                folder("live", 180, Some(1)),
                // A lease nobody refreshed for an hour: the writer is gone.
                folder("dead", 180, Some(60)),
            ],
            ..Default::default()
        };
        let pending = |key: &str, hours: i64, id: &str| PendingUpload {
            key: key.into(),
            upload_id: id.into(),
            initiated: Some(now - time::Duration::hours(hours)),
        };
        let uploads = vec![
            pending("a", 3, "1"),
            pending("b", 0, "2"),
            pending("live/public.t.csv.zst", 3, "3"),
        ];
        let plan = plan_prune(&catalog, uploads, &RetentionConfig::default(), now);
        let ids: Vec<&str> = plan.incomplete.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["old", "dead"]);
        assert_eq!(plan.stale_uploads, [("a".to_string(), "1".to_string())]);
    }
}
