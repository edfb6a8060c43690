//! The HTTP side in-process (the router `serve` builds, called with `oneshot`): health,
//! readiness naming what does not answer, metrics, status, the backup list, and "back up
//! now" behind a bearer token. The helpers talk to a real `serve` over a socket.

use std::sync::Arc;
use std::time::Duration;

use backstop::context::OpContext;
use backstop::ops::Workspace;
use backstop::serve::http::{app, Daemon};
use backstop::serve::metrics::Metrics;
use backstop::serve::{Clock, ManualClock};
use tower::ServiceExt;

use super::*;

/// `GET path` over plain HTTP/1.1: (status, body).
pub fn get(port: u16, path: &str) -> (u16, String) {
    request(port, "GET", path, &[], "")
}

/// One HTTP/1.1 request with `headers` and `body`: (status, body).
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    write!(s, "{head}\r\n{body}").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw[9..12].parse().unwrap();
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of one sample in a Prometheus text exposition.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l[series.len()..].trim().parse().ok())
}

/// The router as `serve` builds it, over a workspace of `p`, with `metrics`.
fn router(p: &Project, metrics: Arc<Metrics>) -> axum::Router {
    let ws = Arc::new(Workspace::load(Some(&p.path().join("backstop.toml"))).unwrap());
    app(Arc::new(Daemon::new(ws, metrics, OpContext::default())))
}

/// One request through the router, in-process: (status, headers, body).
async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, axum::http::HeaderMap, String) {
    let mut request = axum::http::Request::builder().method(method).uri(path);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .unwrap();
    (status, headers, String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test]
async fn health_readiness_metrics_status_and_the_backup_list() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let p = scheduled(&db, &store).await;
    // One slot runs on a clock the test moves, so the metrics have something to say.
    let clock = Arc::new(ManualClock::new(
        chrono::DateTime::parse_from_rfc3339("2026-06-01T10:00:00.5Z")
            .unwrap()
            .with_timezone(&chrono::Utc),
    ));
    let loops = super::clock::start(&p, &clock, "a");
    super::clock::settled(&clock, 1, 0).await;
    super::clock::move_to(&clock, clock.now() + chrono::TimeDelta::seconds(2), 1).await;
    let app = router(&p, loops.metrics.clone());
    assert_eq!(call(&app, "GET", "/healthz", &[], "").await.0, 200);
    assert_eq!(call(&app, "GET", "/readyz", &[], "").await.0, 200);
    let (code, headers, metrics) = call(&app, "GET", "/metrics", &[], "").await;
    assert_eq!(code, 200, "{metrics}");
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    for series in [
        "backstop_schedule_last_success_timestamp_seconds{schedule=\"fast\"}",
        "backstop_schedule_last_duration_seconds{schedule=\"fast\"}",
        "backstop_schedule_next_run_timestamp_seconds{schedule=\"fast\"}",
        "backstop_backup_rows_total{schedule=\"fast\"}",
        "backstop_backup_bytes_total{schedule=\"fast\"}",
        "backstop_schedule_missed_slots_total{schedule=\"fast\"}",
        "backstop_backups_in_store",
    ] {
        assert!(
            sample(&metrics, series).is_some(),
            "no {series} in\n{metrics}"
        );
    }
    assert_eq!(
        sample(
            &metrics,
            "backstop_schedule_runs_total{schedule=\"fast\",result=\"success\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "backstop_schedule_last_success_timestamp_seconds{schedule=\"fast\"}"
        ),
        Some(clock.now().timestamp() as f64),
        "the time of the run is the clock's"
    );
    assert_eq!(
        sample(&metrics, "backstop_backup_rows_total{schedule=\"fast\"}"),
        Some(100.0)
    );
    assert!(
        metrics.contains("backstop_build_info{version="),
        "{metrics}"
    );
    let (code, _, status) = call(&app, "GET", "/v1/status", &[], "").await;
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        status["schedules"]["fast"]["last_result"], "success",
        "{status}"
    );
    let (code, _, listed) = call(&app, "GET", "/v1/backups", &[], "").await;
    assert_eq!(code, 200);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["backups"].as_array().unwrap().len(), 1, "{listed}");
    assert!(!listed.to_string().contains(&db.url), "{listed}");
    assert_eq!(call(&app, "GET", "/nope", &[], "").await.0, 404);
    assert_eq!(call(&app, "DELETE", "/v1/backups", &[], "").await.0, 405);
    loops.stop().await;
    // A database that does not answer: not ready, and the answer says which.
    let mut down = Project::empty("postgres://postgres@127.0.0.1:1/nothing");
    down.use_store(&store);
    let (code, _, body) = call(
        &router(&down, Arc::new(Metrics::new(&[]))),
        "GET",
        "/readyz",
        &[],
        "",
    )
    .await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("database"), "{body}");
}

#[tokio::test]
async fn back_up_now_only_with_the_configured_token() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = scheduled(&db, &store).await;
    let manual = |p: &Project| -> Vec<serde_json::Value> {
        let (_, v) = p.json(&["backups", "list"]);
        v["backups"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["kind"] == "manual")
            .cloned()
            .collect()
    };
    let metrics = || Arc::new(Metrics::new(&["fast".to_string()]));

    // Without a token the endpoint is off for everyone.
    let app = router(&p, metrics());
    let (code, _, body) = call(
        &app,
        "POST",
        "/v1/backups",
        &[("Authorization", "Bearer anything")],
        "",
    )
    .await;
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("[server] token"), "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["kind"],
        "usage"
    );

    // With one, a wrong or missing token is 401 and the right one backs up.
    let token = "t0ken-Secret-42";
    p.set_section(
        "server",
        &format!("listen = \"127.0.0.1:1\"\ntoken = \"{token}\""),
    );
    let app = router(&p, metrics());
    for headers in [
        vec![],
        vec![("Authorization", "Bearer t0ken-Secret-43")],
        vec![("Authorization", "Basic dDBrZW4tU2VjcmV0LTQy")],
    ] {
        let (code, answer_headers, body) = call(&app, "POST", "/v1/backups", &headers, "").await;
        assert_eq!(code, 401, "{headers:?}: {body}");
        assert_eq!(answer_headers["www-authenticate"], "Bearer");
        assert!(!body.contains(token), "{body}");
    }
    assert!(manual(&p).is_empty(), "a refused request backed up");
    let bearer = format!("Bearer {token}");
    let auth = [("Authorization", bearer.as_str())];
    let (code, _, body) = call(
        &app,
        "POST",
        "/v1/backups",
        &auth,
        "{\"tables\": [\"nope\"]}",
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("nope"), "{body}");
    let (code, _, body) = call(&app, "POST", "/v1/backups", &auth, "{\"tabels\": []}").await;
    assert_eq!(code, 400, "a misspelt key is refused, not ignored: {body}");
    let (code, _, body) = call(
        &app,
        "POST",
        "/v1/backups",
        &[auth[0], ("Content-Type", "application/json")],
        "{\"label\": \"before the release\"}",
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let listed = manual(&p);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], answer["id"], "{body}");
    assert_eq!(listed[0]["rows"], 100, "{listed:?}");
    assert_eq!(listed[0]["label"], "before the release");
    p.ok(&["backups", "verify", answer["id"].as_str().unwrap()]);
}

#[tokio::test]
async fn a_flood_of_readiness_checks_opens_no_flood_of_connections() {
    let db = TestDb::new().await;
    // A role that may hold two connections: a readiness check per request would run out.
    let role = unique("ready");
    let c = db.client().await;
    c.batch_execute(&format!("CREATE ROLE \"{role}\" LOGIN CONNECTION LIMIT 2"))
        .await
        .unwrap();
    let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(url, db.url, "the test url names no user: {}", db.url);
    let held = (connect(&url).await, connect(&url).await);
    let third = tokio_postgres::connect(&url, tokio_postgres::NoTls).await;
    assert!(
        third.is_err(),
        "the role's connection limit is not enforced"
    );
    drop(held);
    let p = Project::new_with_url(&url);
    let app = router(&p, Arc::new(Metrics::new(&[])));
    let calls: Vec<_> = (0..300)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { call(&app, "GET", "/readyz", &[], "").await })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }
    let refused: Vec<&String> = answers
        .iter()
        .filter(|(status, _, _)| *status != 200)
        .map(|(_, _, body)| body)
        .collect();
    assert!(
        refused.is_empty(),
        "{} of 300 refused, the first: {}",
        refused.len(),
        refused[0]
    );
    c.batch_execute(&format!("DROP ROLE \"{role}\""))
        .await
        .unwrap();
}

#[tokio::test]
async fn readiness_asks_over_one_connection_it_keeps() {
    let db = TestDb::new().await;
    // A role that may hold one connection: a check that opened a new one each time (while
    // the last had not closed yet) or leaked them would be refused.
    let role = unique("kept");
    let c = db.client().await;
    c.batch_execute(&format!("CREATE ROLE \"{role}\" LOGIN CONNECTION LIMIT 1"))
        .await
        .unwrap();
    let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(url, db.url, "the test url names no user: {}", db.url);
    let p = Project::new_with_url(&url);
    let ws = Arc::new(Workspace::load(Some(&p.path().join("backstop.toml"))).unwrap());
    let readiness = backstop::serve::ready::Readiness::default();
    let backends = || async {
        let rows = c
            .query(
                "SELECT pid FROM pg_stat_activity WHERE usename = $1",
                &[&role],
            )
            .await
            .unwrap();
        rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>()
    };
    // Each check_now asks again, whatever the last answer's age.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let problems = readiness.check_now(&ws).await;
        assert!(
            problems.is_empty(),
            "{:?}",
            problems
                .iter()
                .map(|(w, e)| format!("{w}: {e:#}"))
                .collect::<Vec<_>>()
        );
        seen.push(backends().await);
    }
    assert_eq!(seen[0].len(), 1, "{seen:?}");
    assert!(
        seen.iter().all(|s| s == &seen[0]),
        "one backend throughout: {seen:?}"
    );
    // A connection that breaks is opened again.
    c.execute("SELECT pg_terminate_backend($1)", &[&seen[0][0]])
        .await
        .unwrap();
    let terminated = std::time::Instant::now();
    while !backends().await.is_empty() {
        assert!(
            terminated.elapsed() < Duration::from_secs(10),
            "the terminated backend never went"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(readiness.check_now(&ws).await.is_empty());
    let again = backends().await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_ne!(again, seen[0]);
    drop(readiness);
    c.batch_execute(&format!("DROP ROLE \"{role}\""))
        .await
        .unwrap();
}
