//! What a failed backup left in the store, cleaned up only after the database is let go.
//!
//! A downgrade exports under `SHARE` locks. Aborting its uploads and removing its folder are
//! requests to the very store that just failed, so they wait after the rollback, not before:
//! writers wait for the failure, never for the clean-up. The clean-up has a bound of its
//! own; what it cannot remove, `backstop backups prune` removes later (an unfinished
//! multipart upload or a folder without a manifest is never taken for a backup).

use std::sync::Mutex;
use std::time::Duration;

use crate::store::{Store, Upload};

/// The longest a clean-up runs once the operation was interrupted (SIGTERM, Ctrl-C).
pub const CLEANUP_AFTER_INTERRUPT: Duration = Duration::from_secs(5);

/// Uploads and a backup folder a failed export leaves behind.
#[derive(Default)]
pub struct Leftovers {
    uploads: Mutex<Vec<Box<dyn Upload>>>,
    backup: Mutex<Option<String>>,
}

impl Leftovers {
    pub fn new() -> Leftovers {
        Leftovers::default()
    }

    /// An unfinished upload, to abort later.
    pub(super) fn upload(&self, upload: Box<dyn Upload>) {
        self.uploads.lock().expect("leftovers").push(upload);
    }

    /// The folder of the failed backup, to remove later.
    pub(super) fn backup(&self, id: &str) {
        *self.backup.lock().expect("leftovers") = Some(id.to_string());
    }

    /// Aborts the uploads and removes the folder, giving up after `within`; says what
    /// became of the backup, for the error that follows.
    pub async fn clean(self, store: &Store, within: Duration) -> String {
        let uploads = self.uploads.into_inner().expect("leftovers");
        let backup = self.backup.into_inner().expect("leftovers");
        let work = async {
            futures_util::future::join_all(uploads.into_iter().map(|u| u.abort())).await;
            match &backup {
                Some(id) => discard(store, id).await,
                None => Ok(()),
            }
        };
        let Some(id) = backup.clone() else {
            // Nothing was written under a backup id: only the uploads to abort.
            let _ = tokio::time::timeout(within, work).await;
            return "the backup failed".to_string();
        };
        match tokio::time::timeout(within, work).await {
            Ok(Ok(())) => "the backup failed and was removed".to_string(),
            Ok(Err(left)) => format!("the backup failed and {left}"),
            Err(_) => {
                tracing::warn!(
                    "gave up removing the partial backup {id} after {}s",
                    within.as_secs()
                );
                format!(
                    "the backup failed and its partial upload {id} was not removed (the store did not answer within {}s); `backstop backups prune` removes it",
                    within.as_secs()
                )
            }
        }
    }
}

/// Removes whatever a failed backup left in the store; when that fails, says what is left.
async fn discard(store: &Store, backup_id: &str) -> Result<(), String> {
    let removed = async {
        let keys: Vec<String> = store
            .list(&format!("{backup_id}/"))
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect();
        store.delete(&keys).await
    }
    .await;
    removed.map_err(|e| {
        tracing::warn!("could not remove the partial backup {backup_id}: {e:#}");
        format!(
            "its partial upload {backup_id} could not be removed ({e:#}); `backstop backups prune` removes it"
        )
    })
}
