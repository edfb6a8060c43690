//! `backups verify [ID|--all]`: re-read stored backups and check them against their
//! manifests, without loading anything.

use serde::Serialize;

use crate::backup::catalog::scan;
use crate::backup::catalog::{load_manifest, RefusedManifest};
use crate::backup::verify::{verify as verify_one, VerifyResult};
use crate::context::OpContext;
use crate::store::Store;

/// Which backups to verify.
#[derive(Debug, Clone)]
pub enum Which {
    One(String),
    All,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub backups: Vec<VerifyResult>,
}

pub async fn verify(store: &Store, which: &Which, ctx: &OpContext) -> anyhow::Result<VerifyReport> {
    let mut backups = Vec::new();
    let manifests = match which {
        Which::One(id) => match load_manifest(store, id).await {
            Ok(m) => vec![m],
            Err(e) if e.downcast_ref::<RefusedManifest>().is_some() => {
                backups.push(VerifyResult::unreadable(id, &format!("{e:#}")));
                Vec::new()
            }
            Err(e) => return Err(e),
        },
        Which::All => {
            let catalog = scan(store).await?;
            for (id, why) in &catalog.unreadable {
                backups.push(VerifyResult::unreadable(id, why));
            }
            catalog.backups
        }
    };
    for m in &manifests {
        ctx.check()?;
        backups.push(verify_one(store, m, ctx).await);
    }
    Ok(VerifyReport {
        ok: backups.iter().all(|r| r.ok),
        backups,
    })
}
