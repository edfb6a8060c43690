//! What a store holds: complete backups (those with a manifest), incomplete uploads, and
//! folders whose manifest cannot be read.
//!
//! A backup exists when its manifest does. Folders without one are incomplete uploads: never
//! listed as backups, never restored, and removed by `prune` once they are old enough (a
//! younger one may still be uploading).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use serde::Serialize;
use time::OffsetDateTime;

use super::manifest::{check_backup_id, Manifest, MANIFEST_NAME};
use crate::store::{is_not_found, ObjectInfo, Store};

/// The object a backup in progress keeps fresh, so `prune` leaves its folder alone.
pub const LEASE_NAME: &str = "lease.json";
/// How often the lease is rewritten.
pub const LEASE_REFRESH: Duration = Duration::from_secs(20);
/// A lease younger than this means the backup is still being written.
pub const LEASE_FRESH: Duration = Duration::from_secs(120);

/// Writes the lease of `backup_id` (before the first table, so a backup is never without
/// one).
pub async fn write_lease(store: &Store, backup_id: &str) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "pid": std::process::id(),
        "refreshed_at": OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    });
    let key = format!("{backup_id}/{LEASE_NAME}");
    store
        .put(&key, Bytes::from(body.to_string()), false)
        .await
        .with_context(|| format!("writing the lease of backup {backup_id}"))
}

/// Rewrites the lease every [`LEASE_REFRESH`]; never returns (drop it when the work ends).
/// A failed refresh is only logged: the backup itself fails if the store is gone.
pub async fn keep_lease(store: &Store, backup_id: &str) {
    loop {
        tokio::time::sleep(LEASE_REFRESH).await;
        if let Err(e) = write_lease(store, backup_id).await {
            tracing::warn!("{e:#}");
        }
    }
}

/// Removes the lease of a finished backup; a leftover lease is harmless (the folder has a
/// manifest) and only logged.
pub async fn drop_lease(store: &Store, backup_id: &str) {
    let key = format!("{backup_id}/{LEASE_NAME}");
    if let Err(e) = store.delete(&[key]).await {
        tracing::debug!("could not remove the lease of backup {backup_id}: {e:#}");
    }
}

/// A folder in the store that has objects but no manifest.
#[derive(Debug, Clone, Serialize)]
pub struct Incomplete {
    pub id: String,
    pub objects: Vec<String>,
    #[serde(skip)]
    pub newest: Option<OffsetDateTime>,
    /// When its lease was last written, if it has one: a backup in progress.
    #[serde(skip)]
    pub lease: Option<OffsetDateTime>,
}

impl Incomplete {
    /// Whether a backup is still writing this folder.
    pub fn in_progress(&self, now: OffsetDateTime) -> bool {
        self.lease
            .is_some_and(|t| now - t < time::Duration::seconds(LEASE_FRESH.as_secs() as i64))
    }
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

/// Reads and validates a backup's manifest.
pub async fn load_manifest(store: &Store, id: &str) -> anyhow::Result<Manifest> {
    check_backup_id(id)?;
    let key = Manifest::manifest_key(id);
    let data = match store.get(&key).await {
        Ok(d) => d,
        Err(e) if is_not_found(&e) => {
            let exists = store
                .list(&format!("{id}/"))
                .await
                .map(|o| !o.is_empty())
                .unwrap_or(false);
            let why = if exists {
                "it has no manifest, so it is an incomplete upload and cannot be restored"
            } else {
                "`backstop backups list` shows the backups there"
            };
            anyhow::bail!("no backup {id} in {} ({why})", store.describe());
        }
        Err(e) => {
            return Err(e.context(format!(
                "reading the manifest of backup {id} from {}",
                store.describe()
            )))
        }
    };
    Manifest::parse(&data, id).map_err(|e| e.context(RefusedManifest(id.to_string())))
}

/// The manifest was read but refused (malformed, an unknown version, keys outside its
/// backup): `verify` counts that as a failed check.
#[derive(Debug)]
pub struct RefusedManifest(pub String);

impl std::fmt::Display for RefusedManifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "backup {} cannot be trusted as it is", self.0)
    }
}

impl std::error::Error for RefusedManifest {}

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
                lease: objects
                    .iter()
                    .find(|o| o.key == format!("{id}/{LEASE_NAME}"))
                    .and_then(|o| o.modified),
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

/// When a manifest says it was written.
pub fn created(m: &Manifest) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(
        &m.created_at,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()
}
