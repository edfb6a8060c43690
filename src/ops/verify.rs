//! `backups verify [ID|--all]`: re-read stored backups and check them against their
//! manifests, without loading anything.

use serde::Serialize;

use crate::backup::catalog::scan;
use crate::backup::verify::{verify as verify_one, VerifyResult};
use crate::context::OpContext;
use crate::restore::load_manifest;
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
    let manifests = match which {
        Which::One(id) => vec![load_manifest(store, id).await?],
        Which::All => scan(store).await?.backups,
    };
    let mut backups = Vec::new();
    for m in &manifests {
        ctx.check()?;
        backups.push(verify_one(store, m, ctx).await);
    }
    Ok(VerifyReport {
        ok: backups.iter().all(|r| r.ok),
        backups,
    })
}
