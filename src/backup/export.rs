//! Streaming one table out: `COPY (SELECT …) TO STDOUT (FORMAT csv, HEADER)` → 256 KiB
//! batches → zstd on a blocking thread (with the SHA-256 of its output) → the store.
//!
//! COPY sends one protocol message per row; compressing each message on its own was slower
//! than batching them first, and compressing on the async reactor starves the network
//! work, so the compressor runs on its own thread between two bounded channels. Memory is
//! the channels' few batches plus the store's upload buffers, whatever the table's size.

use std::io::Write;

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_postgres::Transaction;

use super::manifest::{ColumnEntry, Manifest, OnRestore, Scope, SequenceEntry, TableEntry};
use super::Leftovers;
use crate::context::OpContext;
use crate::error::{err, Kind};
use crate::pg::{qualified, quote_ident, Database, PgContext, PgError};
use crate::store::Store;
use tokio_postgres::error::SqlState;

/// Bytes per batch handed to the compressor, and per compressed chunk handed on.
pub const CHUNK: usize = 256 * 1024;
const CHANNEL_DEPTH: usize = 4;

/// A table as the catalog describes it at backup time.
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub scope: Scope,
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// The table it is a partition of or inherits from (`schema.table`).
    pub parent: Option<String>,
    /// Every column except generated ones, which restore recomputes.
    pub columns: Vec<ColumnEntry>,
    pub primary_key: Vec<String>,
    /// On-disk size of the heap, for the progress bar.
    pub estimated_bytes: u64,
    /// On-disk size of heap and TOAST, which sizes upload parts (an upper bound of the
    /// compressed CSV, so the part count stays under S3's limit).
    pub stored_estimate: u64,
    pub sequences: Vec<SequenceEntry>,
    pub on_restore: OnRestore,
}

/// Where and how the tables of one backup are written.
#[derive(Clone, Copy)]
pub struct ExportJob<'a> {
    pub store: &'a Store,
    pub backup_id: &'a str,
    pub zstd_level: i32,
    /// Cancellation and progress of the backup this table belongs to.
    pub ctx: &'a OpContext,
    /// Where the exporting sessions are, to cancel a COPY whose upload failed.
    pub db: &'a Database,
    /// Where a failed table leaves its unfinished upload, aborted once the caller has let
    /// the database go.
    pub leftovers: &'a Leftovers,
}

/// Exports `spec` from the snapshot of `tx` into the backup's folder.
pub async fn export_table(
    tx: &Transaction<'_>,
    job: ExportJob<'_>,
    spec: &TableSpec,
) -> anyhow::Result<TableEntry> {
    let ExportJob {
        store,
        backup_id,
        zstd_level,
        ctx,
        db,
        leftovers,
    } = job;
    let progress = ctx.observer();
    let key = Manifest::table_key(backup_id, &spec.schema, &spec.name);
    let columns: Vec<String> = spec.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let sql = format!(
        "COPY (SELECT {} FROM ONLY {}) TO STDOUT (FORMAT csv, HEADER)",
        columns.join(", "),
        qualified(&spec.schema, &spec.name)
    );
    let table = format!("{}.{}", spec.schema, spec.name);
    let stream = match tx.copy_out(sql.as_str()).await {
        Ok(s) => s,
        Err(e) => return Err(row_security_refusal(e, &table)),
    };
    let mut upload = store.upload(&key, spec.stored_estimate).await?;

    let (raw_tx, raw_rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let compressor = tokio::task::spawn_blocking(move || compress(raw_rx, out_tx, zstd_level));

    let produce = async move {
        let mut stream = std::pin::pin!(stream);
        let mut batch = BytesMut::with_capacity(CHUNK);
        let (mut messages, mut bytes, mut batch_rows) = (0u64, 0u64, 0u64);
        while let Some(msg) = stream.next().await {
            let msg = msg.pg(|| format!("exporting {table}"))?;
            messages += 1;
            if messages > 1 {
                batch_rows += 1; // the first message is the header
            }
            bytes += msg.len() as u64;
            batch.extend_from_slice(&msg);
            if batch.len() >= CHUNK {
                progress.advance(batch.len() as u64, batch_rows);
                batch_rows = 0;
                let full = std::mem::replace(&mut batch, BytesMut::with_capacity(CHUNK));
                raw_tx
                    .send(full.freeze())
                    .await
                    .map_err(|_| anyhow::anyhow!("the compressor stopped"))?;
            }
        }
        if !batch.is_empty() {
            progress.advance(batch.len() as u64, batch_rows);
            raw_tx
                .send(batch.freeze())
                .await
                .map_err(|_| anyhow::anyhow!("the compressor stopped"))?;
        }
        // The first message is the header line.
        anyhow::Ok((messages.saturating_sub(1), bytes))
    };
    let consume = async {
        while let Some(chunk) = out_rx.recv().await {
            upload.write(chunk).await?;
        }
        anyhow::Ok(())
    };
    let outcome = tokio::select! {
        r = async { tokio::try_join!(produce, consume) } => r,
        _ = ctx.cancelled() => Err(ctx.interrupted()),
    };
    // If the upload stopped early the compressor may be blocked on a full channel: close it.
    drop(out_rx);
    let compressed = compressor.await.context("the compressor thread panicked");
    let ((rows, bytes), ()) = match outcome {
        Ok(v) => v,
        Err(e) => {
            // Stop the server sending the rest of the table; the session would otherwise
            // read it all before it could roll back.
            db.cancel(tx.cancel_token()).await;
            leftovers.upload(upload);
            return Err(e.context(format!("backing up table {}", spec.name)));
        }
    };
    let (sha256, compressed_bytes) = match compressed.and_then(|r| r) {
        Ok(v) => v,
        Err(e) => {
            leftovers.upload(upload);
            return Err(e.context(format!("compressing table {}", spec.name)));
        }
    };
    let finished = tokio::select! {
        r = upload.finish() => r,
        _ = ctx.cancelled() => Err(ctx.interrupted()),
    };
    let stored = match finished {
        Ok(n) => n,
        Err(e) => {
            leftovers.upload(upload);
            return Err(e.context(format!(
                "storing table {} in {}",
                spec.name,
                store.describe()
            )));
        }
    };
    if stored != compressed_bytes {
        anyhow::bail!(
            "stored {stored} bytes of table {} but compressed {compressed_bytes}",
            spec.name
        );
    }
    Ok(TableEntry {
        schema: spec.schema.clone(),
        name: spec.name.clone(),
        parent: spec.parent.clone(),
        scope: spec.scope,
        columns: spec.columns.clone(),
        primary_key: spec.primary_key.clone(),
        rows,
        bytes,
        compressed_bytes,
        key,
        sha256,
        sequences: spec.sequences.clone(),
        on_restore: spec.on_restore,
    })
}

/// A policy that would hide rows is refused by name; anything else says what failed.
pub fn row_security_refusal(e: tokio_postgres::Error, table: &str) -> anyhow::Error {
    let pg = PgError::from(e);
    if pg.code.as_ref() == Some(&SqlState::INSUFFICIENT_PRIVILEGE)
        && pg.message.contains("row-level security")
    {
        return err(
            Kind::Refused,
            format!(
                "table {table} has row-level security that would hide rows from this role, so backstop refuses to save a filtered copy ({}); run backstop as a role with BYPASSRLS, or as the table's owner without FORCE ROW LEVEL SECURITY",
                pg.message
            ),
        );
    }
    anyhow::Error::new(pg).context(format!("reading {table}"))
}

/// Runs on a blocking thread: zstd-compresses batches, hashing what comes out.
fn compress(
    mut rx: mpsc::Receiver<Bytes>,
    tx: mpsc::Sender<Bytes>,
    level: i32,
) -> anyhow::Result<(String, u64)> {
    let mut encoder = zstd::stream::write::Encoder::new(Vec::with_capacity(CHUNK * 2), level)
        .context("starting zstd")?;
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut ship = |buf: Vec<u8>, hasher: &mut Sha256| -> anyhow::Result<()> {
        hasher.update(&buf);
        total += buf.len() as u64;
        tx.blocking_send(Bytes::from(buf))
            .map_err(|_| anyhow::anyhow!("the upload stopped"))
    };
    while let Some(batch) = rx.blocking_recv() {
        encoder.write_all(&batch).context("compressing")?;
        if encoder.get_ref().len() >= CHUNK {
            let out = std::mem::replace(encoder.get_mut(), Vec::with_capacity(CHUNK * 2));
            ship(out, &mut hasher)?;
        }
    }
    let rest = encoder.finish().context("finishing zstd")?;
    if !rest.is_empty() {
        ship(rest, &mut hasher)?;
    }
    Ok((hex(&hasher.finalize()), total))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
