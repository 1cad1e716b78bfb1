//! What the daemon does with each incoming message, without any I/O: `Router::handle` takes a message and returns
//! the messages to publish, queueing frames for the workers on the way. It also decides what is announced when
//! the daemon starts serving and what is said when it stops. The event loop (event_loop.rs) carries the messages.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::config::valid_name;
use super::messages::{availability, discovery, dropped};
use super::mqtt::{Incoming, Outgoing};
use super::queue::Frame;
use super::stats::Stats;
use super::topics::Route;
use super::worker::Shared;

/// What the MQTT task keeps between messages.
pub(super) struct Router {
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
    pub(super) fn new(shared: Arc<Shared>) -> Router {
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
    pub(super) fn handle(&mut self, m: Incoming) -> Vec<Outgoing> {
        let out = self.route(m);
        self.shared.cameras.store(self.seen.len(), Ordering::Relaxed);
        out
    }

    fn route(&mut self, m: Incoming) -> Vec<Outgoing> {
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
            Route::Availability { daemon } => self.availability(daemon, &m.payload),
        }
    }

    /// Subscribed: this daemon serves. Say so (its own availability and the aggregate) and announce the
    /// configured cameras to Home Assistant.
    pub(super) fn serving(&mut self) -> Vec<Outgoing> {
        self.serving = true;
        let shared = self.shared.clone();
        let mut out = vec![self.own_availability("online"), self.aggregate("online")];
        if shared.config.daemon.home_assistant_discovery {
            for cam in shared.config.cameras.keys() {
                self.announced.insert(cam.clone());
                out.extend(discovery(&shared.config, &shared.topics, cam));
            }
        }
        out
    }

    /// The connection is lost, or the daemon is stopping: it no longer claims `online`.
    pub(super) fn not_serving(&mut self) {
        self.serving = false;
    }

    /// The last word of a daemon that stops: it has stopped, and so has the service unless another daemon of
    /// this prefix still serves.
    pub(super) fn stopped(&self) -> Vec<Outgoing> {
        let mut out = vec![self.own_availability("stopped")];
        if !self.others_online() {
            out.push(self.aggregate("stopped"));
        }
        out
    }

    fn availability(&mut self, daemon: Option<String>, payload: &Bytes) -> Vec<Outgoing> {
        let value = String::from_utf8_lossy(payload).trim().to_string();
        match daemon {
            Some(id) => {
                let own = id == self.shared.daemon_id;
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

    fn own_availability(&self, value: &str) -> Outgoing {
        availability(self.shared.topics.daemon_available(&self.shared.daemon_id), value)
    }

    fn aggregate(&self, value: &str) -> Outgoing {
        availability(self.shared.topics.available(), value)
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

    /// A frame: refused (too large, empty), dropped (rate limit) or queued; whatever it is, its camera is seen.
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
            let msg = "the frame is empty: send JPEG or PNG bytes";
            out.extend(shared.error_message(&camera, "empty_payload", msg, Some(seq), m.reply.as_ref()));
            return out;
        }
        let now = Instant::now();
        if let Some(min_interval_ms) = self.too_soon(&camera, now) {
            Stats::inc(&shared.stats.dropped);
            if let Some(r) = &m.reply {
                let msg = format!("frames of {camera} are processed at most every {min_interval_ms} ms");
                out.push(dropped(r, &camera, "rate_limited", seq, &msg));
            }
            return out;
        }
        self.last_accepted.insert(camera.clone(), now);
        let frame = Frame { camera, seq, payload: m.payload, topic: m.topic, received: now, reply: m.reply };
        out.extend(self.queue(frame));
        out
    }

    /// The camera's minimum interval, if its last accepted frame is more recent than that.
    fn too_soon(&self, camera: &str, now: Instant) -> Option<u64> {
        let min_interval_ms = self.shared.config.camera(camera).min_interval_ms;
        let last = self.last_accepted.get(camera).filter(|_| min_interval_ms > 0)?;
        (now.duration_since(*last) < Duration::from_millis(min_interval_ms)).then_some(min_interval_ms)
    }

    /// Queue a frame for the workers; answers the requesters of the frames it displaced, or its own when the
    /// queue is closed (the daemon is stopping).
    fn queue(&self, frame: Frame) -> Vec<Outgoing> {
        let shared = &self.shared;
        let camera = frame.camera.clone();
        let mut out = Vec::new();
        match shared.queue.push(frame) {
            Ok(pushed) => {
                if let Some(old) = pushed.replaced {
                    Stats::inc(&shared.stats.dropped);
                    if let Some(r) = &old.reply {
                        let msg = "a newer frame of the same camera arrived before this one was processed";
                        out.push(dropped(r, &camera, "superseded", old.seq, msg));
                    }
                }
                for old in pushed.evicted {
                    Stats::inc(&shared.stats.dropped);
                    Stats::inc(&shared.stats.evicted_frames);
                    if let Some(r) = &old.reply {
                        let msg = "the queue was full (daemon.max_queued_frames / max_queued_bytes): this \
                                   frame, the longest waiting, made room for a newer one";
                        out.push(dropped(r, &old.camera, "evicted", old.seq, msg));
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

