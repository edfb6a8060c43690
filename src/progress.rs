//! Progress on stderr, only when stderr is a terminal (never in CI logs or under systemd).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A shared byte/row counter; a no-op when nobody is watching.
#[derive(Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
    rows: Arc<AtomicU64>,
}

impl Progress {
    /// A bar for `total` bytes (an estimate) when stderr is a terminal and `enabled`.
    pub fn new(what: &str, total: u64, enabled: bool) -> Progress {
        if !enabled || !std::io::stderr().is_terminal() {
            return Progress::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(total.max(1)), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(what.to_string());
        Progress {
            bar: Some(bar),
            rows: Arc::default(),
        }
    }

    pub fn hidden() -> Progress {
        Progress {
            bar: None,
            rows: Arc::default(),
        }
    }

    pub fn add(&self, bytes: u64, rows: u64) {
        if let Some(b) = &self.bar {
            b.inc(bytes);
            let done = self.rows.fetch_add(rows, Ordering::Relaxed) + rows;
            b.set_message(format!("{done} rows"));
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
