//! Object storage for backups: one small interface, two backends, picked by the URL.
//!
//! `s3://bucket/prefix` goes to any S3-compatible service through aws-sdk-s3; a path or
//! `file://` URL goes to a local directory (the default is `./backstop-backups`). Keys are
//! relative to the store's prefix and always `/`-separated. Uploads stream with bounded
//! memory and are aborted on error or cancellation, so a half-written object never looks
//! finished: on S3 the multipart upload is aborted, in a directory the temporary file is
//! removed before it is renamed into place.

mod dir;
mod faulty;
mod s3;

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use time::OffsetDateTime;

use crate::config::StorageConfig;
use crate::error::usage;

pub use dir::DirStore;
pub use faulty::FaultyStore;
pub use s3::{http_client, S3Store};

/// A stream of an object's bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = anyhow::Result<Bytes>> + Send>>;

/// The default store when nothing is configured.
pub const DEFAULT_STORE: &str = "./backstop-backups";

/// One stored object.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    /// Relative to the store's prefix.
    pub key: String,
    pub size: u64,
    pub modified: Option<OffsetDateTime>,
}

/// An upload that was started and never completed (S3 multipart uploads).
#[derive(Debug, Clone)]
pub struct PendingUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<OffsetDateTime>,
}

/// How a store location was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Dir(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl Location {
    /// Parses `s3://bucket/prefix`, `file:///path` or a plain path.
    pub fn parse(url: &str) -> anyhow::Result<Location> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return usage(format!(
                    "storage url {url:?} has no bucket; write s3://bucket/prefix"
                ));
            }
            let prefix = prefix.trim_matches('/').to_string();
            if prefix.split('/').any(|p| p == ".." || p == ".") {
                return usage(format!(
                    "storage url {url:?}: the prefix may not contain . or .."
                ));
            }
            return Ok(Location::S3 {
                bucket: bucket.to_string(),
                prefix,
            });
        }
        if let Some(path) = url.strip_prefix("file://") {
            return Ok(Location::Dir(PathBuf::from(path)));
        }
        if url.contains("://") {
            return usage(format!(
                "storage url {url:?} is neither s3://bucket/prefix, file:///path nor a directory path"
            ));
        }
        if url.is_empty() {
            return usage("storage url is empty; set [storage] url or BACKSTOP_STORAGE_URL");
        }
        Ok(Location::Dir(PathBuf::from(url)))
    }
}

/// Where backups live. Directory and S3 backends implement it, and [`FaultyStore`] wraps any
/// of them to inject failures in tests; everything above the store sees only this trait.
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// Where the store is, for messages (never with credentials).
    fn describe(&self) -> String;

    /// How long one request may go unanswered before it fails; bounds the clean-up of a
    /// failed backup too.
    fn patience(&self) -> std::time::Duration {
        DIR_PATIENCE
    }

    /// Confirms the store is reachable and writable enough to start, before any work.
    async fn check(&self) -> anyhow::Result<()>;

    /// Starts a streaming upload; `size_hint` (bytes) lets S3 pick a part size that stays
    /// under the 10,000-part limit.
    async fn upload(&self, key: &str, size_hint: u64) -> anyhow::Result<Box<dyn Upload>>;

    /// Writes a small object in one go. With `create_only`, fails if it already exists
    /// (where the service supports conditional writes).
    async fn put(&self, key: &str, data: Bytes, create_only: bool) -> anyhow::Result<()>;

    /// Reads a small object whole.
    async fn get(&self, key: &str) -> anyhow::Result<Bytes>;

    /// Streams an object.
    async fn get_stream(&self, key: &str) -> anyhow::Result<ByteStream>;

    /// Every object whose key starts with `prefix`.
    async fn list(&self, prefix: &str) -> anyhow::Result<Vec<ObjectInfo>>;

    async fn delete(&self, keys: &[String]) -> anyhow::Result<()>;

    /// Unfinished multipart uploads under the prefix (none for a directory).
    async fn pending_uploads(&self) -> anyhow::Result<Vec<PendingUpload>> {
        Ok(Vec::new())
    }

    async fn abort_pending(&self, _upload: &PendingUpload) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The clean-up bound of a directory store, which has no request timeouts of its own.
const DIR_PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);

/// A configured store, as the rest of backstop holds it.
pub type Store = dyn ObjectStore;

/// A streaming upload in progress. Call [`Upload::finish`] to make the object exist;
/// [`Upload::abort`] (or dropping it) leaves nothing behind.
#[async_trait]
pub trait Upload: Send {
    async fn write(&mut self, chunk: Bytes) -> anyhow::Result<()>;

    /// Completes the object; returns its size. A failed finish leaves the upload to
    /// [`Upload::abort`], so a caller holding locks can release them before it cleans up.
    async fn finish(&mut self) -> anyhow::Result<u64>;

    async fn abort(self: Box<Self>);
}

/// Opens the store that `[storage]` names. `resolve` makes relative paths absolute against
/// the config file's directory.
pub async fn open(
    config: &StorageConfig,
    resolve: impl Fn(&Path) -> PathBuf,
) -> anyhow::Result<Arc<Store>> {
    let url = config.url.as_deref().unwrap_or(DEFAULT_STORE);
    Ok(match Location::parse(url)? {
        Location::Dir(path) => Arc::new(DirStore::new(resolve(&path))),
        Location::S3 { bucket, prefix } => {
            Arc::new(S3Store::connect(config, bucket, prefix).await?)
        }
    })
}

/// The object asked for is not in the store (as opposed to a store that could not answer).
#[derive(Debug)]
pub struct NotFound(pub String);

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} does not exist", self.0)
    }
}

impl std::error::Error for NotFound {}

/// Whether `e` says the object is not there.
pub fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<NotFound>().is_some())
}

/// Rejects keys that could leave the store's prefix.
pub fn check_key(key: &str) -> anyhow::Result<()> {
    if key.is_empty()
        || key.starts_with('/')
        || key.contains('\\')
        || key.contains('\0')
        || key
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
    {
        anyhow::bail!(
            "refusing object key {key:?}: it is empty, absolute or contains . or .. segments"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(
            Location::parse("s3://b/some/prefix/").unwrap(),
            Location::S3 {
                bucket: "b".into(),
                prefix: "some/prefix".into()
            }
        );
        assert_eq!(
            Location::parse("s3://b").unwrap(),
            Location::S3 {
                bucket: "b".into(),
                prefix: "".into()
            }
        );
        assert_eq!(
            Location::parse("file:///var/b").unwrap(),
            Location::Dir("/var/b".into())
        );
        assert_eq!(Location::parse("./b").unwrap(), Location::Dir("./b".into()));
        assert!(Location::parse("gs://b/p").is_err());
        assert!(Location::parse("s3:///p").is_err());
        assert!(Location::parse("s3://b/../x").is_err());
    }

    #[test]
    fn keys_stay_inside_the_prefix() {
        assert!(check_key("id/public.tasks.csv.zst").is_ok());
        for bad in ["", "/etc/passwd", "id/../../x", "a//b", "./a", "a\\b"] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
    }
}
