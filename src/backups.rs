//! Looking after stored backups: listing, verifying and pruning.
//!
//! A backup exists when its manifest does. Folders without one are incomplete uploads: never
//! listed as backups, never restored, and removed by `prune` once they are an hour old (a
//! younger one may still be uploading). Pruning is planned first and then executed, so
//! `--dry-run` shows exactly what would go.

use std::collections::BTreeMap;

use futures_util::sink::SinkExt;
use serde::Serialize;
use time::OffsetDateTime;

use crate::backup::manifest::{check_backup_id, Kind, Manifest, MANIFEST_NAME};
use crate::backup::read::pump;
use crate::config::RetentionConfig;
use crate::store::{ObjectInfo, PendingUpload, Store};

/// A folder in the store that has objects but no manifest.
#[derive(Debug, Clone, Serialize)]
pub struct Incomplete {
    pub id: String,
    pub objects: Vec<String>,
    #[serde(skip)]
    pub newest: Option<OffsetDateTime>,
}

/// Everything found in a store.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Newest first.
    pub backups: Vec<Manifest>,
    pub incomplete: Vec<Incomplete>,
    /// Folders whose manifest could not be read, with the reason.
    pub unreadable: Vec<(String, String)>,
}

/// Reads every manifest in the store.
pub async fn scan(store: &Store) -> anyhow::Result<Catalog> {
    let objects = store.list("").await?;
    let mut folders: BTreeMap<String, Vec<ObjectInfo>> = BTreeMap::new();
    for o in objects {
        if let Some((id, _)) = o.key.split_once('/') {
            if check_backup_id(id).is_ok() {
                folders.entry(id.to_string()).or_default().push(o);
            }
        }
    }
    let mut catalog = Catalog::default();
    for (id, objects) in folders {
        let has_manifest = objects
            .iter()
            .any(|o| o.key == format!("{id}/{MANIFEST_NAME}"));
        if !has_manifest {
            catalog.incomplete.push(Incomplete {
                newest: objects.iter().filter_map(|o| o.modified).max(),
                objects: objects.into_iter().map(|o| o.key).collect(),
                id,
            });
            continue;
        }
        match store
            .get(&Manifest::manifest_key(&id))
            .await
            .and_then(|d| Manifest::parse(&d, &id))
        {
            Ok(m) => catalog.backups.push(m),
            Err(e) => catalog.unreadable.push((id, format!("{e:#}"))),
        }
    }
    // Ids sort by time to the second; the manifest's timestamp breaks ties within one.
    catalog
        .backups
        .sort_by(|a, b| (created(b), &b.id).cmp(&(created(a), &a.id)));
    Ok(catalog)
}

/// One table's verification result.
#[derive(Debug, Clone, Serialize)]
pub struct TableCheck {
    pub table: String,
    pub ok: bool,
    pub rows: Option<u64>,
    pub problem: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyResult {
    pub id: String,
    pub ok: bool,
    pub tables: Vec<TableCheck>,
}

/// Re-reads every object of a backup: SHA-256, decompression, CSV records and header.
pub async fn verify(store: &Store, manifest: &Manifest) -> VerifyResult {
    let mut tables = Vec::new();
    for entry in &manifest.tables {
        let mut sink = std::pin::pin!(futures_util::sink::drain()
            .sink_map_err(|e: std::convert::Infallible| anyhow::anyhow!("{e}")));
        let outcome = pump(store, entry, sink.as_mut())
            .await
            .and_then(|stats| stats.check(entry).map(|()| stats.rows));
        tables.push(match outcome {
            Ok(rows) => TableCheck {
                table: entry.name.clone(),
                ok: true,
                rows: Some(rows),
                problem: None,
            },
            Err(e) => TableCheck {
                table: entry.name.clone(),
                ok: false,
                rows: None,
                problem: Some(format!("{e:#}")),
            },
        });
    }
    VerifyResult {
        id: manifest.id.clone(),
        ok: tables.iter().all(|t| t.ok),
        tables,
    }
}

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

fn created(m: &Manifest) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(
        &m.created_at,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()
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
    plan.incomplete = catalog
        .incomplete
        .iter()
        .filter(|i| old(i.newest))
        .cloned()
        .collect();
    for p in pending {
        if old(p.initiated) {
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

/// `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `3h`, `2d`: how long ago a manifest was written.
pub fn age(m: &Manifest, now: OffsetDateTime) -> String {
    let Some(t) = created(m) else {
        return "?".into();
    };
    let s = (now - t).whole_seconds().max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::manifest::{DatabaseIdentity, MANIFEST_FORMAT};

    fn m(id: &str, kind: Kind, created_at: &str) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            id: id.into(),
            kind,
            label: None,
            created_at: created_at.into(),
            database: DatabaseIdentity {
                name: "d".into(),
                system_identifier: None,
                server_version: "15".into(),
            },
            schema: "public".into(),
            revision: None,
            target_revision: None,
            zstd_level: 3,
            tables: vec![],
        }
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
    fn only_old_incomplete_uploads_go() {
        let now = time::macros::datetime!(2026-11-24 13:00 UTC);
        let catalog = Catalog {
            incomplete: vec![
                Incomplete {
                    id: "old".into(),
                    objects: vec!["old/x".into()],
                    newest: Some(now - time::Duration::hours(2)),
                },
                Incomplete {
                    id: "new".into(),
                    objects: vec!["new/x".into()],
                    newest: Some(now - time::Duration::minutes(5)),
                },
            ],
            ..Default::default()
        };
        let pending = vec![
            PendingUpload {
                key: "a".into(),
                upload_id: "1".into(),
                initiated: Some(now - time::Duration::hours(3)),
            },
            PendingUpload {
                key: "b".into(),
                upload_id: "2".into(),
                initiated: Some(now),
            },
        ];
        let plan = plan_prune(&catalog, pending, &RetentionConfig::default(), now);
        assert_eq!(plan.incomplete.len(), 1);
        assert_eq!(plan.incomplete[0].id, "old");
        assert_eq!(plan.stale_uploads, [("a".to_string(), "1".to_string())]);
    }

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
