//! `fuchun serve`: the MQTT camera-frame daemon. The async side (MQTT, signals, stats, watchdog) runs on tokio;
//! stylisation runs on worker threads (see worker.rs) fed by a latest-frame-wins queue.

pub mod config;
pub mod mqtt;
pub mod queue;
pub mod stats;
pub mod styles;
pub mod topics;
pub mod view;
pub mod worker;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use tokio::sync::mpsc;

use self::config::{valid_name, Config};
use self::mqtt::{Event, Incoming, Outgoing};
use self::queue::Frame;
use self::stats::Stats;
use self::topics::{Route, Topics};
use self::worker::{Command, Shared, WorkerSetup};
use crate::commands::common::default_model_dir;

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Configuration file (TOML); see deploy/fuchun.example.toml.
    #[arg(long, short = 'c', default_value = "/etc/fuchun/fuchun.toml", env = "FUCHUN_CONFIG")]
    pub config: PathBuf,
}

pub fn run(args: &ServeArgs) -> Result<()> {
    let cfg = Config::load(&args.config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("fuchun-io")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(cfg))
}

fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(error = %e, "sd_notify");
    }
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

/// Home Assistant MQTT discovery: an `image` entity and a duration sensor per camera.
fn discovery(cfg: &Config, topics: &Topics, camera: &str) -> Vec<Outgoing> {
    let p = &cfg.daemon.discovery_prefix;
    let id = format!("{}_{camera}", cfg.mqtt.client_id.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
    let device = serde_json::json!({"identifiers": [cfg.mqtt.client_id], "name": "fuchun", "manufacturer": "fuchun",
        "model": "neural style transfer", "sw_version": env!("CARGO_PKG_VERSION")});
    let avail = serde_json::json!([{"topic": topics.available(), "payload_available": "online", "payload_not_available": "offline"}]);
    vec![
        Outgoing::json(
            format!("{p}/image/{id}/config"),
            &serde_json::json!({
                "name": format!("{camera} stylized"), "unique_id": format!("{id}_stylized"),
                "image_topic": topics.stylized(camera), "content_type": "image/jpeg",
                "availability": avail, "device": device,
            }),
        )
        .retained(true),
        Outgoing::json(
            format!("{p}/sensor/{id}_duration/config"),
            &serde_json::json!({
                "name": format!("{camera} stylize duration"), "unique_id": format!("{id}_duration"),
                "state_topic": topics.meta(camera), "value_template": "{{ value_json.durations_ms.total | round(0) }}",
                "unit_of_measurement": "ms", "device_class": "duration", "state_class": "measurement",
                "availability": avail, "device": device,
            }),
        )
        .retained(true),
    ]
}

/// What the MQTT task keeps between messages.
struct Router {
    shared: Arc<Shared>,
    seq: u64,
    last_accepted: HashMap<String, Instant>,
    announced: HashSet<String>,
}

impl Router {
    /// Handle one incoming message; returns messages to publish.
    fn handle(&mut self, m: Incoming) -> Vec<Outgoing> {
        let shared = &self.shared;
        match shared.topics.route(&m.topic) {
            Route::Ignore => vec![],
            Route::Invalid { reason } => {
                Stats::inc(&shared.stats.errors);
                tracing::warn!(topic = %m.topic, reason, "ignored message");
                let body = serde_json::json!({"code": "bad_topic", "message": reason, "topic": m.topic});
                vec![Outgoing::json(format!("{}/error", shared.topics.prefix), &body)]
            }
            Route::Frame { camera } => self.frame(camera, m),
            Route::StyleSet { camera } => self.style_set(&camera, &m.payload),
            Route::StyleState { camera } => {
                // retained state from an earlier run (or another daemon): adopt a valid style quietly
                if let Ok(name) = std::str::from_utf8(&m.payload) {
                    let name = name.trim();
                    if shared.config.styles.contains_key(name) {
                        shared.camera_styles.lock().unwrap().insert(camera, name.to_string());
                    }
                }
                vec![]
            }
        }
    }

    fn frame(&mut self, camera: String, m: Incoming) -> Vec<Outgoing> {
        let shared = self.shared.clone();
        Stats::inc(&shared.stats.received);
        self.seq += 1;
        let seq = self.seq;
        let mut out = Vec::new();
        if shared.config.daemon.home_assistant_discovery && self.announced.insert(camera.clone()) {
            out.extend(discovery(&shared.config, &shared.topics, &camera));
        }
        let limit = shared.config.daemon.max_payload_bytes;
        if m.payload.len() as u64 > limit {
            let msg = format!("the frame is {} bytes, over the limit of {limit} bytes (daemon.max_payload_bytes): send a smaller image", m.payload.len());
            out.extend(shared.error_message(&camera, "payload_too_large", &msg, Some(seq), m.reply.as_ref()));
            return out;
        }
        if m.payload.is_empty() {
            if m.retain {
                return out; // a retained frame being cleared: nothing to do
            }
            out.extend(shared.error_message(
                &camera,
                "empty_payload",
                "the frame is empty: send JPEG or PNG bytes",
                Some(seq),
                m.reply.as_ref(),
            ));
            return out;
        }
        let settings = shared.config.camera(&camera);
        let now = Instant::now();
        if settings.min_interval_ms > 0 {
            if let Some(last) = self.last_accepted.get(&camera) {
                if now.duration_since(*last) < Duration::from_millis(settings.min_interval_ms) {
                    Stats::inc(&shared.stats.dropped);
                    if let Some(r) = &m.reply {
                        let body = serde_json::json!({"camera": camera, "code": "rate_limited", "seq": seq,
                            "message": format!("frames of {camera} are processed at most every {} ms", settings.min_interval_ms)});
                        out.push(Outgoing::json(r.topic.clone(), &body).answering(r));
                    }
                    return out;
                }
            }
        }
        self.last_accepted.insert(camera.clone(), now);
        let frame =
            Frame { camera: camera.clone(), seq, payload: m.payload, topic: m.topic, received: now, reply: m.reply };
        match shared.queue.push(frame) {
            Ok(Some(old)) => {
                Stats::inc(&shared.stats.dropped);
                if let Some(r) = &old.reply {
                    let body = serde_json::json!({"camera": camera, "code": "superseded", "seq": old.seq,
                        "message": "a newer frame of the same camera arrived before this one was processed"});
                    out.push(Outgoing::json(r.topic.clone(), &body).answering(r));
                }
            }
            Ok(None) => {}
            Err(f) => out.extend(shared.error_message(
                &camera,
                "shutting_down",
                "the daemon is stopping",
                Some(f.seq),
                f.reply.as_ref(),
            )),
        }
        out
    }

    fn style_set(&mut self, camera: &str, payload: &Bytes) -> Vec<Outgoing> {
        let shared = &self.shared;
        let name = match std::str::from_utf8(payload) {
            Ok(s) => {
                let s = s.trim();
                // plain name, or {"style": "name"}
                match serde_json::from_str::<serde_json::Value>(s) {
                    Ok(serde_json::Value::Object(o)) => o.get("style").and_then(|v| v.as_str()).map(str::to_string),
                    _ if valid_name(s) => Some(s.to_string()),
                    _ => None,
                }
            }
            Err(_) => None,
        };
        let Some(name) = name else {
            let msg = "style/set needs a style name (plain text) or {\"style\": \"name\"}";
            return shared.error_message(camera, "bad_control_payload", msg, None, None);
        };
        if !shared.config.styles.contains_key(&name) {
            let known: Vec<&String> = shared.config.styles.keys().collect();
            let msg =
                format!("unknown style {name:?}: known styles are {known:?}; keeping {:?}", shared.style_of(camera));
            return shared.error_message(camera, "unknown_style", &msg, None, None);
        }
        shared.camera_styles.lock().unwrap().insert(camera.to_string(), name.clone());
        tracing::info!(camera, style = %name, "style changed");
        vec![Outgoing::new(shared.topics.style_state(camera), name).retained(true)]
    }
}

async fn serve(cfg: Config) -> Result<()> {
    let model_dir = match &cfg.model.dir {
        Some(d) => cfg.resolve(d),
        None => default_model_dir("vgg16-max")?,
    };
    let (runtime, warmup_shapes) = cfg.serve_runtime()?;
    let topics = Topics { prefix: cfg.mqtt.prefix.clone(), mappings: cfg.inputs.clone() };
    let qos = cfg.mqtt.qos;
    let (out_tx, mut out_rx) = mpsc::channel::<Command>(32);
    let shared = Arc::new(Shared::new(cfg.clone(), topics.clone(), out_tx.clone()));

    // workers: load the model first, so READY means "can stylise"
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut handles = Vec::new();
    for i in 0..cfg.daemon.workers {
        let setup = WorkerSetup {
            model_dir: model_dir.clone(),
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
                bail!("loading the model from {}: {e}", model_dir.display());
            }
        }
    }
    let report = report.context("no worker reported")?;
    let provider = report.provider.to_string();
    *shared.provider.lock().unwrap() = provider.clone();
    *shared.provider_report.lock().unwrap() = report.to_json();
    tracing::info!(model = %model_dir.display(), provider = %report.summary(), workers = cfg.daemon.workers, "model loaded");

    let max_packet = (cfg.daemon.max_payload_bytes as usize).saturating_mul(2).max(32 << 20);
    let (client, mut events) = mqtt::connect(&cfg.mqtt, &cfg.mqtt.client_id, &topics.available(), max_packet)?;

    // publisher: results, errors, stats, in order; Disconnect ends it
    let pub_client = client.clone();
    let publisher = tokio::spawn(async move {
        while let Some(cmd) = out_rx.recv().await {
            match cmd {
                Command::Publish(m) => {
                    if let Err(e) = pub_client.publish(m, qos).await {
                        tracing::warn!(error = %e, "publish failed");
                    }
                }
                Command::Disconnect => {
                    let _ = pub_client.disconnect().await;
                    break;
                }
            }
        }
    });

    // stats every interval
    let stats_task = {
        let (s, tx, interval) = (shared.clone(), out_tx.clone(), cfg.daemon.stats_interval_s.max(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(interval));
            tick.tick().await;
            loop {
                tick.tick().await;
                let provider = s.provider.lock().unwrap().clone();
                let report = s.provider_report.lock().unwrap().clone();
                let body = s.stats.snapshot(s.queue.depth(), &provider, &report, s.started);
                if tx.send(Command::Publish(Outgoing::json(s.topics.stats(), &body))).await.is_err() {
                    break;
                }
            }
        })
    };

    // systemd watchdog: ping only after READY and while every worker shows signs of life
    let ready_flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = if let Some(period) = sd_notify::watchdog_enabled() {
        let (s, stall, ready) = (shared.clone(), cfg.daemon.max_job_seconds as f64, ready_flag.clone());
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period / 2);
            loop {
                tick.tick().await;
                if !ready.load(Ordering::Relaxed) {
                    continue;
                }
                let age = s.stalest_heartbeat_s();
                if age < stall {
                    notify(&[sd_notify::NotifyState::Watchdog]);
                } else {
                    tracing::error!(seconds = age, "a worker shows no progress; withholding the watchdog ping");
                }
            }
        }))
    } else {
        None
    };

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut router =
        Router { shared: shared.clone(), seq: 0, last_accepted: HashMap::new(), announced: HashSet::new() };
    let mut ready_sent = false;
    let mut backoff = Duration::from_millis(cfg.mqtt.reconnect_min_ms.max(10));
    let subscriptions: Vec<String> = topics
        .subscriptions()
        .into_iter()
        .map(|(t, shared_sub)| match (&cfg.mqtt.shared_group, shared_sub) {
            (Some(g), true) => format!("$share/{g}/{t}"),
            _ => t,
        })
        .collect();

    loop {
        tokio::select! {
            ev = events.poll() => match ev {
                Ok(Event::Connected) => {
                    backoff = Duration::from_millis(cfg.mqtt.reconnect_min_ms.max(10));
                    tracing::info!(host = %cfg.mqtt.host, port = cfg.mqtt.port, "connected to the broker");
                    for s in &subscriptions {
                        if let Err(e) = client.subscribe(s, qos).await {
                            tracing::warn!(topic = %s, error = %e, "subscribe failed");
                        }
                    }
                    let mut hello = vec![Outgoing::new(topics.available(), "online").retained(true)];
                    if cfg.daemon.home_assistant_discovery {
                        for cam in cfg.cameras.keys() {
                            router.announced.insert(cam.clone());
                            hello.extend(discovery(&cfg, &topics, cam));
                        }
                    }
                    for m in hello {
                        let _ = out_tx.send(Command::Publish(m)).await;
                    }
                    if !ready_sent {
                        notify(&[sd_notify::NotifyState::Ready]);
                        ready_flag.store(true, Ordering::Relaxed);
                        ready_sent = true;
                    }
                }
                Ok(Event::Message(m)) => {
                    for o in router.handle(m) {
                        let _ = out_tx.send(Command::Publish(o)).await;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "broker connection lost");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(cfg.mqtt.reconnect_max_ms.max(100)));
                }
            },
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }

    // shutdown: stop taking frames, let the current jobs finish within the grace period, then abandon them
    tracing::info!("stopping");
    notify(&[sd_notify::NotifyState::Stopping]);
    for f in shared.queue.close() {
        for m in shared.error_message(
            &f.camera,
            "shutting_down",
            "the daemon is stopping; the frame was not processed",
            Some(f.seq),
            f.reply.as_ref(),
        ) {
            let _ = out_tx.send(Command::Publish(m)).await;
        }
    }
    let grace = Instant::now() + Duration::from_millis(cfg.daemon.shutdown_grace_ms);
    let finish = async {
        while handles.iter().any(|h| !h.is_finished()) {
            if Instant::now() >= grace {
                shared.abandon.store(true, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    // no new frames from the broker; frames already on their way are answered `shutting_down` (the queue is
    // closed), and the connection stays serviced while the workers wind down
    for s in subscriptions.iter().filter(|s| s.ends_with("/frame") || !s.starts_with(&cfg.mqtt.prefix)) {
        let _ = client.unsubscribe(s).await;
    }
    let service = async {
        loop {
            match events.poll().await {
                Ok(Event::Message(m)) => {
                    for o in router.handle(m) {
                        let _ = out_tx.send(Command::Publish(o)).await;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    };
    tokio::select! {
        _ = finish => {},
        _ = service => {},
    }
    for h in handles {
        let _ = h.join();
    }
    stats_task.abort();
    if let Some(w) = watchdog {
        w.abort();
    }
    let _ = out_tx.send(Command::Publish(Outgoing::new(topics.available(), "stopped").retained(true))).await;
    let _ = out_tx.send(Command::Disconnect).await;
    drop(out_tx);
    // flush: poll until the disconnect went out (bounded)
    let flush = async {
        loop {
            match events.poll().await {
                Ok(Event::Disconnected) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), flush).await;
    let _ = tokio::time::timeout(Duration::from_millis(200), publisher).await;
    tracing::info!("stopped");
    Ok(())
}
