//! The directory backend: objects are files under a root directory.
//!
//! Writes go to a temporary name in the same directory, are fsynced, then renamed (or, for
//! create-only writes, hard-linked, which fails if the name exists) and the directory is
//! fsynced, so a crash leaves either the whole object or no object.

use std::path::{Path, PathBuf};

use anyhow::Context;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use async_trait::async_trait;

use crate::error::{err, Kind};

use super::{check_key, ByteStream, NotFound, ObjectInfo, ObjectStore, Upload};

/// Marks temporary files; `prune` removes old ones.
pub const TEMP_MARKER: &str = ".backstop-tmp-";

pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    pub fn new(root: PathBuf) -> DirStore {
        DirStore { root }
    }

    fn path(&self, key: &str) -> anyhow::Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    /// The object's final path and a fresh temporary name beside it, its folder created.
    async fn prepare(&self, key: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let path = self.path(key)?;
        let dir = path.parent().unwrap_or(&self.root);
        tokio::fs::create_dir_all(dir)
            .await
            .with_context(|| format!("creating {}", dir.display()))?;
        let temp = temp_name(&path);
        Ok((path, temp))
    }

    async fn check_writable(&self) -> anyhow::Result<()> {
        tokio::fs::create_dir_all(&self.root)
            .await
            .with_context(|| {
                format!(
                    "creating the backup directory {}; check [storage] url and permissions",
                    self.root.display()
                )
            })?;
        let probe = self
            .root
            .join(format!("{TEMP_MARKER}probe-{}", std::process::id()));
        tokio::fs::write(&probe, b"").await.with_context(|| {
            format!(
                "the backup directory {} is not writable",
                self.root.display()
            )
        })?;
        let _ = tokio::fs::remove_file(&probe).await;
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for DirStore {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    async fn check(&self) -> anyhow::Result<()> {
        self.check_writable()
            .await
            .map_err(|e| err(Kind::StoreUnavailable, format!("{e:#}")))
    }

    async fn upload(&self, key: &str, _size_hint: u64) -> anyhow::Result<Box<dyn Upload>> {
        let (path, temp) = self.prepare(key).await?;
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .await
            .with_context(|| format!("creating {}", temp.display()))?;
        Ok(Box::new(DirUpload {
            file: Some(file),
            temp,
            path,
            written: 0,
        }))
    }

    async fn put(&self, key: &str, data: Bytes, create_only: bool) -> anyhow::Result<()> {
        let (path, temp) = self.prepare(key).await?;
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        // Whatever ends this write (an error, or the caller dropping it), no temporary file
        // stays behind; after the rename there is none to remove.
        let _cleanup = RemoveOnDrop(temp.clone());
        let result = async {
            let mut f = tokio::fs::File::create(&temp)
                .await
                .with_context(|| format!("creating {}", temp.display()))?;
            f.write_all(&data).await?;
            f.sync_all().await?;
            drop(f);
            if create_only {
                tokio::fs::hard_link(&temp, &path).await.map_err(|e| {
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        anyhow::anyhow!(
                            "{} already exists; refusing to overwrite it",
                            path.display()
                        )
                    } else {
                        anyhow::Error::new(e).context(format!("writing {}", path.display()))
                    }
                })?;
                tokio::fs::remove_file(&temp).await?;
            } else {
                tokio::fs::rename(&temp, &path).await?;
            }
            sync_dir(&dir).await
        }
        .await;
        result.with_context(|| format!("writing {}", path.display()))
    }

    async fn get(&self, key: &str) -> anyhow::Result<Bytes> {
        let path = self.path(key)?;
        match tokio::fs::read(&path).await {
            Ok(data) => Ok(Bytes::from(data)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(NotFound(path.display().to_string()).into())
            }
            Err(e) => Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
        }
    }

    async fn get_stream(&self, key: &str) -> anyhow::Result<ByteStream> {
        let path = self.path(key)?;
        let file = tokio::fs::File::open(&path)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        let stream =
            futures_util::stream::try_unfold((file, path), |(mut file, path)| async move {
                let mut buf = vec![0u8; 256 * 1024];
                let n = file
                    .read(&mut buf)
                    .await
                    .with_context(|| format!("reading {}", path.display()))?;
                if n == 0 {
                    return Ok(None);
                }
                buf.truncate(n);
                Ok(Some((Bytes::from(buf), (file, path))))
            });
        Ok(Box::pin(stream))
    }

    async fn list(&self, prefix: &str) -> anyhow::Result<Vec<ObjectInfo>> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            if root.exists() {
                walk(&root, &root, &mut out)?;
            }
            out.retain(|o| o.key.starts_with(&prefix));
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await?
    }

    async fn delete(&self, keys: &[String]) -> anyhow::Result<()> {
        let mut dirs = std::collections::BTreeSet::new();
        for key in keys {
            let path = self.path(key)?;
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
            }
            if let Some(d) = path.parent() {
                dirs.insert(d.to_path_buf());
            }
        }
        // Empty backup folders go too; a non-empty one stays.
        for d in dirs {
            if d != self.root {
                let _ = tokio::fs::remove_dir(&d).await;
            }
        }
        Ok(())
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<ObjectInfo>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let meta = entry.metadata()?;
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else if meta.is_file() {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let key = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            out.push(ObjectInfo {
                key,
                size: meta.len(),
                modified: meta.modified().ok().map(time::OffsetDateTime::from),
            });
        }
    }
    Ok(())
}

fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    path.with_file_name(format!(
        "{name}{TEMP_MARKER}{}-{nanos:x}",
        std::process::id()
    ))
}

async fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    let d = tokio::fs::File::open(dir)
        .await
        .with_context(|| format!("opening {}", dir.display()))?;
    d.sync_all()
        .await
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Removes a temporary file when dropped, if it is still there.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A file being written under a temporary name.
struct DirUpload {
    file: Option<tokio::fs::File>,
    temp: PathBuf,
    path: PathBuf,
    written: u64,
}

#[async_trait]
impl Upload for DirUpload {
    async fn write(&mut self, chunk: Bytes) -> anyhow::Result<()> {
        let file = self.file.as_mut().context("upload already finished")?;
        file.write_all(&chunk)
            .await
            .with_context(|| format!("writing {}", self.temp.display()))?;
        self.written += chunk.len() as u64;
        Ok(())
    }

    async fn finish(&mut self) -> anyhow::Result<u64> {
        let mut file = self.file.take().context("upload already finished")?;
        let result = async {
            file.flush().await?;
            file.sync_all().await?;
            drop(file);
            tokio::fs::rename(&self.temp, &self.path).await?;
            if let Some(dir) = self.path.parent() {
                sync_dir(dir).await?;
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&self.temp).await;
            return Err(e.context(format!("finishing {}", self.path.display())));
        }
        Ok(self.written)
    }

    async fn abort(mut self: Box<Self>) {
        self.file.take();
        let _ = tokio::fs::remove_file(&self.temp).await;
    }
}

impl Drop for DirUpload {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}
