//! `fuchun serve`: the MQTT camera-frame daemon. The async side (MQTT, signals, stats, watchdog) runs on tokio;
//! stylisation runs on worker threads (see worker.rs) fed by a latest-frame-wins queue.
//!
//! `serve` in order: start-up (startup.rs: the workers load the model), the connection and its event loop
//! (event_loop.rs, deciding through router.rs), the tasks beside it (tasks.rs), shutdown (shutdown.rs).

pub mod config;
mod event_loop;
pub mod http;
mod link;
mod messages;
pub mod metrics;
pub mod mqtt;
pub mod outbox;
pub mod queue;
mod router;
mod shutdown;
mod startup;
pub mod stats;
mod style_cache;
pub mod styles;
mod tasks;
pub mod topics;
pub mod view;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::mpsc;

use self::config::Config;
use self::event_loop::{Conn, Signals};
use self::mqtt::Outgoing;
use self::tasks::{Presence, Tasks};
use self::topics::Topics;
use self::worker::Shared;

/// Exit status of a daemon (`serve`, `view`) that cannot start with what it was given: the configuration, the model
/// files, the ONNX Runtime library or an explicitly requested execution provider. EX_CONFIG of sysexits.h; the
/// systemd units do not restart on it (`RestartPreventExitStatus=78`), so a wrong setting stops the unit with its
/// error in the journal instead of a restart every few seconds. Failures once running (broker, watchdog) keep 1.
pub const EXIT_CANNOT_START: u8 = 78;

/// The context of an error that restarting cannot fix (see `EXIT_CANNOT_START`); `main` looks for it.
#[derive(Debug)]
pub struct CannotStart;

impl std::fmt::Display for CannotStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot start (not restarted by systemd: fix this, then restart the service)")
    }
}

impl std::error::Error for CannotStart {}

/// `e` as a startup failure (`CannotStart`).
pub fn cannot_start(e: anyhow::Error) -> anyhow::Error {
    e.context(CannotStart)
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Configuration file (TOML); see deploy/fuchun.example.toml.
    #[arg(long, short = 'c', default_value = "/etc/fuchun/fuchun.toml", env = "FUCHUN_CONFIG")]
    pub config: PathBuf,
}

pub fn run(args: &ServeArgs) -> Result<()> {
    let cfg = Config::load(&args.config).map_err(cannot_start)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("fuchun-io")
        .build()
        .context("starting the async runtime")?;
    let r = rt.block_on(serve(cfg));
    // a stop while the model loads leaves a blocking task waiting for the loading workers: do not wait for it
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    r
}

/// Load the model, connect, serve until SIGTERM, SIGINT or SIGHUP, stop (startup.rs, event_loop.rs, shutdown.rs).
async fn serve(cfg: Config) -> Result<()> {
    let mut signals = Signals::new()?;
    let model_dir = cfg.model.model_dir(&|p| cfg.resolve(p)).map_err(cannot_start)?;
    let (runtime, warmup_shapes) = cfg.serve_runtime().map_err(cannot_start)?;
    let topics = Topics { prefix: cfg.mqtt.prefix.clone(), mappings: cfg.inputs.clone() };
    let (out_tx, out_rx) = mpsc::unbounded_channel::<Outgoing>();
    let shared = Arc::new(Shared::new(cfg.clone(), topics.clone(), out_tx));
    let mut conn = Conn::new(&shared, out_rx)?;
    let workers = tokio::select! {
        w = startup::start_workers(&shared, &model_dir, runtime, warmup_shapes) => w?,
        s = signals.recv() => {
            tracing::info!(signal = s, "stop requested while the model loads");
            shutdown::stop_before_ready(&shared).await;
            return Ok(());
        }
    };
    let presence = Presence::start(&cfg, &topics.available())?;
    let tasks = Tasks::start(&shared, &conn.link, &conn.ready).await?;
    conn.run(&mut signals).await?;
    shutdown::stop(conn, workers, tasks, presence).await;
    Ok(())
}
