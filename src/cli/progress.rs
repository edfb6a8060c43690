//! Progress on stderr, only when stderr is a terminal (never in CI logs or under systemd):
//! the terminal's [`Observer`] of an operation.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use backstop::context::Observer;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A byte bar with a row count, one per stage.
pub struct Bar {
    bar: Mutex<Option<ProgressBar>>,
    rows: AtomicU64,
}

impl Bar {
    /// A bar when stderr is a terminal; `None` otherwise.
    pub fn on_terminal() -> Option<Bar> {
        std::io::stderr().is_terminal().then(|| Bar {
            bar: Mutex::new(None),
            rows: AtomicU64::new(0),
        })
    }
}

impl Observer for Bar {
    fn begin(&self, stage: &str, estimated_bytes: u64) {
        let bar = ProgressBar::with_draw_target(
            Some(estimated_bytes.max(1)),
            ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(stage.to_string());
        self.rows.store(0, Ordering::Relaxed);
        if let Ok(mut slot) = self.bar.lock() {
            *slot = Some(bar);
        }
    }

    fn advance(&self, bytes: u64, rows: u64) {
        if let Ok(slot) = self.bar.lock() {
            if let Some(b) = slot.as_ref() {
                b.inc(bytes);
                let done = self.rows.fetch_add(rows, Ordering::Relaxed) + rows;
                b.set_message(format!("{done} rows"));
            }
        }
    }

    fn end(&self) {
        if let Ok(mut slot) = self.bar.lock() {
            if let Some(b) = slot.take() {
                b.finish_and_clear();
            }
        }
    }
}
