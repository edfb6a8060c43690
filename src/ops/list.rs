//! `backups list` and `backups show ID`: what the store holds, and for pre-downgrade backups
//! what became of their downgrade (guarantee 7), from the database's own record.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::backup::catalog::load_manifest;
use crate::backup::catalog::{scan, Catalog};
use crate::backup::manifest::{Kind, Manifest};
use crate::ledger::Ledger;
use crate::pg::Database;
use crate::store::Store;

/// What became of the downgrade a pre-downgrade backup was taken for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DowngradeOutcome {
    #[serde(rename = "downgrade committed")]
    Committed,
    #[serde(rename = "downgrade committed, data restored")]
    Restored,
    #[serde(rename = "downgrade committed, superseded by a plain upgrade")]
    Superseded,
    #[serde(rename = "downgrade never happened")]
    NeverHappened,
}

impl DowngradeOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            DowngradeOutcome::Committed => "downgrade committed",
            DowngradeOutcome::Restored => "downgrade committed, data restored",
            DowngradeOutcome::Superseded => "downgrade committed, superseded by a plain upgrade",
            DowngradeOutcome::NeverHappened => "downgrade never happened",
        }
    }
}

/// The store's backups, newest first, with the outcome of each pre-downgrade backup.
pub struct Listing {
    pub store: String,
    pub catalog: Catalog,
    /// backup id → outcome; empty when the database cannot be asked. Only backups of this
    /// database are judged.
    pub outcomes: BTreeMap<String, DowngradeOutcome>,
}

impl Listing {
    /// The document `backups list --json` prints and `GET /v1/backups` answers.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "store": self.store,
            "backups": self.catalog.backups.iter().map(|m| serde_json::json!({
                "id": m.id, "kind": m.kind, "label": m.label.as_deref().map(shorten),
                "created_at": m.created_at,
                "revision": m.revision, "target_revision": m.target_revision,
                "tables": m.tables.iter().map(|t| &t.name).collect::<Vec<_>>(),
                "rows": m.rows(), "bytes": m.bytes(), "compressed_bytes": m.compressed_bytes(),
                "downgrade": self.outcomes.get(&m.id),
            })).collect::<Vec<_>>(),
            "incomplete": self.catalog.incomplete.iter().map(|i| &i.id).collect::<Vec<_>>(),
            "unreadable": self.catalog.unreadable.iter()
                .map(|(id, why)| serde_json::json!({"id": id, "error": why}))
                .collect::<Vec<_>>(),
        })
    }
}

/// The longest label a list shows (`backups show` shows it whole): one answer to
/// `GET /v1/backups` must not grow with what someone wrote into a label.
pub const LABEL_SHOWN: usize = 200;

fn shorten(label: &str) -> String {
    match label.char_indices().nth(LABEL_SHOWN) {
        Some((end, _)) => format!("{}…", &label[..end]),
        None => label.to_string(),
    }
}

/// Lists the store; `db` (when configured) tells what became of each downgrade.
pub async fn list(store: &Store, db: Option<(&Database, &str)>) -> anyhow::Result<Listing> {
    let catalog = scan(store).await?;
    let outcomes = match db {
        Some((db, schema)) => outcomes(db, schema, &catalog.backups).await,
        None => BTreeMap::new(),
    };
    Ok(Listing {
        store: store.describe(),
        catalog,
        outcomes,
    })
}

async fn outcomes(
    db: &Database,
    schema: &str,
    backups: &[Manifest],
) -> BTreeMap<String, DowngradeOutcome> {
    let mut out = BTreeMap::new();
    if !backups.iter().any(|m| m.kind == Kind::PreDowngrade) {
        return out;
    }
    let Ok(client) = db.connect().await else {
        return out;
    };
    let recorded = Ledger::new(schema)
        .downgrade_outcomes(&client)
        .await
        .unwrap_or_default();
    for m in backups
        .iter()
        .filter(|m| m.kind == Kind::PreDowngrade && m.database.name == db.dbname())
    {
        let outcome = match recorded.iter().find(|r| r.backup_id == m.id) {
            Some(r) if r.restored => DowngradeOutcome::Restored,
            Some(r) if r.superseded => DowngradeOutcome::Superseded,
            Some(_) => DowngradeOutcome::Committed,
            None => DowngradeOutcome::NeverHappened,
        };
        out.insert(m.id.clone(), outcome);
    }
    out
}

/// One backup's manifest.
pub async fn show(store: &Store, id: &str) -> anyhow::Result<Manifest> {
    load_manifest(store, id).await
}
