//! Multipart uploads with memory known from the start: a part size fixed per upload from the
//! object's estimated size, a bounded number of parts in flight, and an abort on any error
//! or when dropped unfinished, so no orphaned parts are left to pay for.

use anyhow::Context;
use async_trait::async_trait;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream as AwsByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
use tokio::task::JoinSet;

use super::{put_request, s3_error, Patience};
use crate::error::{err, Kind};
use crate::store::Upload;

/// Smallest part; S3's own minimum is 5 MiB.
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// Parts uploading at once, at most.
pub const PARTS_IN_FLIGHT: usize = 4;
/// Bytes of parts uploading at once, at most (one part when parts are larger than this).
const IN_FLIGHT_BYTES: usize = 24 * 1024 * 1024;
const MAX_PARTS: u64 = 10_000;

/// The part size for an object expected to be about `estimate` bytes: at least 5 MiB, in
/// whole MiB, and large enough that twice the estimate still fits in S3's 10,000 parts.
pub fn part_size(estimate: u64) -> usize {
    let mib = 1024 * 1024;
    let needed = (estimate.saturating_mul(2)).div_ceil(MAX_PARTS);
    (needed.div_ceil(mib) * mib).max(MIN_PART_SIZE as u64) as usize
}

/// A multipart upload in progress.
pub(super) struct S3Upload {
    client: Client,
    bucket: String,
    key: anyhow::Result<String>,
    /// Fixed for the upload, so the memory it holds is known from the start.
    part_size: usize,
    in_flight_parts: usize,
    buffer: BytesMut,
    upload_id: Option<String>,
    in_flight: JoinSet<anyhow::Result<CompletedPart>>,
    parts: Vec<CompletedPart>,
    next_part: i32,
    written: u64,
    done: bool,
    patience: Patience,
}

impl S3Upload {
    /// An upload of an object expected to be about `size_hint` bytes.
    pub(super) fn new(
        client: Client,
        bucket: String,
        key: anyhow::Result<String>,
        size_hint: u64,
        patience: Patience,
    ) -> S3Upload {
        let part_size = part_size(size_hint);
        S3Upload {
            client,
            bucket,
            key,
            part_size,
            in_flight_parts: (IN_FLIGHT_BYTES / part_size).clamp(1, PARTS_IN_FLIGHT),
            buffer: BytesMut::new(),
            upload_id: None,
            in_flight: JoinSet::new(),
            parts: Vec::new(),
            next_part: 1,
            written: 0,
            done: false,
            patience,
        }
    }

    fn key(&self) -> anyhow::Result<&str> {
        self.key.as_deref().map_err(|e| anyhow::anyhow!("{e:#}"))
    }

    async fn write_chunk(&mut self, chunk: Bytes) -> anyhow::Result<()> {
        self.written += chunk.len() as u64;
        self.buffer.extend_from_slice(&chunk);
        while self.buffer.len() >= self.part_size {
            let part = self.buffer.split_to(self.part_size).freeze();
            self.send_part(part).await?;
        }
        Ok(())
    }

    async fn send_part(&mut self, data: Bytes) -> anyhow::Result<()> {
        let key = self.key()?.to_string();
        if self.upload_id.is_none() {
            let created = self
                .patience
                .answer(
                    self.client
                        .create_multipart_upload()
                        .bucket(&self.bucket)
                        .key(&key)
                        .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32)
                        .send(),
                )
                .await
                .and_then(|r| r.map_err(s3_error))
                .with_context(|| format!("starting the upload of s3://{}/{key}", self.bucket))?;
            self.upload_id = Some(
                created
                    .upload_id()
                    .context("S3 returned no upload id")?
                    .to_string(),
            );
        }
        while self.in_flight.len() >= self.in_flight_parts {
            self.collect_one().await?;
        }
        let number = self.next_part;
        self.next_part += 1;
        if number as u64 > MAX_PARTS {
            return Err(err(
                Kind::StoreUnavailable,
                format!(
                    "s3://{}/{key} would need more than {MAX_PARTS} parts of {} MiB: the table's size estimate was far too low",
                    self.bucket,
                    self.part_size / (1024 * 1024)
                ),
            ));
        }
        let (client, bucket, id, patience) = (
            self.client.clone(),
            self.bucket.clone(),
            self.upload_id.clone().unwrap_or_default(),
            self.patience,
        );
        self.in_flight.spawn(async move {
            let request = client
                .upload_part()
                .bucket(&bucket)
                .key(&key)
                .upload_id(id)
                .part_number(number)
                .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32)
                .body(AwsByteStream::from(data))
                // The CRC32 above protects the part; hashing it again for SigV4 would cost
                // a second pass over every byte on a CPU the compressor needs.
                .customize()
                .disable_payload_signing()
                .send();
            let out = patience
                .answer(request)
                .await
                .and_then(|r| r.map_err(s3_error))
                .with_context(|| format!("uploading part {number} of s3://{bucket}/{key}"))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_string))
                .set_checksum_crc32(out.checksum_crc32().map(str::to_string))
                .build())
        });
        Ok(())
    }

    async fn collect_one(&mut self) -> anyhow::Result<()> {
        if let Some(joined) = self.in_flight.join_next().await {
            let part = joined.context("an upload task failed")??;
            self.parts.push(part);
        }
        Ok(())
    }

    async fn complete(&mut self) -> anyhow::Result<u64> {
        let key = self.key()?.to_string();
        if self.upload_id.is_none() {
            let data = std::mem::take(&mut self.buffer).freeze();
            self.patience
                .answer(put_request(&self.client, &self.bucket, &key, data, false).send())
                .await
                .and_then(|r| r.map_err(s3_error))
                .with_context(|| format!("writing s3://{}/{key}", self.bucket))?;
            return Ok(self.written);
        }
        if !self.buffer.is_empty() {
            let last = std::mem::take(&mut self.buffer).freeze();
            self.send_part(last).await?;
        }
        while !self.in_flight.is_empty() {
            self.collect_one().await?;
        }
        self.parts.sort_by_key(|p| p.part_number());
        let request = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&key)
            .upload_id(self.upload_id.clone().unwrap_or_default())
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(std::mem::take(&mut self.parts)))
                    .build(),
            )
            .send();
        self.patience
            .answer(request)
            .await
            .and_then(|r| r.map_err(s3_error))
            .with_context(|| format!("completing the upload of s3://{}/{key}", self.bucket))?;
        self.upload_id = None;
        Ok(self.written)
    }

    async fn abort_now(&mut self) {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        if let (Some(id), Ok(key)) = (self.upload_id.take(), self.key.as_ref()) {
            let request = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(id)
                .send();
            match self.patience.answer(request).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(
                    "aborting the upload of s3://{}/{key}: {}",
                    self.bucket,
                    DisplayErrorContext(e)
                ),
                Err(e) => {
                    tracing::warn!("aborting the upload of s3://{}/{key}: {e:#}", self.bucket)
                }
            }
        }
    }
}

#[async_trait]
impl Upload for S3Upload {
    async fn write(&mut self, chunk: Bytes) -> anyhow::Result<()> {
        self.write_chunk(chunk).await
    }

    async fn finish(&mut self) -> anyhow::Result<u64> {
        let written = self.complete().await?;
        self.done = true;
        Ok(written)
    }

    async fn abort(mut self: Box<Self>) {
        self.abort_now().await;
        self.done = true;
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        // Cancelled (the task was dropped mid-upload): abort in the background.
        if self.done {
            return;
        }
        self.in_flight.abort_all();
        if let (Some(id), Ok(key)) = (self.upload_id.take(), self.key.as_ref()) {
            let (client, bucket, key) = (self.client.clone(), self.bucket.clone(), key.clone());
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = client
                        .abort_multipart_upload()
                        .bucket(bucket)
                        .key(key)
                        .upload_id(id)
                        .send()
                        .await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_sized_once_from_the_estimate() {
        let mib = 1024 * 1024u64;
        // (estimate, part size in MiB)
        for (estimate, want) in [
            (0, 5),
            (10 * mib, 5),
            (25_000 * mib, 5),
            (30_000 * mib, 6),
            (1024 * 1024 * mib, 210), // 1 TiB
        ] {
            let size = part_size(estimate) as u64;
            assert_eq!(size / mib, want, "{estimate}");
            assert!(size * MAX_PARTS >= estimate * 2);
        }
    }
}
