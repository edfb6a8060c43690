//! The S3 backend (AWS or any S3-compatible service) through aws-sdk-s3.
//!
//! Uploads are multipart with bounded memory: parts of at least 5 MiB, in whole MiB (larger
//! when twice the expected size would need more than the 10,000 parts S3 allows), at most
//! four in flight and 24 MiB of parts at once (see `upload.rs`).
//! Small objects go up in a single PutObject. Any error, or dropping the upload unfinished,
//! aborts the multipart upload so no orphaned parts are left to pay for.

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as AwsByteStream;
use aws_sdk_s3::Client;
use bytes::Bytes;

mod upload;

use super::{check_key, ByteStream, NotFound, ObjectInfo, ObjectStore, PendingUpload, Upload};
use crate::config::StorageConfig;
use crate::error::{err, Kind};
use upload::S3Upload;

pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    endpoint: Option<String>,
    /// How long a download may receive nothing before it fails.
    read_timeout: Duration,
    patience: Patience,
}

/// How long one request may go unanswered, the SDK's retries included, before it fails:
/// `read_timeout_secs` or `operation_timeout_secs`, whichever is shorter. The SDK's own
/// operation timeout alone let a stalled store hold a downgrade's locks for ten minutes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Patience(pub(super) Duration);

impl Patience {
    /// Waits for `request`, or fails once the store has been silent for too long.
    pub(super) async fn answer<F: std::future::Future>(
        self,
        request: F,
    ) -> anyhow::Result<F::Output> {
        tokio::time::timeout(self.0, request).await.map_err(|_| {
            err(
                Kind::StoreUnavailable,
                format!(
                    "the store did not answer in time (nothing for {}s: [storage] read_timeout_secs, operation_timeout_secs); check that it runs and is reachable",
                    self.0.as_secs()
                ),
            )
        })
    }
}

/// An S3 failure as a sentence that says what happened: no answer in time, no connection,
/// access denied, no such bucket, or the service's own code and message. Every one is
/// [`Kind::StoreUnavailable`]; none carries a credential.
pub(super) fn s3_error<E, R>(e: SdkError<E, R>) -> anyhow::Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + 'static,
{
    let what = match &e {
        SdkError::TimeoutError(_) => {
            "the store did not answer in time ([storage] read_timeout_secs, operation_timeout_secs)".to_string()
        }
        SdkError::DispatchFailure(d) if d.is_timeout() => {
            "the store did not answer in time ([storage] connect_timeout_secs, read_timeout_secs)".to_string()
        }
        SdkError::DispatchFailure(_) => format!(
            "could not reach the store ({}); check [storage] endpoint and that the service runs",
            causes(&e)
        ),
        _ => match e.code() {
            Some("AccessDenied") | Some("InvalidAccessKeyId") | Some("SignatureDoesNotMatch") => format!(
                "the store denied access ({}); check the credentials and what they may do in the bucket",
                e.code().unwrap_or_default()
            ),
            Some("NoSuchBucket") => {
                "the bucket does not exist; create it or fix [storage] url".to_string()
            }
            Some(code) => format!(
                "the store answered {code}: {}",
                e.message().unwrap_or("(no message)")
            ),
            None => causes(&e),
        },
    };
    err(Kind::StoreUnavailable, what)
}

/// An error and its causes, each as its message, without the SDK's debug dump.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

fn to_time(dt: &aws_sdk_s3::primitives::DateTime) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(dt.secs()).ok()
}

/// A PutObject of bytes already in memory. Bodies carry a CRC32 that S3 checks, so SigV4
/// need not hash them a second time on a CPU the compressor needs.
/// With `create_only`, the write fails if the object exists (`If-None-Match: *`).
pub(super) fn put_request(
    client: &Client,
    bucket: &str,
    key: &str,
    data: Bytes,
    create_only: bool,
) -> PutRequest {
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .set_if_none_match(create_only.then(|| "*".to_string()))
        .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32)
        .body(AwsByteStream::from(data))
        .customize()
        .disable_payload_signing()
}

type PutRequest = aws_sdk_s3::client::customize::CustomizableOperation<
    aws_sdk_s3::operation::put_object::PutObjectOutput,
    aws_sdk_s3::operation::put_object::PutObjectError,
    aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder,
>;

/// The one HTTPS client (rustls with ring, like the database connections), so the binary
/// carries a single TLS stack.
pub fn http_client() -> aws_sdk_s3::config::SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

impl S3Store {
    /// Builds a client from `[storage]`, the standard AWS variables and profile chain.
    pub async fn connect(
        config: &StorageConfig,
        bucket: String,
        prefix: String,
    ) -> anyhow::Result<S3Store> {
        use aws_config::retry::RetryConfig;
        use aws_config::timeout::TimeoutConfig;
        use aws_config::{BehaviorVersion, Region};
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client())
            .retry_config(RetryConfig::standard().with_max_attempts(5))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(config.connect_timeout_secs))
                    .read_timeout(Duration::from_secs(config.read_timeout_secs))
                    .operation_attempt_timeout(Duration::from_secs(
                        config
                            .read_timeout_secs
                            .max(config.operation_timeout_secs / 5),
                    ))
                    .operation_timeout(Duration::from_secs(config.operation_timeout_secs))
                    .build(),
            );
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let (Some(key), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                key.clone(),
                secret.0.clone(),
                None,
                None,
                "backstop-config",
            ));
        }
        let shared = loader.load().await;
        let mut builder =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(config.force_path_style);
        if shared.region().is_none() {
            builder = builder.region(Region::new("us-east-1"));
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint.clone());
        }
        Ok(S3Store {
            client: Client::from_conf(builder.build()),
            bucket,
            prefix,
            endpoint: config.endpoint.clone(),
            read_timeout: Duration::from_secs(config.read_timeout_secs),
            patience: Patience(Duration::from_secs(
                config
                    .read_timeout_secs
                    .min(config.operation_timeout_secs)
                    .max(1),
            )),
        })
    }

    fn full_key(&self, key: &str) -> anyhow::Result<String> {
        check_key(key)?;
        Ok(if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        })
    }

    fn relative<'a>(&self, full: &'a str) -> &'a str {
        if self.prefix.is_empty() {
            full
        } else {
            full.strip_prefix(&self.prefix)
                .map(|k| k.trim_start_matches('/'))
                .unwrap_or(full)
        }
    }

    async fn exists(&self, full: &str) -> anyhow::Result<bool> {
        match self
            .patience
            .answer(
                self.client
                    .head_object()
                    .bucket(&self.bucket)
                    .key(full)
                    .send(),
            )
            .await?
        {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
            Err(e) => {
                Err(s3_error(e)).with_context(|| format!("checking s3://{}/{full}", self.bucket))
            }
        }
    }

    /// Starts reading an object: its body and full key.
    async fn open(&self, key: &str) -> anyhow::Result<(AwsByteStream, String)> {
        let full = self.full_key(key)?;
        let out = self
            .patience
            .answer(
                self.client
                    .get_object()
                    .bucket(&self.bucket)
                    .key(&full)
                    .send(),
            )
            .await
            .with_context(|| format!("reading s3://{}/{full}", self.bucket))?
            .map_err(|e| {
                if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                    NotFound(format!("s3://{}/{full}", self.bucket)).into()
                } else {
                    s3_error(e).context(format!("reading s3://{}/{full}", self.bucket))
                }
            })?;
        Ok((out.body, full))
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        let mut s = format!("s3://{}/{}", self.bucket, self.prefix);
        if let Some(e) = &self.endpoint {
            s.push_str(&format!(" at {e}"));
        }
        s
    }

    fn patience(&self) -> Duration {
        self.patience.0
    }

    async fn check(&self) -> anyhow::Result<()> {
        let reached = self
            .patience
            .answer(self.client.head_bucket().bucket(&self.bucket).send())
            .await
            .with_context(|| {
                format!("cannot reach bucket {} ({})", self.bucket, self.describe())
            })?;
        reached.map_err(|e| {
                // HEAD answers carry no error code, only a status.
                let status = e.raw_response().map(|r| r.status().as_u16());
                let what = match status {
                    Some(403) => "the store denied access (403); check the credentials and what they may do in the bucket".to_string(),
                    Some(404) => "the bucket does not exist; create it or fix [storage] url".to_string(),
                    _ => format!("{:#}", s3_error(e)),
                };
                err(
                    Kind::StoreUnavailable,
                    format!("cannot reach bucket {} ({}): {what}", self.bucket, self.describe()),
                )
            })?;
        Ok(())
    }

    async fn upload(&self, key: &str, size_hint: u64) -> anyhow::Result<Box<dyn Upload>> {
        Ok(Box::new(S3Upload::new(
            self.client.clone(),
            self.bucket.clone(),
            self.full_key(key),
            size_hint,
            self.patience,
        )))
    }

    async fn put(&self, key: &str, data: Bytes, create_only: bool) -> anyhow::Result<()> {
        let full = self.full_key(key)?;
        let exists = || {
            anyhow::anyhow!(
                "s3://{}/{full} already exists; refusing to overwrite it",
                self.bucket
            )
        };
        let written = self
            .patience
            .answer(
                put_request(&self.client, &self.bucket, &full, data.clone(), create_only).send(),
            )
            .await
            .with_context(|| format!("writing s3://{}/{full}", self.bucket))?;
        match written {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("PreconditionFailed") => Err(exists()),
            Err(e) if create_only && matches!(e.code(), Some("NotImplemented")) => {
                // No conditional writes here: check, then write.
                if self.exists(&full).await? {
                    return Err(exists());
                }
                self.patience
                    .answer(put_request(&self.client, &self.bucket, &full, data, false).send())
                    .await?
                    .map_err(s3_error)
                    .with_context(|| format!("writing s3://{}/{full}", self.bucket))?;
                Ok(())
            }
            Err(e) => {
                Err(s3_error(e)).with_context(|| format!("writing s3://{}/{full}", self.bucket))
            }
        }
    }

    async fn get(&self, key: &str) -> anyhow::Result<Bytes> {
        let (body, full) = self.open(key).await?;
        let data = self
            .patience
            .answer(body.collect())
            .await
            .and_then(|r| r.map_err(anyhow::Error::from))
            .with_context(|| format!("reading s3://{}/{full}", self.bucket))?;
        Ok(data.into_bytes())
    }

    async fn get_stream(&self, key: &str) -> anyhow::Result<ByteStream> {
        let (body, full) = self.open(key).await?;
        let bucket = self.bucket.clone();
        let wait = self.read_timeout;
        let stream = futures_util::stream::try_unfold(
            (body, full, bucket),
            move |(mut body, full, bucket)| async move {
                let next = tokio::time::timeout(wait, body.try_next()).await.map_err(|_| {
                    err(
                        Kind::StoreUnavailable,
                        format!(
                            "the store sent nothing for {}s while reading s3://{bucket}/{full} ([storage] read_timeout_secs)",
                            wait.as_secs()
                        ),
                    )
                })?;
                match next {
                    Ok(Some(b)) => Ok(Some((b, (body, full, bucket)))),
                    Ok(None) => Ok(None),
                    Err(e) => Err(err(
                        Kind::StoreUnavailable,
                        format!("reading s3://{bucket}/{full}: {e}"),
                    )),
                }
            },
        );
        Ok(Box::pin(stream))
    }

    async fn list(&self, prefix: &str) -> anyhow::Result<Vec<ObjectInfo>> {
        let full_prefix = if self.prefix.is_empty() {
            prefix.to_string()
        } else {
            format!("{}/{prefix}", self.prefix)
        };
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full_prefix)
            .into_paginator()
            .send();
        while let Some(page) = self
            .patience
            .answer(pages.next())
            .await
            .with_context(|| format!("listing {}", self.describe()))?
        {
            let page = page
                .map_err(s3_error)
                .with_context(|| format!("listing {}", self.describe()))?;
            for o in page.contents() {
                if let Some(k) = o.key() {
                    out.push(ObjectInfo {
                        key: self.relative(k).to_string(),
                        size: o.size().unwrap_or(0).max(0) as u64,
                        modified: o.last_modified().and_then(to_time),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, keys: &[String]) -> anyhow::Result<()> {
        for key in keys {
            let full = self.full_key(key)?;
            self.patience
                .answer(
                    self.client
                        .delete_object()
                        .bucket(&self.bucket)
                        .key(&full)
                        .send(),
                )
                .await?
                .map_err(s3_error)
                .with_context(|| format!("removing s3://{}/{full}", self.bucket))?;
        }
        Ok(())
    }

    async fn pending_uploads(&self) -> anyhow::Result<Vec<PendingUpload>> {
        let mut out = Vec::new();
        let mut req = self.client.list_multipart_uploads().bucket(&self.bucket);
        if !self.prefix.is_empty() {
            req = req.prefix(format!("{}/", self.prefix));
        }
        let resp = self
            .patience
            .answer(req.send())
            .await?
            .map_err(s3_error)
            .with_context(|| format!("listing unfinished uploads in {}", self.describe()))?;
        for u in resp.uploads() {
            if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
                out.push(PendingUpload {
                    key: self.relative(k).to_string(),
                    upload_id: id.to_string(),
                    initiated: u.initiated().and_then(to_time),
                });
            }
        }
        Ok(out)
    }

    async fn abort_pending(&self, upload: &PendingUpload) -> anyhow::Result<()> {
        let full = self.full_key(&upload.key)?;
        self.patience
            .answer(
                self.client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&full)
                    .upload_id(&upload.upload_id)
                    .send(),
            )
            .await?
            .map_err(s3_error)
            .with_context(|| format!("aborting the upload of s3://{}/{full}", self.bucket))?;
        Ok(())
    }
}
