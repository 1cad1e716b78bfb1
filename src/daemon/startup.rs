//! Start-up: the worker threads load the model (and warm up) before anything connects to the broker, so that
//! READY means "can stylise"; meanwhile systemd's start timeout is kept ahead of a long TensorRT engine build.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::cannot_start;
use super::worker::{self, Shared, WorkerSetup};
use crate::engine::runtime::Shape;
use crate::engine::RuntimeOptions;

pub(super) fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(error = %e, "sd_notify");
    }
}

/// Start `daemon.workers` worker threads and wait until each has loaded the model. A worker that cannot load it
/// is a start-up failure (`CannotStart`); the others are told to stop.
pub(super) async fn start_workers(
    shared: &Arc<Shared>,
    model_dir: &Path,
    runtime: RuntimeOptions,
    warmup_shapes: Vec<Shape>,
) -> Result<Vec<JoinHandle<()>>> {
    let cfg = &shared.config;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut handles = Vec::new();
    for i in 0..cfg.daemon.workers {
        let setup = WorkerSetup {
            model_dir: model_dir.to_path_buf(),
            runtime: runtime.clone(),
            warmup_shapes: warmup_shapes.clone(),
            warmup: cfg.daemon.warmup,
        };
        let (s, r) = (shared.clone(), ready_tx.clone());
        handles.push(
            std::thread::Builder::new()
                .name(format!("fuchun-worker-{i}"))
                .spawn(move || worker::run(i, s, setup, r))?,
        );
    }
    drop(ready_tx);
    // loading (and TensorRT engine builds, and the warm-up) may take minutes: keep systemd's start timeout ahead
    let startup = tokio::spawn(extend_startup(cfg.daemon.max_startup_seconds));
    let readiness = tokio::task::spawn_blocking(move || ready_rx.iter().collect::<Vec<_>>()).await;
    startup.abort();
    let mut report = None;
    for r in readiness? {
        match r {
            Ok(p) => report = report.or(Some(p)),
            Err(e) => {
                shared.queue.close();
                return Err(cannot_start(anyhow::anyhow!("loading the model from {}: {e}", model_dir.display())));
            }
        }
    }
    let report = report.context("no worker reported")?;
    *shared.provider.lock().unwrap() = report.provider.to_string();
    *shared.provider_report.lock().unwrap() = report.to_json();
    tracing::info!(model = %model_dir.display(), provider = %report.summary(), workers = cfg.daemon.workers, "model loaded");
    Ok(handles)
}

/// While the workers load the model: every 20 s extend systemd's start timeout by a minute (EXTEND_TIMEOUT_USEC,
/// so TimeoutStartSec does not kill a TensorRT engine build) and say what is going on (STATUS), for at most
/// `max_seconds`; after that systemd's own timeout applies again.
async fn extend_startup(max_seconds: u64) {
    let t = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(20));
    loop {
        tick.tick().await;
        let elapsed = t.elapsed().as_secs();
        if elapsed >= max_seconds {
            tracing::warn!(
                seconds = elapsed,
                "still loading the model after daemon.max_startup_seconds; no longer extending systemd's start timeout"
            );
            return;
        }
        let status = format!("loading the model (and building TensorRT engines, warming up), {elapsed} s");
        notify(&[sd_notify::NotifyState::ExtendTimeoutUsec(60_000_000), sd_notify::NotifyState::Status(&status)]);
        if elapsed >= 60 && elapsed % 60 < 20 {
            tracing::info!(seconds = elapsed, "still loading the model (building TensorRT engines or warming up)");
        }
    }
}
