//! A store that fails on purpose, wrapped around a real one, so tests can reach failure
//! paths (a failing part, a store that stalls, a write that is lost) deterministically
//! instead of by timing tricks against a live service.
//!
//! Writes are counted across the whole store: every chunk written to an upload and every
//! small `put` is one write, numbered from 1 in the order they happen.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;

use super::{ByteStream, ObjectInfo, ObjectStore, PendingUpload, Store, Upload};
use crate::error::{err, Kind};

#[derive(Default)]
struct Faults {
    /// The write with this number fails.
    fail_write: Option<u64>,
    /// The write with this number (and every later one) never completes.
    stall_write: Option<u64>,
    /// Writes to keys containing this text report success but store nothing.
    lose_key: Option<String>,
    /// Every delete fails.
    fail_deletes: bool,
}

/// Wraps a real store and injects the faults it was told to.
pub struct FaultyStore {
    inner: Arc<Store>,
    faults: Mutex<Faults>,
    writes: Arc<AtomicU64>,
}

impl FaultyStore {
    pub fn new(inner: Arc<Store>) -> FaultyStore {
        FaultyStore {
            inner,
            faults: Mutex::default(),
            writes: Arc::default(),
        }
    }

    /// The `n`th write (1-based) fails with a store error.
    pub fn fail_write(self, n: u64) -> FaultyStore {
        self.faults.lock().expect("faults").fail_write = Some(n);
        self
    }

    /// From the `n`th write on, writes hang until the caller gives up on them.
    pub fn stall_write(self, n: u64) -> FaultyStore {
        self.faults.lock().expect("faults").stall_write = Some(n);
        self
    }

    /// Objects whose key contains `part` are accepted and silently not stored.
    pub fn lose_writes_to(self, part: &str) -> FaultyStore {
        self.faults.lock().expect("faults").lose_key = Some(part.to_string());
        self
    }

    /// Every delete fails (a partial upload that cannot be cleaned up).
    pub fn fail_deletes(self) -> FaultyStore {
        self.faults.lock().expect("faults").fail_deletes = true;
        self
    }

    /// Writes seen so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    fn loses(&self, key: &str) -> bool {
        let faults = self.faults.lock().expect("faults");
        faults.lose_key.as_deref().is_some_and(|k| key.contains(k))
    }

    fn gate(&self) -> Gate {
        let faults = self.faults.lock().expect("faults");
        Gate {
            writes: self.writes.clone(),
            fail: faults.fail_write,
            stall: faults.stall_write,
        }
    }
}

/// Decides the fate of each write.
#[derive(Clone)]
struct Gate {
    writes: Arc<AtomicU64>,
    fail: Option<u64>,
    stall: Option<u64>,
}

impl Gate {
    async fn pass(&self, key: &str) -> anyhow::Result<()> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if self.stall.is_some_and(|s| n >= s) {
            std::future::pending::<()>().await;
        }
        if self.fail == Some(n) {
            return Err(err(
                Kind::StoreUnavailable,
                format!("injected failure of write {n} (to {key})"),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    fn describe(&self) -> String {
        format!("{} (with injected faults)", self.inner.describe())
    }

    async fn check(&self) -> anyhow::Result<()> {
        self.inner.check().await
    }

    async fn upload(&self, key: &str, size_hint: u64) -> anyhow::Result<Box<dyn Upload>> {
        Ok(Box::new(FaultyUpload {
            inner: Some(self.inner.upload(key, size_hint).await?),
            gate: self.gate(),
            key: key.to_string(),
            lose: self.loses(key),
            written: 0,
        }))
    }

    async fn put(&self, key: &str, data: Bytes, create_only: bool) -> anyhow::Result<()> {
        self.gate().pass(key).await?;
        if self.loses(key) {
            return Ok(());
        }
        self.inner.put(key, data, create_only).await
    }

    async fn get(&self, key: &str) -> anyhow::Result<Bytes> {
        self.inner.get(key).await
    }

    async fn get_stream(&self, key: &str) -> anyhow::Result<ByteStream> {
        self.inner.get_stream(key).await
    }

    async fn list(&self, prefix: &str) -> anyhow::Result<Vec<ObjectInfo>> {
        self.inner.list(prefix).await
    }

    async fn delete(&self, keys: &[String]) -> anyhow::Result<()> {
        if self.faults.lock().expect("faults").fail_deletes {
            return Err(err(Kind::StoreUnavailable, "injected failure of a delete"));
        }
        self.inner.delete(keys).await
    }

    async fn pending_uploads(&self) -> anyhow::Result<Vec<PendingUpload>> {
        self.inner.pending_uploads().await
    }

    async fn abort_pending(&self, upload: &PendingUpload) -> anyhow::Result<()> {
        self.inner.abort_pending(upload).await
    }

    fn patience(&self) -> std::time::Duration {
        self.inner.patience()
    }
}

struct FaultyUpload {
    /// Taken when the upload is lost on purpose.
    inner: Option<Box<dyn Upload>>,
    gate: Gate,
    key: String,
    lose: bool,
    written: u64,
}

#[async_trait]
impl Upload for FaultyUpload {
    async fn write(&mut self, chunk: Bytes) -> anyhow::Result<()> {
        self.gate.pass(&self.key).await?;
        self.written += chunk.len() as u64;
        self.inner
            .as_mut()
            .context("upload already lost")?
            .write(chunk)
            .await
    }

    async fn finish(&mut self) -> anyhow::Result<u64> {
        if self.lose {
            if let Some(inner) = self.inner.take() {
                inner.abort().await;
            }
            return Ok(self.written);
        }
        self.inner
            .as_mut()
            .context("upload already lost")?
            .finish()
            .await
    }

    async fn abort(self: Box<Self>) {
        if let Some(inner) = self.inner {
            inner.abort().await
        }
    }
}
