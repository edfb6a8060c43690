//! `stamp`: record a revision as the current one without running SQL, for adopting a
//! database whose schema some other tool created.

use serde::Serialize;

use super::migration::Migrator;
use crate::context::OpContext;
use crate::migrate::plan::known;
use crate::pg::PgContext;

/// The outcome of `stamp`.
#[derive(Debug, Clone, Serialize)]
pub struct StampReport {
    pub database: String,
    pub previous: Option<String>,
    pub current: Option<String>,
}

/// Records `target` (a revision, `head` or `base`) as the current revision.
pub async fn stamp(m: &Migrator, target: &str, ctx: &OpContext) -> anyhow::Result<StampReport> {
    let keep = match target {
        "base" => 0,
        "head" => m.set.migrations.len(),
        rev => {
            known(&m.set, rev)?;
            m.set.position(rev).unwrap_or(0) + 1
        }
    };
    m.locked(ctx, async |client| {
        crate::pg::catalog::require_schema(&*client, &m.settings.schema).await?;
        let ledger = m.ledger();
        // A tool table that disagrees with the ledger is what a stamp settles.
        let previous = match m.status_with(&*client).await {
            Ok(status) => status.current,
            Err(e) if crate::error::kind_of(&e) == crate::error::Kind::Refused => {
                ledger.recorded_revision(&*client, Some(&m.set)).await?
            }
            Err(e) => return Err(e),
        };
        ledger.ensure(&*client).await?;
        let tool = m.tool_table(&*client).await?;
        let tx = client.transaction().await.pg(|| "starting stamp")?;
        let wanted: Vec<(&str, &str)> = m.set.migrations[..keep]
            .iter()
            .map(|m| (m.revision.as_str(), m.checksum.as_str()))
            .collect();
        ledger.stamp(&tx, &wanted).await?;
        if let Some(tool) = &tool {
            let kept: Vec<&crate::migrate::Migration> = m.set.migrations[..keep].iter().collect();
            tool.stamp(&tx, &kept).await?;
        }
        if let Some(project) = &m.set.alembic {
            let kept: Vec<String> = wanted.iter().map(|(r, _)| r.to_string()).collect();
            ledger
                .stamp_alembic(&tx, &project.version_table_ddl, &project.heads_of(&kept))
                .await?;
        }
        // Stamping upwards moves on from every revision in between without their data.
        let before = previous
            .as_deref()
            .and_then(|p| m.set.position(p))
            .map_or(0, |i| i + 1);
        if keep > before {
            let mut left = vec![previous.clone()];
            left.extend(
                m.set.migrations[before..keep - 1]
                    .iter()
                    .map(|m| Some(m.revision.clone())),
            );
            ledger.supersede(&tx, &left).await?;
        }
        tx.commit().await.pg(|| "committing stamp")?;
        let current = m.status_with(&*client).await?.current;
        Ok(StampReport {
            database: m.db.describe(),
            previous,
            current,
        })
    })
    .await
}
