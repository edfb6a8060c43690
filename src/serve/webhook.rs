//! `[notify]` webhooks: healthchecks.io-style dead-man switches told when a scheduled backup
//! starts, succeeds or fails. Each run's calls go out in order from a task of their own, so a
//! slow or failing receiver never delays or fails a backup, and a run's task waits for the
//! previous run of its schedule to have sent everything, so a receiver never hears a start
//! before the last run's end; each call is bounded in time and
//! tried a bounded number of times. The URLs are secrets (anyone holding a ping URL can report
//! a success), so logs name the hook and the host, never the URL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{NotifyConfig, Secret};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, USER_AGENT};
use hyper::{Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

/// One call may take this long (connect, send, answer).
const TIMEOUT: Duration = Duration::from_secs(5);
/// Calls per event at most, with a pause that doubles from `FIRST_PAUSE` in between.
const ATTEMPTS: u32 = 3;
const FIRST_PAUSE: Duration = Duration::from_secs(1);

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// What a receiver gets, as JSON.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    /// `start`, `success` or `failure`.
    pub event: &'static str,
    pub schedule: String,
    pub backup_id: Option<String>,
    pub rows: Option<u64>,
    pub bytes: Option<u64>,
    pub duration_seconds: Option<f64>,
    /// Why the run failed (the same message as the log; no secrets, no row values).
    pub error: Option<String>,
}

/// The configured hooks and one HTTP client for all of them.
#[derive(Clone)]
pub struct Webhooks {
    hooks: Arc<NotifyConfig>,
    client: Option<HttpClient>,
    /// Calls still going out; shutdown waits a bounded time for them.
    pending: TaskTracker,
    /// Per schedule, what resolves once its last run has sent all its calls.
    last_run: Arc<Mutex<HashMap<String, oneshot::Receiver<()>>>>,
}

impl Webhooks {
    pub fn new(config: &NotifyConfig, pending: TaskTracker) -> Webhooks {
        let client = if config.hooks().next().is_none() {
            None
        } else {
            Some(client())
        };
        Webhooks {
            hooks: Arc::new(config.clone()),
            client,
            pending,
            last_run: Arc::default(),
        }
    }

    /// The notifications of one run of `schedule`, sent in the order they are given.
    pub fn run(&self, schedule: &str) -> RunHooks {
        let Some(client) = self.client.clone() else {
            return RunHooks {
                schedule: schedule.to_string(),
                tx: None,
            };
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
        let hooks = self.hooks.clone();
        let (sent, next) = oneshot::channel::<()>();
        let previous = self
            .last_run
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(schedule.to_string(), next);
        self.pending.spawn(async move {
            if let Some(previous) = previous {
                // Resolves (Ok or Err) once the previous run's task has ended.
                let _ = previous.await;
            }
            while let Some(event) = rx.recv().await {
                let (key, url) = match event.event {
                    "start" => ("on_start", &hooks.on_start),
                    "success" => ("on_success", &hooks.on_success),
                    _ => ("on_failure", &hooks.on_failure),
                };
                if let Some(url) = url {
                    deliver(&client, key, url, &event).await;
                }
            }
            drop(sent);
        });
        RunHooks {
            schedule: schedule.to_string(),
            tx: Some(tx),
        }
    }
}

/// The calls of one run: `started`, then `succeeded` or `failed`.
pub struct RunHooks {
    schedule: String,
    tx: Option<mpsc::UnboundedSender<Event>>,
}

impl RunHooks {
    fn send(&self, event: Event) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(event);
        }
    }

    fn event(&self, event: &'static str) -> Event {
        Event {
            event,
            schedule: self.schedule.clone(),
            backup_id: None,
            rows: None,
            bytes: None,
            duration_seconds: None,
            error: None,
        }
    }

    pub fn started(&self) {
        self.send(self.event("start"));
    }

    pub fn succeeded(&self, backup_id: &str, rows: u64, bytes: u64, secs: f64) {
        self.send(Event {
            backup_id: Some(backup_id.to_string()),
            rows: Some(rows),
            bytes: Some(bytes),
            duration_seconds: Some(secs),
            ..self.event("success")
        });
    }

    pub fn failed(&self, error: &str, secs: f64) {
        self.send(Event {
            duration_seconds: Some(secs),
            error: Some(error.to_string()),
            ..self.event("failure")
        });
    }
}

fn client() -> HttpClient {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match builder.with_provider_and_native_roots(provider.clone()) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!("no trusted certificates for webhooks ({e}); https webhooks will fail, http ones work");
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| {
                    b.with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth()
                })
                .unwrap_or_else(|_| {
                    rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth()
                });
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
        }
    };
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(TIMEOUT));
    http.enforce_http(false);
    let https = builder.https_or_http().enable_http1().wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(https)
}

/// Where a URL goes, for logs: the host only, since the path is the secret.
fn host_of(url: &str) -> String {
    url.parse::<Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Posts `event` to `url`, trying again after a network error, a timeout or a 5xx answer.
async fn deliver(client: &HttpClient, key: &str, url: &Secret, event: &Event) {
    let host = host_of(&url.0);
    let Ok(uri) = url.0.parse::<Uri>() else {
        tracing::warn!("webhook {key} ({host}): the URL does not parse; nothing sent");
        return;
    };
    let body = Bytes::from(serde_json::to_vec(event).unwrap_or_default());
    let mut pause = FIRST_PAUSE;
    for attempt in 1..=ATTEMPTS {
        let request = Request::post(uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("backstop/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(body.clone()));
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("webhook {key} ({host}): cannot build the request: {e}");
                return;
            }
        };
        let why = match tokio::time::timeout(TIMEOUT, client.request(request)).await {
            Ok(Ok(answer)) if answer.status().is_success() => {
                tracing::debug!("webhook {key} ({host}): {}", answer.status());
                return;
            }
            Ok(Ok(answer)) if answer.status().is_client_error() => {
                // The receiver refuses this request; asking again will not change its mind.
                tracing::warn!(
                    "webhook {key} ({host}) answered {}; check the URL in [notify]",
                    answer.status()
                );
                return;
            }
            Ok(Ok(answer)) => format!("answered {}", answer.status()),
            Ok(Err(e)) => format!("failed: {}", error_chain(&e)),
            Err(_) => format!("did not answer within {}s", TIMEOUT.as_secs()),
        };
        if attempt == ATTEMPTS {
            tracing::warn!(
                "webhook {key} ({host}) {why}; gave up after {ATTEMPTS} attempts (the backup is not affected)"
            );
            return;
        }
        tracing::info!("webhook {key} ({host}) {why}; trying again in {pause:?}");
        tokio::time::sleep(pause).await;
        pause *= 2;
    }
}

/// The error and its causes on one line; hyper's top-level message alone says little.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_name_the_host_not_the_secret_path() {
        assert_eq!(
            host_of("https://hc-ping.com/5f1b2c-uuid/fail"),
            "hc-ping.com"
        );
        assert_eq!(host_of("not a url"), "?");
    }

    #[test]
    fn the_body_has_every_field_even_when_empty() {
        let hooks = RunHooks {
            schedule: "nightly".into(),
            tx: None,
        };
        let v = serde_json::to_value(hooks.event("start")).unwrap();
        for key in [
            "event",
            "schedule",
            "backup_id",
            "rows",
            "bytes",
            "duration_seconds",
            "error",
        ] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
        assert_eq!(v["event"], "start");
    }
}
