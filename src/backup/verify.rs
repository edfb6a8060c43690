//! Re-reading a backup without loading it: every object's SHA-256, decompression, CSV
//! record count and header, against its manifest.

use futures_util::sink::SinkExt;
use serde::Serialize;

use super::manifest::Manifest;
use super::read::pump;
use crate::context::OpContext;
use crate::store::Store;

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
    /// Why the backup as a whole failed (a manifest that cannot be read).
    pub problem: Option<String>,
}

impl VerifyResult {
    /// A backup whose manifest could not be read or was refused: a failure, never "ok".
    pub fn unreadable(id: &str, why: &str) -> VerifyResult {
        VerifyResult {
            id: id.to_string(),
            ok: false,
            tables: Vec::new(),
            problem: Some(format!("its manifest cannot be used: {why}")),
        }
    }
}

/// Re-reads every object of a backup: SHA-256, decompression, CSV records and header.
pub async fn verify(store: &Store, manifest: &Manifest, ctx: &OpContext) -> VerifyResult {
    ctx.observer().begin("verify", manifest.bytes());
    let mut tables = Vec::new();
    for entry in &manifest.tables {
        let mut sink = std::pin::pin!(futures_util::sink::drain()
            .sink_map_err(|e: std::convert::Infallible| anyhow::anyhow!("{e}")));
        let outcome = pump(store, entry, sink.as_mut(), ctx)
            .await
            .and_then(|stats| stats.check(entry).map(|()| stats.rows));
        tables.push(match outcome {
            Ok(rows) => {
                ctx.observer().advance(entry.bytes, rows);
                TableCheck {
                    table: entry.name.clone(),
                    ok: true,
                    rows: Some(rows),
                    problem: None,
                }
            }
            Err(e) => TableCheck {
                table: entry.name.clone(),
                ok: false,
                rows: None,
                problem: Some(format!("{e:#}")),
            },
        });
    }
    ctx.observer().end();
    VerifyResult {
        id: manifest.id.clone(),
        ok: tables.iter().all(|t| t.ok),
        tables,
        problem: None,
    }
}
