//! What the daemon has done, as Prometheus metrics (names from DESIGN.md) and as the JSON of
//! `/v1/status`. The schedule loops report here; nothing here runs a backup.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Schedule {
    schedule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Run {
    schedule: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Failure {
    schedule: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Build {
    version: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// One schedule as `/v1/status` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScheduleStatus {
    pub next_run: Option<DateTime<Utc>>,
    pub last_run: Option<DateTime<Utc>>,
    pub last_result: Option<String>,
    pub last_error: Option<String>,
    pub last_backup_id: Option<String>,
}

/// One slot's successful run, as the metrics and the status record it.
pub struct Success<'a> {
    pub backup_id: &'a str,
    pub rows: u64,
    pub bytes: u64,
    pub secs: f64,
    /// Backups retention left in the store.
    pub kept: usize,
    pub at: DateTime<Utc>,
}

/// The daemon's counters and what each schedule last did.
pub struct Metrics {
    registry: Registry,
    last_success: Family<Schedule, FloatGauge>,
    last_duration: Family<Schedule, FloatGauge>,
    next_run: Family<Schedule, FloatGauge>,
    runs: Family<Run, Counter>,
    failures: Family<Failure, Counter>,
    missed: Family<Schedule, Counter>,
    unrecorded: Family<Schedule, Counter>,
    bytes: Family<Schedule, Counter>,
    rows: Family<Schedule, Counter>,
    in_store: Gauge,
    status: Mutex<BTreeMap<String, ScheduleStatus>>,
}

impl Metrics {
    pub fn new(schedules: &[String]) -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            last_success: Family::default(),
            last_duration: Family::default(),
            next_run: Family::default(),
            runs: Family::default(),
            failures: Family::default(),
            missed: Family::default(),
            unrecorded: Family::default(),
            bytes: Family::default(),
            rows: Family::default(),
            in_store: Gauge::default(),
            status: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register(
            "backstop_schedule_last_success_timestamp_seconds",
            "When the schedule last backed up successfully (Unix time)",
            m.last_success.clone(),
        );
        registry.register(
            "backstop_schedule_last_duration_seconds",
            "How long the schedule's last run took",
            m.last_duration.clone(),
        );
        registry.register(
            "backstop_schedule_runs",
            "Runs of the schedule, by result",
            m.runs.clone(),
        );
        registry.register(
            "backstop_schedule_failures",
            "Failed runs of the schedule, by reason",
            m.failures.clone(),
        );
        registry.register(
            "backstop_schedule_missed_slots",
            "Slots that passed while no instance ran",
            m.missed.clone(),
        );
        registry.register(
            "backstop_schedule_unrecorded_runs",
            "Slots backed up whose record in the database could not be written",
            m.unrecorded.clone(),
        );
        registry.register(
            "backstop_schedule_next_run_timestamp_seconds",
            "When the schedule runs next (Unix time)",
            m.next_run.clone(),
        );
        registry.register(
            "backstop_backup_bytes",
            "Bytes stored by the schedule's backups",
            m.bytes.clone(),
        );
        registry.register(
            "backstop_backup_rows",
            "Rows saved by the schedule's backups",
            m.rows.clone(),
        );
        registry.register(
            "backstop_backups_in_store",
            "Complete backups in the store after the last retention",
            m.in_store.clone(),
        );
        let build: Family<Build, Gauge> = Family::default();
        build
            .get_or_create(&Build {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        registry.register("backstop_build_info", "The running version", build);
        let m = Metrics { registry, ..m };
        m.track(schedules);
        m
    }

    /// Follows these schedules from now on (at start, and after a reload): their series
    /// exist at once, so a dashboard sees zeros, not gaps; a schedule no longer configured
    /// leaves the status and has no next run.
    pub fn track(&self, schedules: &[String]) {
        for s in schedules {
            let label = Schedule {
                schedule: s.clone(),
            };
            let _ = self.missed.get_or_create(&label);
            let _ = self.unrecorded.get_or_create(&label);
            let _ = self.bytes.get_or_create(&label);
            let _ = self.rows.get_or_create(&label);
        }
        if let Ok(mut all) = self.status.lock() {
            let gone: Vec<String> = all
                .keys()
                .filter(|k| !schedules.contains(k))
                .cloned()
                .collect();
            for k in gone {
                all.remove(&k);
                self.next_run.remove(&Schedule { schedule: k });
            }
            for s in schedules {
                all.entry(s.clone()).or_default();
            }
        }
    }

    fn with_status(&self, schedule: &str, f: impl FnOnce(&mut ScheduleStatus)) {
        if let Ok(mut all) = self.status.lock() {
            f(all.entry(schedule.to_string()).or_default());
        }
    }

    pub fn next(&self, schedule: &str, at: DateTime<Utc>) {
        let label = Schedule {
            schedule: schedule.to_string(),
        };
        self.next_run
            .get_or_create(&label)
            .set(at.timestamp() as f64);
        self.with_status(schedule, |s| s.next_run = Some(at));
    }

    pub fn missed(&self, schedule: &str, n: u64) {
        let label = Schedule {
            schedule: schedule.to_string(),
        };
        self.missed.get_or_create(&label).inc_by(n);
    }

    /// A slot backed up whose record could not be written: the backup counts as a success.
    pub fn unrecorded(&self, schedule: &str) {
        let label = Schedule {
            schedule: schedule.to_string(),
        };
        self.unrecorded.get_or_create(&label).inc();
    }

    /// A slot backed up.
    pub fn succeeded(&self, schedule: &str, run: &Success) {
        let Success {
            backup_id,
            rows,
            bytes,
            secs,
            kept,
            at: now,
        } = *run;
        let label = Schedule {
            schedule: schedule.to_string(),
        };
        self.last_success
            .get_or_create(&label)
            .set(now.timestamp() as f64);
        self.last_duration.get_or_create(&label).set(secs);
        self.bytes.get_or_create(&label).inc_by(bytes);
        self.rows.get_or_create(&label).inc_by(rows);
        self.in_store.set(kept as i64);
        self.runs
            .get_or_create(&Run {
                schedule: schedule.to_string(),
                result: "success".into(),
            })
            .inc();
        self.with_status(schedule, |s| {
            s.last_run = Some(now);
            s.last_result = Some("success".into());
            s.last_error = None;
            s.last_backup_id = Some(backup_id.to_string());
        });
    }

    /// A slot failed: `reason` is the error kind, `error` the message (no secrets, no rows).
    pub fn failed(&self, schedule: &str, reason: &str, error: &str, secs: f64, now: DateTime<Utc>) {
        let label = Schedule {
            schedule: schedule.to_string(),
        };
        self.last_duration.get_or_create(&label).set(secs);
        self.runs
            .get_or_create(&Run {
                schedule: schedule.to_string(),
                result: "failure".into(),
            })
            .inc();
        self.failures
            .get_or_create(&Failure {
                schedule: schedule.to_string(),
                reason: reason.into(),
            })
            .inc();
        self.with_status(schedule, |s| {
            s.last_run = Some(now);
            s.last_result = Some("failure".into());
            s.last_error = Some(error.to_string());
        });
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("encoding the metrics: {e}");
        }
        out
    }

    pub fn status(&self) -> BTreeMap<String, ScheduleStatus> {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }
}
