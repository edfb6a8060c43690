//! The HTTP side: health, readiness, metrics, status, the backup list, and "back up now"
//! behind a bearer token.

use std::time::{Duration, Instant};

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

#[tokio::test]
async fn health_readiness_metrics_and_status_over_http() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = scheduled(&db, &store).await;
    let (child, port) = start_http(&mut p);
    // Wait for the HTTP side, then for a run to show in the metrics.
    let started = Instant::now();
    let mut metrics = String::new();
    loop {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            drop(s);
            let (code, body) = get(port, "/metrics");
            assert_eq!(code, 200, "{body}");
            metrics = body;
            let runs = sample(
                &metrics,
                "backstop_schedule_runs_total{schedule=\"fast\",result=\"success\"}",
            );
            if runs.unwrap_or(0.0) >= 1.0 {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no successful run in the metrics:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get(port, "/healthz").0, 200);
    assert_eq!(get(port, "/readyz").0, 200);
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
    assert!(sample(&metrics, "backstop_backup_rows_total{schedule=\"fast\"}").unwrap() >= 100.0);
    assert!(
        metrics.contains("backstop_build_info{version="),
        "{metrics}"
    );
    let (code, status) = get(port, "/v1/status");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        status["schedules"]["fast"]["last_result"], "success",
        "{status}"
    );
    let (code, listed) = get(port, "/v1/backups");
    assert_eq!(code, 200);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert!(
        !listed["backups"].as_array().unwrap().is_empty(),
        "{listed}"
    );
    assert!(!listed.to_string().contains(&db.url), "{listed}");
    let (code, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test]
async fn back_up_now_over_http_only_with_the_configured_token() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = scheduled(&db, &store).await;
    // A schedule that will not fire during the test: every backup here is asked for.
    p.set_section("[schedule]", "name = \"nightly\"\ncron = \"0 0 3 * * *\"");
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

    // Without a token the endpoint is off for everyone.
    let (child, port) = start_http(&mut p);
    let (code, body) = request(
        port,
        "POST",
        "/v1/backups",
        &[("Authorization", "Bearer anything")],
        "",
    );
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("[server] token"), "{body}");
    let (code, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(manual(&p).is_empty());

    // With one, a wrong or missing token is 401 and the right one backs up.
    let token = "t0ken-Secret-42";
    let port = free_port();
    p.set_section(
        "server",
        &format!("listen = \"127.0.0.1:{port}\"\ntoken = \"{token}\""),
    );
    let child = start(&p);
    wait_listening(port);
    for headers in [
        vec![],
        vec![("Authorization", "Bearer t0ken-Secret-43")],
        vec![("Authorization", "Basic dDBrZW4tU2VjcmV0LTQy")],
    ] {
        let (code, body) = request(port, "POST", "/v1/backups", &headers, "");
        assert_eq!(code, 401, "{headers:?}: {body}");
        assert!(!body.contains(token), "{body}");
    }
    assert!(manual(&p).is_empty(), "a refused request backed up");
    let bearer = format!("Bearer {token}");
    let (code, body) = request(
        port,
        "POST",
        "/v1/backups",
        &[("Authorization", &bearer)],
        "{\"tables\": [\"nope\"]}",
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("nope"), "{body}");
    let (code, body) = request(
        port,
        "POST",
        "/v1/backups",
        &[
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
        ],
        "{\"label\": \"before the release\"}",
    );
    assert_eq!(code, 201, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let (code, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
    let listed = manual(&p);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], answer["id"], "{body}");
    assert_eq!(listed[0]["rows"], 100, "{listed:?}");
    assert_eq!(listed[0]["label"], "before the release");
    assert!(!stderr.contains(token), "{stderr}");
    p.ok(&["backups", "verify", answer["id"].as_str().unwrap()]);
}
