//! Object storage for backups: one small interface, two backends, picked by the URL.
//!
//! `s3://bucket/prefix` goes to any S3-compatible service through aws-sdk-s3; a path or
//! `file://` URL goes to a local directory (the default is `./backstop-backups`). Keys are
//! relative to the store's prefix and always `/`-separated. Uploads stream with bounded
//! memory and are aborted on error or cancellation, so a half-written object never looks
//! finished: on S3 the multipart upload is aborted, in a directory the temporary file is
//! removed before it is renamed into place.

mod dir;
mod s3;

use std::path::{Path, PathBuf};
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
use time::OffsetDateTime;

use crate::config::StorageConfig;
use crate::error::usage;

pub use dir::{DirStore, DirUpload};
pub use s3::{http_client, S3Store, S3Upload};

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

/// A configured backup store.
pub enum Store {
    Dir(DirStore),
    S3(S3Store),
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

impl Store {
    /// Opens the store that `[storage]` names. `resolve` makes relative paths absolute
    /// against the config file's directory.
    pub async fn open(
        config: &StorageConfig,
        resolve: impl Fn(&Path) -> PathBuf,
    ) -> anyhow::Result<Store> {
        let url = config.url.as_deref().unwrap_or(DEFAULT_STORE);
        Ok(match Location::parse(url)? {
            Location::Dir(path) => Store::Dir(DirStore::new(resolve(&path))),
            Location::S3 { bucket, prefix } => {
                Store::S3(S3Store::connect(config, bucket, prefix).await?)
            }
        })
    }

    /// Where the store is, for messages (never with credentials).
    pub fn describe(&self) -> String {
        match self {
            Store::Dir(d) => d.describe(),
            Store::S3(s) => s.describe(),
        }
    }

    /// Confirms the store is reachable and writable enough to start, before any work.
    pub async fn check(&self) -> anyhow::Result<()> {
        match self {
            Store::Dir(d) => d.check().await,
            Store::S3(s) => s.check().await,
        }
    }

    /// Starts a streaming upload; `size_hint` (bytes) lets S3 pick a part size that stays
    /// under the 10,000-part limit.
    pub async fn upload(&self, key: &str, size_hint: u64) -> anyhow::Result<Upload> {
        Ok(match self {
            Store::Dir(d) => Upload::Dir(d.upload(key).await?),
            Store::S3(s) => Upload::S3(s.upload(key, size_hint)),
        })
    }

    /// Writes a small object in one go. With `create_only`, fails if it already exists
    /// (where the service supports conditional writes).
    pub async fn put(&self, key: &str, data: Bytes, create_only: bool) -> anyhow::Result<()> {
        match self {
            Store::Dir(d) => d.put(key, data, create_only).await,
            Store::S3(s) => s.put(key, data, create_only).await,
        }
    }

    /// Reads a small object whole.
    pub async fn get(&self, key: &str) -> anyhow::Result<Bytes> {
        match self {
            Store::Dir(d) => d.get(key).await,
            Store::S3(s) => s.get(key).await,
        }
    }

    /// Streams an object.
    pub async fn get_stream(&self, key: &str) -> anyhow::Result<ByteStream> {
        match self {
            Store::Dir(d) => d.get_stream(key).await,
            Store::S3(s) => s.get_stream(key).await,
        }
    }

    /// Every object whose key starts with `prefix`.
    pub async fn list(&self, prefix: &str) -> anyhow::Result<Vec<ObjectInfo>> {
        match self {
            Store::Dir(d) => d.list(prefix).await,
            Store::S3(s) => s.list(prefix).await,
        }
    }

    pub async fn delete(&self, keys: &[String]) -> anyhow::Result<()> {
        match self {
            Store::Dir(d) => d.delete(keys).await,
            Store::S3(s) => s.delete(keys).await,
        }
    }

    /// Unfinished multipart uploads under the prefix (none for a directory).
    pub async fn pending_uploads(&self) -> anyhow::Result<Vec<PendingUpload>> {
        match self {
            Store::Dir(_) => Ok(Vec::new()),
            Store::S3(s) => s.pending_uploads().await,
        }
    }

    pub async fn abort_pending(&self, upload: &PendingUpload) -> anyhow::Result<()> {
        match self {
            Store::Dir(_) => Ok(()),
            Store::S3(s) => s.abort_pending(upload).await,
        }
    }
}

/// A streaming upload in progress. Call [`Upload::finish`] to make the object exist;
/// [`Upload::abort`] (or dropping it) leaves nothing behind.
pub enum Upload {
    Dir(DirUpload),
    S3(S3Upload),
}

impl Upload {
    pub async fn write(&mut self, chunk: Bytes) -> anyhow::Result<()> {
        match self {
            Upload::Dir(u) => u.write(chunk).await,
            Upload::S3(u) => u.write(chunk).await,
        }
    }

    /// Completes the object; returns its size.
    pub async fn finish(self) -> anyhow::Result<u64> {
        match self {
            Upload::Dir(u) => u.finish().await,
            Upload::S3(u) => u.finish().await,
        }
    }

    pub async fn abort(self) {
        match self {
            Upload::Dir(u) => u.abort().await,
            Upload::S3(u) => u.abort().await,
        }
    }
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
