//! `fuchun serve`: the MQTT camera-frame daemon. The async side (MQTT, signals, stats, watchdog) runs on tokio;
//! stylisation runs on worker threads (see worker.rs) fed by a latest-frame-wins queue.

pub mod config;
pub mod http;
pub mod metrics;
pub mod mqtt;
pub mod outbox;
pub mod queue;
pub mod stats;
mod style_cache;
pub mod styles;
pub mod topics;
pub mod view;
pub mod worker;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use tokio::sync::mpsc;

use self::config::{valid_name, Config};
use self::mqtt::{Event, Incoming, Outgoing};
use self::outbox::Outbox;
use self::queue::Frame;
use self::stats::{Gauges, Stats};
use self::topics::{Route, Topics};
use self::worker::{Shared, WorkerSetup};
use crate::commands::common::default_model_dir;

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
    /// Cameras seen, with the `seq` of their last frame: the least recent is forgotten beyond `max_cameras`.
    seen: HashMap<String, u64>,
    /// Availability of every daemon of this prefix, as last published (`<prefix>/<id>/available`).
    peers: HashMap<String, String>,
    /// Connected, subscribed-to and not stopping: this daemon claims `online`.
    serving: bool,
}

impl Router {
    fn new(shared: Arc<Shared>) -> Router {
        Router {
            shared,
            seq: 0,
            last_accepted: HashMap::new(),
            announced: HashSet::new(),
            seen: HashMap::new(),
            peers: HashMap::new(),
            serving: false,
        }
    }

    /// Handle one incoming message; returns messages to publish.
    fn handle(&mut self, m: Incoming) -> Vec<Outgoing> {
        let shared = &self.shared;
        match shared.topics.route(&m.topic) {
            Route::Ignore => vec![],
            Route::Invalid { reason } => {
                Stats::inc(&shared.stats.control_errors);
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
            Route::Availability { daemon } => {
                let value = String::from_utf8_lossy(&m.payload).trim().to_string();
                match daemon {
                    Some(id) => {
                        let own = id == shared.daemon_id;
                        self.peers.insert(id, value.clone());
                        // a stale value of our own (an earlier run's last will) while we serve: say it again
                        if own && self.serving && value != "online" {
                            return vec![self.own_availability("online")];
                        }
                        vec![]
                    }
                    // the aggregate went offline (another daemon's last will or stop) while we still serve
                    None if self.serving && value != "online" => vec![self.aggregate("online")],
                    None => vec![],
                }
            }
        }
    }

    fn own_availability(&self, value: &str) -> Outgoing {
        Outgoing::new(self.shared.topics.daemon_available(&self.shared.daemon_id), value.to_string()).retained(true)
    }

    fn aggregate(&self, value: &str) -> Outgoing {
        Outgoing::new(self.shared.topics.available(), value.to_string()).retained(true)
    }

    /// Whether another daemon of this prefix says it is online.
    fn others_online(&self) -> bool {
        self.peers.iter().any(|(id, v)| *id != self.shared.daemon_id && v == "online")
    }

    /// Note a camera as seen; forget the least recently seen one beyond `daemon.max_cameras`.
    fn touch(&mut self, camera: &str) {
        self.seen.insert(camera.to_string(), self.seq);
        let cfg = &self.shared.config;
        while self.seen.len() > cfg.daemon.max_cameras {
            let victim = self
                .seen
                .iter()
                .filter(|(c, _)| *c != camera && !cfg.cameras.contains_key(*c))
                .min_by_key(|(_, s)| **s)
                .map(|(c, _)| c.clone());
            let Some(victim) = victim else { break };
            self.seen.remove(&victim);
            self.last_accepted.remove(&victim);
            self.announced.remove(&victim);
            self.shared.forget_camera(&victim);
            Stats::inc(&self.shared.stats.evicted_cameras);
            tracing::debug!(camera = %victim, "camera state evicted (daemon.max_cameras)");
        }
    }

    fn frame(&mut self, camera: String, m: Incoming) -> Vec<Outgoing> {
        let shared = self.shared.clone();
        Stats::inc(&shared.stats.received);
        self.seq += 1;
        let seq = self.seq;
        self.touch(&camera);
        let mut out = Vec::new();
        if let Some(why) = &m.bad_reply {
            // the frame is still processed; its results go to the camera's topics
            let msg = format!("{why}: no reply is sent there; results are published on the camera's topics");
            out.extend(shared.control_error(&camera, "bad_response_topic", &msg));
        }
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
                Stats::inc(&shared.stats.dropped);
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
            Ok(pushed) => {
                if let Some(old) = pushed.replaced {
                    Stats::inc(&shared.stats.dropped);
                    if let Some(r) = &old.reply {
                        let body = serde_json::json!({"camera": camera, "code": "superseded", "seq": old.seq,
                            "message": "a newer frame of the same camera arrived before this one was processed"});
                        out.push(Outgoing::json(r.topic.clone(), &body).answering(r));
                    }
                }
                for old in pushed.evicted {
                    Stats::inc(&shared.stats.dropped);
                    Stats::inc(&shared.stats.evicted_frames);
                    if let Some(r) = &old.reply {
                        let body = serde_json::json!({"camera": old.camera, "code": "evicted", "seq": old.seq,
                            "message": "the queue was full (daemon.max_queued_frames / max_queued_bytes): this \
                                        frame, the longest waiting, made room for a newer one"});
                        out.push(Outgoing::json(r.topic.clone(), &body).answering(r));
                    }
                }
            }
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
        let shared = self.shared.clone();
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
            return shared.control_error(camera, "bad_control_payload", msg);
        };
        if !shared.config.styles.contains_key(&name) {
            let known: Vec<&String> = shared.config.styles.keys().collect();
            let msg =
                format!("unknown style {name:?}: known styles are {known:?}; keeping {:?}", shared.style_of(camera));
            return shared.control_error(camera, "unknown_style", &msg);
        }
        self.seq += 1;
        self.touch(camera);
        self.shared.camera_styles.lock().unwrap().insert(camera.to_string(), name.clone());
        tracing::info!(camera, style = %name, "style changed");
        vec![Outgoing::new(shared.topics.style_state(camera), name).retained(true)]
    }
}

/// The state of the broker connection, shared by the event loop, the publisher and the watchdog.
#[derive(Default)]
struct Link {
    connected: AtomicBool,
    subscribed: AtomicBool,
    /// Milliseconds since start: last turn of the event loop, last change of `connected`.
    loop_beat: AtomicU64,
    since: AtomicU64,
    started: OnceLock<Instant>,
}

impl Link {
    fn now_ms(&self) -> u64 {
        self.started.get_or_init(Instant::now).elapsed().as_millis() as u64
    }
    fn beat(&self) {
        self.loop_beat.store(self.now_ms(), Ordering::Relaxed);
    }
    fn set_connected(&self, c: bool) {
        if self.connected.swap(c, Ordering::Relaxed) != c {
            self.since.store(self.now_ms(), Ordering::Relaxed);
        }
        if !c {
            self.subscribed.store(false, Ordering::Relaxed);
        }
    }
    fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
    /// Seconds in the current connection state.
    fn state_age_s(&self) -> f64 {
        self.now_ms().saturating_sub(self.since.load(Ordering::Relaxed)) as f64 / 1e3
    }
    fn loop_age_s(&self) -> f64 {
        self.now_ms().saturating_sub(self.loop_beat.load(Ordering::Relaxed)) as f64 / 1e3
    }
}

/// The stats message (also served as Prometheus metrics with `daemon.metrics_listen`).
fn stats_snapshot(s: &Shared, link: &Link) -> serde_json::Value {
    let provider = s.provider.lock().unwrap().clone();
    let report = s.provider_report.lock().unwrap().clone();
    s.stats.snapshot(&Gauges {
        daemon_id: &s.daemon_id,
        provider: &provider,
        provider_report: &report,
        queue_depth: s.queue.depth(),
        queue_bytes: s.queue.bytes(),
        cameras: s.cameras.load(Ordering::Relaxed),
        connected: link.connected(),
        started: s.started,
    })
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
    if link.connected() && !link.subscribed.load(Ordering::Relaxed) && state_age > subscribe_timeout_s {
        return Some(format!("connected for {state_age:.0} s but the broker has not granted the subscriptions"));
    }
    let outage = shared.config.daemon.watchdog_outage_s;
    if outage > 0 && !link.connected() && state_age > outage as f64 {
        return Some(format!("the broker has been unreachable for {state_age:.0} s (daemon.watchdog_outage_s)"));
    }
    None
}

/// The connection during shutdown: the event loop turned, outgoing messages handed over, incoming frames answered.
struct Conn<'a> {
    events: mqtt::EventLoop,
    client: &'a mqtt::Client,
    outbox: Outbox,
    rx: mpsc::UnboundedReceiver<Outgoing>,
    link: &'a Link,
    stats: &'a Stats,
}

impl Conn<'_> {
    /// Keep the connection serviced; returns when `done` says so or after `limit`.
    async fn service(
        &mut self,
        router: &mut Router,
        send: &dyn Fn(Outgoing),
        limit: Duration,
        mut done: impl FnMut(&Self) -> bool,
    ) {
        let end = tokio::time::Instant::now() + limit;
        let mut check = tokio::time::interval(Duration::from_millis(20));
        loop {
            self.outbox.take(&mut self.rx, self.stats);
            if self.link.connected() {
                self.outbox.hand_over(self.client);
            }
            if done(self) || tokio::time::Instant::now() >= end {
                return;
            }
            tokio::select! {
                ev = self.events.poll() => match ev {
                    Ok(Event::Message(m)) => router.handle(m).into_iter().for_each(send),
                    Ok(Event::Sent { pkid }) => self.outbox.sent(pkid),
                    Ok(Event::Acked { pkid }) => self.outbox.acked(pkid),
                    Ok(Event::Connected { session }) => {
                        self.link.set_connected(true);
                        self.outbox.connected(session, self.stats);
                    }
                    Ok(Event::Disconnected) => {
                        self.link.set_connected(false);
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    Ok(_) => {}
                    Err(_) => {
                        self.link.set_connected(false);
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                },
                _ = check.tick() => {}
            }
        }
    }
}

/// A second, stateless connection whose last will marks the aggregate `<prefix>/available` offline when this
/// daemon dies; the daemons still serving say `online` again when they see it.
async fn presence(mut events: mqtt::EventLoop, cfg: Config) {
    let mut backoff = Duration::from_millis(cfg.mqtt.reconnect_min_ms.max(10));
    loop {
        match events.poll().await {
            Ok(Event::Connected { .. }) => backoff = Duration::from_millis(cfg.mqtt.reconnect_min_ms.max(10)),
            Ok(Event::Disconnected) => return,
            Ok(_) => {}
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(cfg.mqtt.reconnect_max_ms.max(100)));
            }
        }
    }
}

async fn serve(cfg: Config) -> Result<()> {
    let model_dir = match &cfg.model.dir {
        Some(d) => cfg.resolve(d),
        None => default_model_dir("vgg16-max").map_err(cannot_start)?,
    };
    let (runtime, warmup_shapes) = cfg.serve_runtime().map_err(cannot_start)?;
    let topics = Topics { prefix: cfg.mqtt.prefix.clone(), mappings: cfg.inputs.clone() };
    let qos = cfg.mqtt.qos;
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Outgoing>();
    let shared = Arc::new(Shared::new(cfg.clone(), topics.clone(), out_tx.clone()));
    let send = |m: Outgoing| {
        let _ = out_tx.send(m);
    };

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
                return Err(cannot_start(anyhow::anyhow!("loading the model from {}: {e}", model_dir.display())));
            }
        }
    }
    let report = report.context("no worker reported")?;
    let provider = report.provider.to_string();
    *shared.provider.lock().unwrap() = provider.clone();
    *shared.provider_report.lock().unwrap() = report.to_json();
    tracing::info!(model = %model_dir.display(), provider = %report.summary(), workers = cfg.daemon.workers, "model loaded");

    let max_packet = (cfg.daemon.max_payload_bytes as usize).saturating_mul(2).max(32 << 20);
    let own_topic = topics.daemon_available(&shared.daemon_id);
    let (client, mut events) = mqtt::connect(&cfg.mqtt, &cfg.mqtt.client_id, &own_topic, max_packet)?;
    let (presence_client, presence_events) =
        mqtt::connect_with(&cfg.mqtt, &format!("{}-presence", cfg.mqtt.client_id), &topics.available(), 1 << 16, 0)?;
    let presence_task = tokio::spawn(presence(presence_events, cfg.clone()));

    let link = Arc::new(Link::default());
    link.beat();
    let mut outbox = Outbox::new(cfg.daemon.max_outbox_bytes as usize, qos, [topics.stats()]);

    if let Some(addr) = cfg.daemon.metrics_listen {
        let (s, l) = (shared.clone(), link.clone());
        if let Err(e) = metrics::spawn(addr, Arc::new(move || vec![stats_snapshot(&s, &l)])).await {
            shared.queue.close();
            return Err(e);
        }
    }

    // stats every interval
    let stats_task = {
        let (s, tx, l, interval) = (shared.clone(), out_tx.clone(), link.clone(), cfg.daemon.stats_interval_s.max(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(interval));
            tick.tick().await;
            loop {
                tick.tick().await;
                let body = stats_snapshot(&s, &l);
                if tx.send(Outgoing::json(s.topics.stats(), &body)).is_err() {
                    break;
                }
            }
        })
    };

    // systemd watchdog: ping only after READY and while the daemon serves or can recover by itself
    let ready_flag = Arc::new(AtomicBool::new(false));
    let subscribe_timeout_s = (cfg.mqtt.keep_alive_s.max(5) as f64).max(10.0);
    let watchdog = sd_notify::watchdog_enabled().map(|period| {
        let (s, ready, l) = (shared.clone(), ready_flag.clone(), link.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period / 2);
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
        })
    });

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut router = Router::new(shared.clone());
    let mut ready_sent = false;
    let min_backoff = Duration::from_millis(cfg.mqtt.reconnect_min_ms.max(10));
    let mut backoff = min_backoff;
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut beat = tokio::time::interval(Duration::from_millis(500));
    let subscriptions: Vec<String> = topics
        .subscriptions()
        .into_iter()
        .map(|(t, shared_sub)| match (&cfg.mqtt.shared_group, shared_sub) {
            (Some(g), true) => format!("$share/{g}/{t}"),
            _ => t,
        })
        .collect();

    // The event loop. Nothing in it waits on the MQTT client: requests go out through non-blocking calls or
    // spawned tasks, so a request queue that filled during an outage can never stall it, and a signal is seen at
    // once, also during a reconnect back-off. Outgoing messages are handed to the client here too, between polls
    // (see outbox.rs).
    loop {
        link.beat();
        if link.connected() {
            outbox.hand_over(&client);
        }
        tokio::select! {
            biased;
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = beat.tick() => {}
            Some(m) = out_rx.recv() => {
                outbox.push(m, &shared.stats);
                outbox.take(&mut out_rx, &shared.stats);
            }
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if retry_at.is_some() => {
                retry_at = None;
            }
            ev = events.poll(), if retry_at.is_none() => match ev {
                Ok(Event::Connected { session }) => {
                    backoff = min_backoff;
                    link.set_connected(true);
                    let resent = outbox.connected(session, &shared.stats);
                    tracing::info!(host = %cfg.mqtt.host, port = cfg.mqtt.port, session, resent, "connected to the broker");
                    let (c, subs) = (client.clone(), subscriptions.clone());
                    tokio::spawn(async move {
                        if let Err(e) = c.subscribe_all(&subs, qos).await {
                            tracing::warn!(error = %e, "subscribe failed");
                        }
                    });
                }
                Ok(Event::Subscribed { granted }) => {
                    if !granted {
                        tracing::error!("the broker refused a subscription: check its ACL for this client");
                        continue;
                    }
                    if link.subscribed.swap(true, Ordering::Relaxed) {
                        continue;
                    }
                    tracing::info!(topics = subscriptions.len(), "subscribed");
                    router.serving = true;
                    send(router.own_availability("online"));
                    send(router.aggregate("online"));
                    if cfg.daemon.home_assistant_discovery {
                        for cam in cfg.cameras.keys() {
                            router.announced.insert(cam.clone());
                            discovery(&cfg, &topics, cam).into_iter().for_each(send);
                        }
                    }
                    if !ready_sent {
                        notify(&[sd_notify::NotifyState::Ready]);
                        ready_flag.store(true, Ordering::Relaxed);
                        ready_sent = true;
                    }
                }
                Ok(Event::Message(m)) => {
                    router.handle(m).into_iter().for_each(send);
                    shared.cameras.store(router.seen.len(), Ordering::Relaxed);
                }
                Ok(Event::Sent { pkid }) => outbox.sent(pkid),
                Ok(Event::Acked { pkid }) => outbox.acked(pkid),
                Ok(Event::Disconnected) => {
                    link.set_connected(false);
                    router.serving = false;
                }
                Ok(Event::Other) => {}
                Err(e) => {
                    link.set_connected(false);
                    router.serving = false;
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "broker connection lost");
                    retry_at = Some(tokio::time::Instant::now() + backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(cfg.mqtt.reconnect_max_ms.max(100)));
                }
            },
        }
    }

    // Shutdown: stop taking frames, answer the waiting ones, let the current jobs finish within the grace period,
    // then abandon them. The connection stays serviced throughout (frames still arriving are answered
    // `shutting_down`), and every step is bounded in time.
    tracing::info!("stopping");
    notify(&[sd_notify::NotifyState::Stopping]);
    router.serving = false;
    let waiting = shared.queue.close();
    let answered = waiting.len();
    for f in waiting {
        let msg = "the daemon is stopping; the frame was not processed";
        shared.error_message(&f.camera, "shutting_down", msg, Some(f.seq), f.reply.as_ref()).into_iter().for_each(send);
    }
    if answered > 0 {
        tracing::info!(frames = answered, "answered the waiting frames with shutting_down");
    }
    for s in subscriptions.iter().filter(|s| s.ends_with("/frame") || !s.starts_with(&cfg.mqtt.prefix)) {
        let (c, s) = (client.clone(), s.clone());
        tokio::spawn(async move { c.unsubscribe(&s).await });
    }
    let grace = Instant::now() + Duration::from_millis(cfg.daemon.shutdown_grace_ms);
    let mut conn = Conn { events, client: &client, outbox, rx: out_rx, link: &link, stats: &shared.stats };
    let abandon_after = Duration::from_millis(cfg.daemon.shutdown_grace_ms) + Duration::from_secs(3);
    conn.service(&mut router, &send, abandon_after, |_| {
        if Instant::now() >= grace {
            shared.abandon.store(true, Ordering::Relaxed);
        }
        handles.iter().all(|h| h.is_finished())
    })
    .await;
    let stuck = handles.iter().filter(|h| !h.is_finished()).count();
    if stuck > 0 {
        tracing::warn!(workers = stuck, "workers still busy after the grace period; not waiting for them");
    } else {
        for h in handles {
            let _ = h.join();
        }
    }
    stats_task.abort();
    if let Some(w) = watchdog {
        w.abort();
    }
    send(router.own_availability("stopped"));
    if !router.others_online() {
        send(router.aggregate("stopped"));
    }
    // flush: until everything is handed to the client (or the broker is away), then disconnect after it (bounded)
    conn.service(&mut router, &|_| {}, Duration::from_secs(2), |c| c.outbox.handed_all() || !c.link.connected()).await;
    if !conn.outbox.handed_all() {
        tracing::warn!(messages = conn.outbox.undelivered(), "stopping with messages the broker never received");
    }
    let _ = client.try_disconnect();
    let flush = async {
        loop {
            match conn.events.poll().await {
                Ok(Event::Disconnected) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), flush).await;
    let _ = presence_client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(500), presence_task).await;
    tracing::info!("stopped");
    Ok(())
}
