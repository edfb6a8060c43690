//! The daemon's HTTP side on `[server] listen`: health for supervisors, readiness naming the
//! dependency that does not answer, Prometheus metrics, schedule status and the backup list.
//! `app` is a plain function of the state, so it needs no socket to be understood.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use backstop::ops::list::list;
use backstop::ops::Workspace;

use super::metrics::Metrics;

/// What the handlers share.
pub struct Daemon {
    pub ws: Arc<Workspace>,
    pub metrics: Arc<Metrics>,
}

pub fn app(state: Arc<Daemon>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/backups", get(backups))
        .with_state(state)
}

async fn readyz(State(d): State<Arc<Daemon>>) -> Response {
    let problems = d.ws.unavailable().await;
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
    let listed = async {
        let store = d.ws.store().await?;
        let db = d.ws.database().ok();
        let schema = d.ws.config().database.schema.clone();
        list(&*store, db.as_ref().map(|db| (db, schema.as_str()))).await
    }
    .await;
    match listed {
        Ok(l) => Json(l.to_json()).into_response(),
        Err(e) => {
            let kind = backstop::error::kind_of(&e);
            let status = StatusCode::from_u16(kind.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (
                status,
                Json(serde_json::json!({ "error": format!("{e:#}"), "kind": kind })),
            )
                .into_response()
        }
    }
}
