//! What a store holds: complete backups (those with a manifest), incomplete uploads, and
//! folders whose manifest cannot be read.
//!
//! A backup exists when its manifest does. Folders without one are incomplete uploads: never
//! listed as backups, never restored, and removed by `prune` once they are old enough (a
//! younger one may still be uploading).

use std::collections::BTreeMap;

use serde::Serialize;
use time::OffsetDateTime;

use super::manifest::{check_backup_id, Manifest, MANIFEST_NAME};
use crate::store::{ObjectInfo, Store};

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

/// When a manifest says it was written.
pub fn created(m: &Manifest) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(
        &m.created_at,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()
}
