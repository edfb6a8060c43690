//! The daemon's HTTP side on `[server] listen`: health for supervisors, readiness naming the
//! dependency that does not answer, Prometheus metrics, schedule status, the backup list, and
//! "back up now" for whoever holds the bearer token. `app` is a plain function of the state,
//! so it needs no socket to be understood.

use std::sync::{Arc, RwLock};

use crate::backup::manifest::Kind;
use crate::context::OpContext;
use crate::ops::backup::{back_up, BackupOptions};
use crate::ops::list::list;
use crate::ops::Workspace;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::Mutex;

use super::metrics::Metrics;
use super::ready::Readiness;

/// What the handlers share. The workspace is replaced when SIGHUP brings a new configuration.
pub struct Daemon {
    current: RwLock<Arc<Workspace>>,
    pub metrics: Arc<Metrics>,
    /// The daemon's operation context: a backup asked for over HTTP stops at shutdown.
    op: OpContext,
    /// Held while a backup asked for over HTTP runs: one at a time.
    manual: Mutex<()>,
    /// Whether the database and store answer, shared by every `/readyz` and by `READY=1`.
    pub readiness: Readiness,
    /// The last `GET /v1/backups` answer, shared the same way for [`LIST_FRESH`]: 400
    /// requests at once read the store once and hold one copy of the answer, not 400.
    listing: Mutex<Option<(tokio::time::Instant, Bytes)>>,
}

/// How long one backup list is reused (a backup asked for over HTTP, or a reload, clears it).
pub const LIST_FRESH: std::time::Duration = std::time::Duration::from_secs(2);

impl Daemon {
    pub fn new(ws: Arc<Workspace>, metrics: Arc<Metrics>, op: OpContext) -> Daemon {
        Daemon {
            current: RwLock::new(ws),
            metrics,
            op,
            manual: Mutex::new(()),
            readiness: Readiness::default(),
            listing: Mutex::new(None),
        }
    }

    /// The backup list as `GET /v1/backups` answers it, read from the store at most once
    /// per [`LIST_FRESH`] however many ask; failures are not kept.
    pub async fn listing(&self) -> anyhow::Result<Bytes> {
        let mut last = self.listing.lock().await;
        if let Some((at, body)) = &*last {
            if at.elapsed() < LIST_FRESH {
                return Ok(body.clone());
            }
        }
        let ws = self.ws();
        let store = ws.store().await?;
        let db = ws.database().ok();
        let schema = ws.config().database.schema.clone();
        let listed = list(&*store, db.as_ref().map(|db| (db, schema.as_str()))).await?;
        let body = Bytes::from(serde_json::to_vec(&listed.to_json())?);
        *last = Some((tokio::time::Instant::now(), body.clone()));
        Ok(body)
    }

    async fn forget_listing(&self) {
        *self.listing.lock().await = None;
    }

    /// What does not answer now (the database, the store), checked at most once per
    /// [`super::ready::READY_FRESH`] however many ask.
    pub async fn unavailable(&self) -> Vec<String> {
        self.readiness.unavailable(&self.ws()).await
    }

    /// The configuration in force now.
    pub fn ws(&self) -> Arc<Workspace> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn replace(&self, ws: Arc<Workspace>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = ws;
        self.readiness.forget();
        if let Ok(mut listing) = self.listing.try_lock() {
            *listing = None;
        }
    }
}

pub fn app(state: Arc<Daemon>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/backups", get(backups).post(back_up_now))
        .with_state(state)
}

async fn readyz(State(d): State<Arc<Daemon>>) -> Response {
    let problems = d.unavailable().await;
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", problems.join("; ")),
        )
            .into_response()
    }
}

async fn metrics(State(d): State<Arc<Daemon>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        d.metrics.encode(),
    )
        .into_response()
}

async fn status(State(d): State<Arc<Daemon>>) -> Response {
    Json(serde_json::json!({ "schedules": d.metrics.status() })).into_response()
}

async fn backups(State(d): State<Arc<Daemon>>) -> Response {
    match d.listing().await {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => failure(&e),
    }
}

/// An operation's error as JSON, with the status its kind maps to.
fn failure(e: &anyhow::Error) -> Response {
    let kind = crate::error::kind_of(e);
    let status =
        StatusCode::from_u16(kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        Json(serde_json::json!({ "error": format!("{e:#}"), "kind": kind })),
    )
        .into_response()
}

fn refusal(status: StatusCode, kind: &str, error: &str) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": error, "kind": kind })),
    )
        .into_response()
}

/// What `POST /v1/backups` may carry; an empty body backs up what `backup` would.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupRequest {
    #[serde(default)]
    tables: Vec<String>,
    label: Option<String>,
}

/// `POST /v1/backups`: a `manual` backup now, as `backstop backup` takes it; the answer is
/// its manifest, as `backup --json` prints it.
async fn back_up_now(State(d): State<Arc<Daemon>>, headers: HeaderMap, body: Bytes) -> Response {
    let ws = d.ws();
    let Some(token) = ws
        .config()
        .server
        .token
        .as_ref()
        .filter(|t| !t.0.is_empty())
    else {
        // Off unless configured: the endpoint does not exist for anyone.
        return refusal(
            StatusCode::NOT_FOUND,
            "usage",
            "POST /v1/backups is off: set [server] token (or BACKSTOP_SERVER_TOKEN) to turn it on",
        );
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .unwrap_or("");
    if !same_secret(given.trim().as_bytes(), token.0.as_bytes()) {
        let mut answer = refusal(
            StatusCode::UNAUTHORIZED,
            "usage",
            "a missing or wrong bearer token: send Authorization: Bearer <[server] token>",
        );
        answer.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return answer;
    }
    let request: BackupRequest = if body.iter().all(u8::is_ascii_whitespace) {
        BackupRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return refusal(
                    StatusCode::BAD_REQUEST,
                    "usage",
                    &format!("the body is not a backup request ({e}); send {{}} or {{\"tables\": [\"t\"], \"label\": \"...\"}}"),
                )
            }
        }
    };
    let Ok(_one_at_a_time) = d.manual.try_lock() else {
        return refusal(
            StatusCode::CONFLICT,
            "lock_held",
            "a backup asked for over HTTP is still running; wait for its answer",
        );
    };
    let options = BackupOptions {
        kind: Kind::Manual,
        tables: request.tables,
        label: request.label,
        target_revision: None,
        every_schema: false,
    };
    let taken = async {
        let store = ws.store().await?;
        back_up(&ws, &*store, &options, &d.op.child()).await
    }
    .await;
    match taken {
        Ok(m) => {
            d.forget_listing().await;
            tracing::info!(
                "backup {} taken over HTTP ({} rows, {} bytes stored)",
                m.id,
                m.rows(),
                m.compressed_bytes()
            );
            (StatusCode::CREATED, Json(m)).into_response()
        }
        Err(e) => {
            tracing::error!("a backup asked for over HTTP failed: {e:#}");
            failure(&e)
        }
    }
}

/// The credentials of an `Authorization: Bearer ...` value; the scheme is compared
/// case-insensitively (RFC 9110, section 11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(credentials.trim())
}

/// Compares a presented token with the configured one in time that does not depend on where
/// they differ, so the token cannot be guessed byte by byte.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let mut differ = given.len() ^ expected.len();
    for (i, e) in expected.iter().enumerate() {
        differ |= usize::from(given.get(i).copied().unwrap_or(0) ^ e);
    }
    differ == 0
}

#[cfg(test)]
mod tests {
    use super::{bearer, same_secret};

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer s3cret"), Some("s3cret"));
        assert_eq!(bearer("bearer s3cret"), Some("s3cret"));
        assert_eq!(bearer("BEARER  s3cret "), Some("s3cret"));
        assert_eq!(bearer("Basic s3cret"), None);
        assert_eq!(bearer("Bearers3cret"), None);
    }

    #[test]
    fn tokens_match_only_when_equal() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cre", b"s3cret"));
        assert!(!same_secret(b"s3cret!", b"s3cret"));
        assert!(!same_secret(b"", b"s3cret"));
        assert!(!same_secret(b"S3cret", b"s3cret"));
    }
}
