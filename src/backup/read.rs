//! Streaming one table object back: store → SHA-256 + zstd + CSV record count (on a
//! blocking thread) → any byte sink (a `COPY ... FROM STDIN`, or nothing for `verify`).
//!
//! The checks a restore relies on happen here, while streaming: the SHA-256 of the stored
//! object, the CSV header against the manifest's columns, and the number of records.
//! The caller decides what a mismatch means; for a restore it means rolling back.

use std::io::Read;
use std::pin::Pin;

use anyhow::Context;
use bytes::Bytes;
use futures_util::{Sink, SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::export::{hex, CHUNK};
use super::manifest::TableEntry;
use crate::context::OpContext;
use crate::error::verification;
use crate::store::Store;

/// What streaming an object found.
#[derive(Debug, Clone)]
pub struct ReadStats {
    pub sha256: String,
    pub compressed_bytes: u64,
    pub bytes: u64,
    /// CSV records after the header.
    pub rows: u64,
    pub header: Vec<String>,
}

impl ReadStats {
    /// Compares with the manifest; a difference is a verification failure (exit 3).
    pub fn check(&self, entry: &TableEntry) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        if self.sha256 != entry.sha256 {
            problems.push(format!(
                "SHA-256 is {} but the manifest says {}",
                self.sha256, entry.sha256
            ));
        }
        if self.compressed_bytes != entry.compressed_bytes {
            problems.push(format!(
                "object is {} bytes but the manifest says {}",
                self.compressed_bytes, entry.compressed_bytes
            ));
        }
        if self.rows != entry.rows {
            problems.push(format!(
                "{} rows but the manifest says {}",
                self.rows, entry.rows
            ));
        }
        let names: Vec<&str> = entry.columns.iter().map(|c| c.name.as_str()).collect();
        if self.header != names {
            problems.push(format!(
                "CSV header {:?} but the manifest lists {:?}",
                self.header, names
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            verification(format!(
                "object {} of table {}: {}",
                entry.key,
                entry.name,
                problems.join("; ")
            ))
        }
    }
}

/// Streams `entry`'s object through the checks into `sink`.
pub async fn pump<S>(
    store: &Store,
    entry: &TableEntry,
    mut sink: Pin<&mut S>,
    ctx: &OpContext,
) -> anyhow::Result<ReadStats>
where
    S: Sink<Bytes, Error = anyhow::Error>,
{
    let mut body = store
        .get_stream(&entry.key)
        .await
        .with_context(|| format!("opening the backup of table {}", entry.name))?;
    let (in_tx, in_rx) = mpsc::channel::<Bytes>(4);
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(4);
    let limit = entry.bytes;
    let worker = tokio::task::spawn_blocking(move || decode(in_rx, out_tx, limit));
    let feed = async move {
        while let Some(chunk) = body.next().await {
            if in_tx.send(chunk?).await.is_err() {
                break; // the decoder stopped; its error says why
            }
        }
        anyhow::Ok(())
    };
    let load = async {
        while let Some(b) = out_rx.recv().await {
            sink.send(b).await?;
        }
        anyhow::Ok(())
    };
    let streamed = tokio::select! {
        r = async { tokio::try_join!(feed, load) } => r,
        _ = ctx.cancelled() => Err(ctx.interrupted()),
    };
    // If loading stopped early the decoder may be blocked on a full channel: close it.
    drop(out_rx);
    let decoded = worker.await.context("the decompressor thread panicked")?;
    // A failing sink or store read stops the decoder too; report the cause, not the echo.
    streamed.with_context(|| format!("loading table {} from {}", entry.name, entry.key))?;
    decoded.with_context(|| format!("reading the backup of table {} ({})", entry.name, entry.key))
}

/// The compressed chunks of one object, read as a byte stream, hashed as they arrive.
struct Compressed {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
    hasher: Sha256,
    bytes: u64,
}

impl Compressed {
    /// Takes the next chunk; false at the end of the object.
    fn next_chunk(&mut self) -> bool {
        match self.rx.blocking_recv() {
            Some(chunk) => {
                self.hasher.update(&chunk);
                self.bytes += chunk.len() as u64;
                self.current = chunk;
                true
            }
            None => false,
        }
    }
}

impl Read for Compressed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            if !self.next_chunk() {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Runs on a blocking thread: decompresses at most [`CHUNK`] bytes at a time, and refuses
/// to produce more than `limit` bytes (the size the manifest recorded), so neither a large
/// table nor a small object that expands to gigabytes (a zstd bomb) is ever held in memory.
fn decode(
    rx: mpsc::Receiver<Bytes>,
    tx: mpsc::Sender<Bytes>,
    limit: u64,
) -> anyhow::Result<ReadStats> {
    let input = Compressed {
        rx,
        current: Bytes::new(),
        hasher: Sha256::new(),
        bytes: 0,
    };
    let mut decoder = zstd::stream::read::Decoder::new(input).context("starting zstd")?;
    let mut counter = RecordCounter::default();
    let mut bytes = 0u64;
    loop {
        let mut buf = vec![0u8; CHUNK];
        let mut filled = 0;
        while filled < CHUNK {
            match decoder.read(&mut buf[filled..]).map_err(corrupt)? {
                0 => break,
                n => filled += n,
            }
        }
        if filled == 0 {
            break;
        }
        bytes += filled as u64;
        if bytes > limit {
            return Err(crate::error::err(
                crate::error::Kind::Verification,
                format!(
                    "the object expands past the {limit} bytes its manifest records; decompression was stopped there (a corrupt or forged object)"
                ),
            ));
        }
        buf.truncate(filled);
        counter.feed(&buf);
        tx.blocking_send(Bytes::from(buf))
            .map_err(|_| anyhow::anyhow!("the loader stopped"))?;
    }
    // Whatever follows the last frame still counts for the checksum.
    let mut input = decoder.finish().into_inner();
    while input.next_chunk() {}
    Ok(ReadStats {
        sha256: hex(&input.hasher.finalize()),
        compressed_bytes: input.bytes,
        bytes,
        rows: counter.records().saturating_sub(1),
        header: counter.header()?,
    })
}

fn corrupt(e: std::io::Error) -> anyhow::Error {
    crate::error::err(
        crate::error::Kind::Verification,
        format!("the object is corrupt: zstd could not decode it ({e})"),
    )
}

/// Counts CSV records (quote-aware, so newlines inside values do not count) and keeps the
/// first record, the header.
#[derive(Default)]
struct RecordCounter {
    in_quotes: bool,
    records: u64,
    /// Bytes after the last record end, so a final record without newline still counts.
    pending: bool,
    header: Vec<u8>,
    /// The first record went past [`MAX_HEADER`] bytes.
    header_too_long: bool,
}

/// A CSV header longer than this is not one backstop wrote.
const MAX_HEADER: usize = 1024 * 1024;

impl RecordCounter {
    fn feed(&mut self, data: &[u8]) {
        for &b in data {
            if self.records == 0 {
                if self.header.len() < MAX_HEADER {
                    self.header.push(b);
                } else {
                    self.header_too_long = true;
                }
            }
            match b {
                b'"' => {
                    self.in_quotes = !self.in_quotes;
                    self.pending = true;
                }
                b'\n' if !self.in_quotes => {
                    self.records += 1;
                    self.pending = false;
                }
                _ => self.pending = true,
            }
        }
    }

    fn records(&self) -> u64 {
        self.records + u64::from(self.pending)
    }

    fn header(&self) -> anyhow::Result<Vec<String>> {
        if self.header_too_long {
            return Err(crate::error::err(
                crate::error::Kind::Verification,
                format!("the CSV header is longer than {MAX_HEADER} bytes; this is not a backup backstop wrote"),
            ));
        }
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(self.header.as_slice());
        match reader.records().next() {
            Some(r) => Ok(r
                .context("parsing the CSV header")?
                .iter()
                .map(str::to_string)
                .collect()),
            None => Ok(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_records_not_lines() {
        let mut c = RecordCounter::default();
        c.feed(b"id,text\n1,\"a\nb\"\n2,\"say \"\"hi\"\"\r\n\"\n");
        assert_eq!(c.records(), 3);
        assert_eq!(c.header().unwrap(), ["id", "text"]);
        let mut split = RecordCounter::default();
        for piece in [&b"id,\"te"[..], b"xt\"\n1,\"", b"x\ny\"", b"\n2,z"] {
            split.feed(piece);
        }
        assert_eq!(split.records(), 3);
        assert_eq!(split.header().unwrap(), ["id", "text"]);
    }
}
