//! The daemon's tasks beside the event loop: the metrics server, the periodic stats message, the systemd
//! watchdog, and the presence connection (whose last will marks the service offline when the daemon dies).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::task::JoinHandle;

use super::config::Config;
use super::link::Link;
use super::messages::stats_snapshot;
use super::mqtt::{self, Event, Outgoing};
use super::startup::notify;
use super::worker::Shared;

/// The tasks that stop with the workers (see shutdown.rs). The metrics server runs until the process ends.
pub(super) struct Tasks {
    stats: JoinHandle<()>,
    watchdog: Option<JoinHandle<()>>,
}

impl Tasks {
    /// Serve the metrics (if configured), send the stats every interval, and ping the systemd watchdog (if it is
    /// enabled) once `ready` is set.
    pub(super) async fn start(shared: &Arc<Shared>, link: &Arc<Link>, ready: &Arc<AtomicBool>) -> Result<Tasks> {
        let cfg = &shared.config;
        if let Some(addr) = cfg.daemon.metrics_listen {
            let (s, l) = (shared.clone(), link.clone());
            let source: super::metrics::Source = Arc::new(move || vec![stats_snapshot(&s, &l)]);
            if let Err(e) = super::metrics::spawn(addr, cfg.daemon.metrics_max_connections, source).await {
                shared.queue.close();
                return Err(e);
            }
        }
        let stats = tokio::spawn(stats(shared.clone(), link.clone(), cfg.daemon.stats_interval_s.max(1)));
        let subscribe_timeout_s = (cfg.mqtt.keep_alive_s.max(5) as f64).max(10.0);
        let watchdog = sd_notify::watchdog_enabled().map(|period| {
            tokio::spawn(watchdog(shared.clone(), link.clone(), ready.clone(), period / 2, subscribe_timeout_s))
        });
        Ok(Tasks { stats, watchdog })
    }

    pub(super) fn stop(self) {
        self.stats.abort();
        if let Some(w) = self.watchdog {
            w.abort();
        }
    }
}

/// The stats message every `interval_s` seconds (the first after one interval), until the event loop is gone.
async fn stats(s: Arc<Shared>, l: Arc<Link>, interval_s: u64) {
    let mut tick = tokio::time::interval(Duration::from_secs(interval_s));
    tick.tick().await;
    loop {
        tick.tick().await;
        let body = stats_snapshot(&s, &l);
        if s.out.send(Outgoing::json(s.topics.stats(), &body)).is_err() {
            break;
        }
    }
}

/// systemd watchdog: ping only after READY and while the daemon serves or can recover by itself.
async fn watchdog(s: Arc<Shared>, l: Arc<Link>, ready: Arc<AtomicBool>, every: Duration, subscribe_timeout_s: f64) {
    let mut tick = tokio::time::interval(every);
    let mut withheld = false;
    loop {
        tick.tick().await;
        if !ready.load(Ordering::Relaxed) {
            continue;
        }
        match watchdog_verdict(&s, &l, subscribe_timeout_s) {
            None => {
                if withheld {
                    tracing::info!("serving again; watchdog pings resume");
                    withheld = false;
                }
                notify(&[sd_notify::NotifyState::Watchdog]);
            }
            Some(why) => {
                if !withheld {
                    tracing::error!(reason = %why, "withholding the systemd watchdog ping");
                    withheld = true;
                }
            }
        }
    }
}

/// Why the watchdog ping is withheld now, if it is: the daemon cannot serve and will not recover by itself.
fn watchdog_verdict(shared: &Shared, link: &Link, subscribe_timeout_s: f64) -> Option<String> {
    let stall = shared.config.daemon.max_job_seconds as f64;
    let age = shared.stalest_heartbeat_s();
    if age >= stall {
        return Some(format!("a worker has shown no progress for {age:.0} s (daemon.max_job_seconds)"));
    }
    let loop_age = link.loop_age_s();
    if loop_age > 5.0 {
        return Some(format!("the MQTT event loop has not turned for {loop_age:.0} s"));
    }
    let state_age = link.state_age_s();
    if link.connected() && !link.subscribed() && state_age > subscribe_timeout_s {
        return Some(format!("connected for {state_age:.0} s but the broker has not granted the subscriptions"));
    }
    let outage = shared.config.daemon.watchdog_outage_s;
    if outage > 0 && !link.connected() && state_age > outage as f64 {
        return Some(format!("the broker has been unreachable for {state_age:.0} s (daemon.watchdog_outage_s)"));
    }
    None
}

/// A second, stateless connection whose last will marks the aggregate `<prefix>/available` offline when this
/// daemon dies; the daemons still serving say `online` again when they see it.
pub(super) struct Presence {
    client: mqtt::Client,
    task: JoinHandle<()>,
}

impl Presence {
    pub(super) fn start(cfg: &Config, will_topic: &str) -> Result<Presence> {
        let id = format!("{}-presence", cfg.mqtt.client_id);
        let (client, events) = mqtt::connect_with(&cfg.mqtt, &id, will_topic, 1 << 16, 0)?;
        Ok(Presence { client, task: tokio::spawn(presence(events, cfg.clone())) })
    }

    /// Disconnect cleanly (no last will), waiting a little for it. The task must not outlive this: one still
    /// polling would connect again, and its last will would say `offline` when the process exits after the
    /// last daemon said `stopped`.
    pub(super) async fn stop(self) {
        let _ = self.client.try_disconnect();
        let abort = self.task.abort_handle();
        if tokio::time::timeout(Duration::from_millis(500), self.task).await.is_err() {
            abort.abort();
        }
    }
}

async fn presence(mut events: mqtt::EventLoop, cfg: Config) {
    let mut backoff = Duration::from_millis(cfg.mqtt.reconnect_min_ms.max(10));
    loop {
        match events.poll().await {
            Ok(Event::Connected { .. }) => backoff = Duration::from_millis(cfg.mqtt.reconnect_min_ms.max(10)),
            Ok(Event::Disconnected) => return events.until_closed().await,
            Ok(_) => {}
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(cfg.mqtt.reconnect_max_ms.max(100)));
            }
        }
    }
}
