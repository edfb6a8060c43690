//! `serve`: the daemon ([`backstop::serve`]) on the system clock, with SIGHUP as its reload
//! signal.

use std::sync::Arc;

use backstop::error::ExitCode;
use backstop::serve::{serve, SystemClock};

use super::{Ctx, Output};

pub async fn run(ctx: &Ctx) -> anyhow::Result<Output> {
    // Taken over before anything else, so a hangup never ends the process.
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let (reload, reloads) = tokio::sync::mpsc::channel(1);
    let forward = tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            // A reload already waiting covers this one too.
            let _ = reload.try_send(());
        }
    });
    let served = serve(
        ctx.config_path.as_deref(),
        ctx.op.clone(),
        Arc::new(SystemClock),
        reloads,
    )
    .await;
    forward.abort();
    served?;
    Ok(Output {
        json: serde_json::json!({ "stopped": true }),
        text: String::new(),
        code: ExitCode::Success,
    })
}
