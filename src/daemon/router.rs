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
use super::topics::{excerpt, Route};
use super::worker::Shared;

/// What the MQTT task keeps between messages.
pub(super) struct Router {
    shared: Arc<Shared>,
    seq: u64,
    last_accepted: HashMap<String, Instant>,
    announced: HashSet<String>,
    /// Cameras seen, with the `seq` of their last frame: the least recent is forgotten beyond `max_cameras`.
    seen: HashMap<String, u64>,
    /// The other daemons of this prefix that say they are online (`<prefix>/<id>/available`), with the `heard`
    /// count of their last word: only their ids are kept (not what they sent), the least recently heard beyond
    /// `daemon.max_peers` forgotten, so that a flood of ids or of large payloads cannot grow it without bound.
    peers: HashMap<String, u64>,
    heard: u64,
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
            heard: 0,
            serving: false,
        }
    }

    /// Handle one incoming message; returns messages to publish.
    pub(super) fn handle(&mut self, m: Incoming) -> Vec<Outgoing> {
        let out = self.route(m);
        self.shared.cameras.store(self.seen.len(), Ordering::Relaxed);
        self.shared.stats.peers.store(self.peers.len() as u64, Ordering::Relaxed);
        out
    }

    fn route(&mut self, m: Incoming) -> Vec<Outgoing> {
        let shared = &self.shared;
        match shared.topics.route(&m.topic) {
            Route::Ignore => vec![],
            Route::Invalid { reason } => {
                Stats::inc(&shared.stats.control_errors);
                // the topic can be 64 KiB: its excerpt only, in the log as in the reply
                let topic = excerpt(&m.topic);
                tracing::warn!(%topic, reason, "ignored message");
                let body = serde_json::json!({"code": "bad_topic", "message": reason, "topic": topic});
                vec![Outgoing::json(format!("{}/error", shared.topics.prefix), &body)]
            }
            Route::Frame { camera } => self.frame(camera, m),
            Route::StyleSet { camera } => self.style_set(&camera, &m.payload),
            Route::StyleState { camera } => {
                // retained state from an earlier run (or another daemon): adopt a valid style quietly
                if let Ok(name) = std::str::from_utf8(&m.payload) {
                    let name = name.trim();
                    if shared.config.styles.contains_key(name) {
                        shared.camera_styles.lock().unwrap().insert(camera.clone(), name.to_string());
                        // a camera's style is part of its state: bounded by daemon.max_cameras like the rest
                        self.seq += 1;
                        self.touch(&camera);
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
        let online = payload.trim_ascii() == b"online";
        match daemon {
            Some(id) => {
                let own = id == self.shared.daemon_id;
                if !own {
                    self.peer(id, online);
                }
                // a stale value of our own (an earlier run's last will) while we serve: say it again
                if own && self.serving && !online {
                    return vec![self.own_availability("online")];
                }
                vec![]
            }
            // the aggregate went offline (another daemon's last will or stop) while we still serve
            None if self.serving && !online => vec![self.aggregate("online")],
            None => vec![],
        }
    }

    /// Note what another daemon said of itself. A daemon's id is its client id, a valid name: anything else is
    /// not one of ours and is not kept.
    fn peer(&mut self, id: String, online: bool) {
        if !online || !valid_name(&id) {
            self.peers.remove(&id);
            return;
        }
        self.heard += 1;
        self.peers.insert(id, self.heard);
        while self.peers.len() > self.shared.config.daemon.max_peers {
            let Some(oldest) = self.peers.iter().min_by_key(|(_, h)| **h).map(|(id, _)| id.clone()) else { break };
            self.peers.remove(&oldest);
            tracing::debug!(daemon = %oldest, "availability of a peer forgotten (daemon.max_peers)");
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
        self.peers.keys().any(|id| *id != self.shared.daemon_id)
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
            let msg = format!(
                "unknown style \"{}\": known styles are {known:?}; keeping {:?}",
                excerpt(&name),
                shared.style_of(camera)
            );
            return shared.control_error(camera, "unknown_style", &msg);
        }
        self.seq += 1;
        self.touch(camera);
        self.shared.camera_styles.lock().unwrap().insert(camera.to_string(), name.clone());
        tracing::info!(camera, style = %name, "style changed");
        vec![Outgoing::new(shared.topics.style_state(camera), name).retained(true)]
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use tokio::sync::mpsc;

    use super::*;
    use crate::daemon::config::Config;
    use crate::daemon::queue::Reply;
    use crate::daemon::topics::Topics;

    /// A router over a configuration with two styles (`ink`, the default, and `wave`) and `extra` (TOML tables).
    fn router(extra: &str) -> Router {
        let toml = format!(
            "[mqtt]\nprefix = \"home/fuchun\"\nclient_id = \"fuchun-1\"\n\
             [styles.ink]\nimages = [\"ink.jpg\"]\n[styles.wave]\nimages = [\"wave.jpg\"]\n{extra}"
        );
        let cfg: Config = toml::from_str(&toml).unwrap();
        let topics = Topics { prefix: cfg.mqtt.prefix.clone(), mappings: cfg.inputs.clone() };
        // what the router returns is the test's to look at; nothing it keeps sends on the channel
        let (tx, _) = mpsc::unbounded_channel();
        Router::new(Arc::new(Shared::new(cfg, topics, tx)))
    }

    fn msg(topic: &str, payload: &[u8]) -> Incoming {
        Incoming {
            topic: topic.into(),
            payload: Bytes::copy_from_slice(payload),
            retain: false,
            reply: None,
            bad_reply: None,
        }
    }

    /// A frame asking for an answer on `reply/<id>` (MQTT v5 response topic and correlation data).
    fn request(topic: &str, payload: &[u8], id: &str) -> Incoming {
        let reply = Reply { topic: format!("reply/{id}"), correlation: Some(Bytes::from(id.to_string())) };
        Incoming { reply: Some(reply), ..msg(topic, payload) }
    }

    const FRONT: &str = "home/fuchun/front/frame";

    /// Each message as `topic code` (JSON with a code), `topic = payload` otherwise; `(retained)` if it is.
    fn show(out: &[Outgoing]) -> Vec<String> {
        out.iter()
            .map(|o| {
                let what = match serde_json::from_slice::<serde_json::Value>(&o.payload) {
                    Ok(v) if v.get("code").is_some() => format!("{} {}", o.topic, v["code"].as_str().unwrap()),
                    _ => format!("{} = {}", o.topic, String::from_utf8_lossy(&o.payload)),
                };
                if o.retain {
                    format!("{what} (retained)")
                } else {
                    what
                }
            })
            .collect()
    }

    fn body(o: &Outgoing) -> serde_json::Value {
        serde_json::from_slice(&o.payload).unwrap()
    }

    fn n(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// The frames queued for the workers, as `camera#seq`.
    fn queued(r: &Router) -> Vec<String> {
        let mut v = Vec::new();
        while let Some(f) = r.shared.queue.pop(Duration::ZERO) {
            r.shared.queue.done(&f.camera);
            v.push(format!("{}#{}", f.camera, f.seq));
        }
        v
    }

    #[test]
    fn a_frame_is_queued_as_it_came() {
        let mut r = router("");
        // decoding is the worker's: whatever the bytes, the frame is queued
        assert!(r.handle(msg(FRONT, b"not an image")).is_empty());
        let f = r.shared.queue.pop(Duration::ZERO).unwrap();
        assert_eq!(
            (f.camera.as_str(), f.seq, f.topic.as_str(), &f.payload[..]),
            ("front", 1, FRONT, &b"not an image"[..])
        );
        assert_eq!(f.reply, None);
        assert_eq!((n(&r.shared.stats.received), r.shared.cameras.load(Ordering::Relaxed)), (1, 1));
        // a frame of an input mapping, with its reply
        let mut r = router("[[inputs]]\ntopic = \"frigate/+/+/snapshot\"\ncamera_level = 1\n");
        assert!(r.handle(request("frigate/garage/person/snapshot", b"x", "a")).is_empty());
        let f = r.shared.queue.pop(Duration::ZERO).unwrap();
        assert_eq!((f.camera.as_str(), f.reply.unwrap().topic.as_str()), ("garage", "reply/a"));
    }

    #[test]
    fn frames_over_the_payload_limit_are_refused_with_an_error() {
        let mut r = router("[daemon]\nmax_payload_bytes = 10\n");
        let out = r.handle(request(FRONT, &[1; 11], "a"));
        assert_eq!(show(&out), ["home/fuchun/front/error payload_too_large", "reply/a payload_too_large"]);
        assert_eq!(body(&out[0])["seq"], 1);
        assert_eq!(out[1].correlation.as_deref(), Some(&b"a"[..]));
        assert!(r.handle(msg(FRONT, &[1; 10])).is_empty());
        assert_eq!(queued(&r), ["front#2"]);
        assert_eq!((n(&r.shared.stats.received), n(&r.shared.stats.errors)), (2, 1));
    }

    #[test]
    fn empty_frames_are_refused_unless_they_clear_a_retained_frame() {
        let mut r = router("");
        assert_eq!(show(&r.handle(msg(FRONT, b""))), ["home/fuchun/front/error empty_payload"]);
        assert!(r.handle(Incoming { retain: true, ..msg(FRONT, b"") }).is_empty());
        assert!(queued(&r).is_empty());
        assert_eq!((n(&r.shared.stats.errors), n(&r.shared.stats.dropped)), (1, 1));
    }

    #[test]
    fn frames_sooner_than_the_cameras_interval_are_dropped() {
        let mut r = router("[cameras.front]\nmin_interval_ms = 60000\n");
        assert!(r.handle(msg(FRONT, b"1")).is_empty());
        // dropped quietly; a requester is told
        assert!(r.handle(msg(FRONT, b"2")).is_empty());
        let out = r.handle(request(FRONT, b"3", "a"));
        assert_eq!(show(&out), ["reply/a rate_limited"]);
        assert_eq!(body(&out[0])["seq"], 3);
        assert_eq!(out[0].correlation.as_deref(), Some(&b"a"[..]));
        // other cameras have no interval (daemon.default_min_interval_ms = 0)
        assert!(r.handle(msg("home/fuchun/back/frame", b"4")).is_empty());
        assert!(r.handle(msg("home/fuchun/back/frame", b"5")).is_empty());
        assert_eq!(queued(&r), ["front#1", "back#5"]);
        assert_eq!(n(&r.shared.stats.dropped), 3); // 2, 3 and back's 4 (superseded by 5)
    }

    #[test]
    fn a_newer_frame_of_a_camera_supersedes_the_waiting_one() {
        let mut r = router("");
        assert!(r.handle(request(FRONT, b"1", "a")).is_empty());
        let out = r.handle(msg(FRONT, b"2"));
        assert_eq!(show(&out), ["reply/a superseded"]);
        assert_eq!((body(&out[0])["seq"].as_u64(), body(&out[0])["camera"].as_str()), (Some(1), Some("front")));
        assert_eq!(queued(&r), ["front#2"]);
        assert_eq!(n(&r.shared.stats.dropped), 1);
    }

    #[test]
    fn a_full_queue_evicts_the_longest_waiting_frame() {
        let mut r = router("[daemon]\nmax_queued_frames = 2\n");
        assert!(r.handle(request("home/fuchun/a/frame", b"1", "a")).is_empty());
        assert!(r.handle(msg("home/fuchun/b/frame", b"2")).is_empty());
        let out = r.handle(msg("home/fuchun/c/frame", b"3"));
        assert_eq!(show(&out), ["reply/a evicted"]);
        assert_eq!((body(&out[0])["camera"].as_str(), body(&out[0])["seq"].as_u64()), (Some("a"), Some(1)));
        assert_eq!(queued(&r), ["b#2", "c#3"]);
        assert_eq!((n(&r.shared.stats.dropped), n(&r.shared.stats.evicted_frames)), (1, 1));
    }

    #[test]
    fn frames_arriving_while_stopping_are_answered_shutting_down() {
        let mut r = router("");
        r.shared.queue.close();
        let out = r.handle(request(FRONT, b"1", "a"));
        assert_eq!(show(&out), ["home/fuchun/front/error shutting_down", "reply/a shutting_down"]);
    }

    #[test]
    fn bad_topics_and_response_topics_are_errors_of_their_own() {
        let mut r = router("");
        let out = r.handle(msg("home/fuchun/bad name!/frame", b"1"));
        assert_eq!(show(&out), ["home/fuchun/error bad_topic"]);
        assert_eq!(body(&out[0])["topic"], "home/fuchun/bad name!/frame");
        assert_eq!(show(&r.handle(msg("home/fuchun/bad name!/style/set", b"ink"))), ["home/fuchun/error bad_topic"]);
        // an unusable response topic: said on the camera's error topic, the frame still processed
        let bad = Incoming { bad_reply: Some("the MQTT v5 response topic is empty".into()), ..msg(FRONT, b"1") };
        assert_eq!(show(&r.handle(bad)), ["home/fuchun/front/error bad_response_topic"]);
        assert_eq!(queued(&r), ["front#1"]);
        assert_eq!((n(&r.shared.stats.control_errors), n(&r.shared.stats.errors)), (3, 0));
        // our own outputs and other topics are not for the router
        for t in ["home/fuchun/front/stylized", "home/fuchun/front/error", "home/fuchun/stats", "elsewhere/front/frame"]
        {
            assert!(r.handle(msg(t, b"x")).is_empty(), "{t}");
        }
        assert_eq!(n(&r.shared.stats.received), 1);
    }

    #[test]
    fn style_set_changes_the_cameras_style_and_says_so_retained() {
        let mut r = router("");
        let set = "home/fuchun/front/style/set";
        assert_eq!(r.shared.style_of("front"), "ink");
        assert_eq!(show(&r.handle(msg(set, b" wave\n"))), ["home/fuchun/front/style/state = wave (retained)"]);
        assert_eq!(r.shared.style_of("front"), "wave");
        assert_eq!(
            show(&r.handle(msg(set, br#"{"style": "ink"}"#))),
            ["home/fuchun/front/style/state = ink (retained)"]
        );
        assert_eq!(r.shared.style_of("front"), "ink");
        assert_eq!(r.shared.style_of("back"), "ink");
        for bad in [&b"not a name!"[..], b"{\"other\": \"ink\"}", b"{\"style\": 3}", b"\xff\xfe", b""] {
            let out = r.handle(msg(set, bad));
            assert_eq!(show(&out), ["home/fuchun/front/error bad_control_payload"], "{bad:?}");
        }
        let out = r.handle(msg(set, br#"{"style": "oil"}"#));
        assert_eq!(show(&out), ["home/fuchun/front/error unknown_style"]);
        assert!(body(&out[0])["message"].as_str().unwrap().contains("keeping \"ink\""));
        assert_eq!(show(&r.handle(msg(set, b"oil"))), ["home/fuchun/front/error unknown_style"]);
        assert_eq!(r.shared.style_of("front"), "ink");
        assert_eq!((n(&r.shared.stats.control_errors), n(&r.shared.stats.errors)), (7, 0));
    }

    #[test]
    fn a_retained_style_state_is_adopted_quietly() {
        let mut r = router("");
        assert!(r.handle(msg("home/fuchun/front/style/state", b"wave")).is_empty());
        assert_eq!(r.shared.style_of("front"), "wave");
        assert!(r.handle(msg("home/fuchun/front/style/state", b"oil")).is_empty());
        assert_eq!(r.shared.style_of("front"), "wave");
        assert_eq!(n(&r.shared.stats.control_errors), 0);
        // retained states of many cameras: kept within daemon.max_cameras like the rest of their state
        let mut r = router("[daemon]\nmax_cameras = 4\n");
        for i in 0..50 {
            r.handle(msg(&format!("home/fuchun/c{i}/style/state"), b"wave"));
        }
        assert_eq!(r.shared.cameras.load(Ordering::Relaxed), 4);
        assert_eq!((r.shared.style_of("c49"), r.shared.style_of("c0")), ("wave".into(), "ink".into()));
    }

    #[test]
    fn availability_is_claimed_while_serving_and_given_up_on_stopping() {
        let mut r = router("");
        let (own, all, peer) =
            ("home/fuchun/fuchun-1/available", "home/fuchun/available", "home/fuchun/fuchun-2/available");
        // not serving yet: an earlier run's last will stands
        assert!(r.handle(msg(own, b"offline")).is_empty());
        assert!(r.handle(msg(all, b"offline")).is_empty());
        assert_eq!(show(&r.serving()), [format!("{own} = online (retained)"), format!("{all} = online (retained)")]);
        assert_eq!(show(&r.handle(msg(own, b"offline"))), [format!("{own} = online (retained)")]);
        assert_eq!(show(&r.handle(msg(all, b"offline"))), [format!("{all} = online (retained)")]);
        assert!(r.handle(msg(own, b"online")).is_empty());
        assert!(r.handle(msg(all, b"online")).is_empty());
        // another daemon serves the prefix: stopping leaves the aggregate to it
        assert!(r.handle(msg(peer, b"online")).is_empty());
        assert_eq!(show(&r.stopped()), [format!("{own} = stopped (retained)")]);
        assert!(r.handle(msg(peer, b"offline")).is_empty());
        assert_eq!(show(&r.stopped()), [format!("{own} = stopped (retained)"), format!("{all} = stopped (retained)")]);
        // a lost connection: no longer claiming anything
        r.not_serving();
        assert!(r.handle(msg(own, b"offline")).is_empty());
        assert!(r.handle(msg(all, b"offline")).is_empty());
    }

    #[test]
    fn peers_are_kept_bounded_and_without_their_payloads() {
        let mut r = router("[daemon]\nmax_peers = 3\n");
        let peer = |i: usize| format!("home/fuchun/d{i}/available");
        for i in 0..10 {
            r.handle(msg(&peer(i), b"online"));
        }
        assert_eq!(r.peers.len(), 3);
        assert_eq!(n(&r.shared.stats.peers), 3);
        assert!(r.peers.contains_key("d9") && !r.peers.contains_key("d0"), "the least recently heard go first");
        // not online, or not a daemon id: not kept
        r.handle(msg(&peer(9), b"offline"));
        r.handle(msg(&format!("home/fuchun/{}/available", "x".repeat(70_000)), b"online"));
        r.handle(msg(&peer(20), &[b'y'; 100_000]));
        assert_eq!(r.peers.keys().map(String::as_str).collect::<HashSet<_>>(), HashSet::from(["d7", "d8"]));
        // and they still count as online when this one stops
        r.serving();
        assert_eq!(r.stopped().len(), 1, "another daemon serves: the aggregate is left to it");
    }

    #[test]
    fn hostile_names_are_echoed_as_short_escaped_excerpts() {
        let mut r = router("");
        let cam = format!("evil\n\x1b[2J{}", "a".repeat(60_000));
        let out = r.handle(msg(&format!("home/fuchun/{cam}/frame"), b"1"));
        assert_eq!(show(&out), ["home/fuchun/error bad_topic"]);
        assert!(out[0].payload.len() < 600, "{} bytes", out[0].payload.len());
        let b = body(&out[0]);
        for k in ["message", "topic"] {
            let v = b[k].as_str().unwrap();
            assert!(v.contains("evil\\n\\u{1b}[2J") && !v.contains('\x1b') && !v.contains('\n'), "{k}: {v:?}");
        }
        let style = serde_json::json!({ "style": cam }).to_string();
        let out = r.handle(msg("home/fuchun/front/style/set", style.as_bytes()));
        assert_eq!(show(&out), ["home/fuchun/front/error unknown_style"]);
        assert!(out[0].payload.len() < 600, "{} bytes", out[0].payload.len());
    }

    #[test]
    fn home_assistant_discovery_announces_each_camera_once() {
        let mut r = router("[daemon]\nhome_assistant_discovery = true\nmax_cameras = 2\n[cameras.front]\n");
        let topics = |out: &[Outgoing]| out.iter().map(|o| o.topic.clone()).collect::<Vec<_>>();
        let out = r.serving();
        assert_eq!(
            topics(&out)[2..],
            ["homeassistant/image/fuchun_1_front/config", "homeassistant/sensor/fuchun_1_front_duration/config"]
        );
        let (image, sensor) = (body(&out[2]), body(&out[3]));
        assert!(out[2].retain && out[3].retain);
        assert_eq!(image["image_topic"], "home/fuchun/front/stylized");
        assert_eq!(image["unique_id"], "fuchun_1_front_stylized");
        assert_eq!(image["availability"][0]["topic"], "home/fuchun/available");
        assert_eq!(sensor["state_topic"], "home/fuchun/front/stylized/meta");
        assert_eq!(sensor["device"]["identifiers"][0], "fuchun-1");
        // configured cameras are announced on serving, others with their first frame
        assert!(r.handle(msg(FRONT, b"1")).is_empty());
        assert_eq!(
            topics(&r.handle(msg("home/fuchun/back/frame", b"1"))),
            ["homeassistant/image/fuchun_1_back/config", "homeassistant/sensor/fuchun_1_back_duration/config"]
        );
        assert!(r.handle(msg("home/fuchun/back/frame", b"2")).is_empty());
        // a camera forgotten (daemon.max_cameras) is announced again when it comes back
        assert_eq!(r.handle(msg("home/fuchun/side/frame", b"1")).len(), 2);
        assert_eq!(r.handle(msg("home/fuchun/back/frame", b"3")).len(), 2);
        // without discovery: nothing of it
        let mut r = router("[cameras.front]\n");
        assert_eq!(r.serving().len(), 2);
        assert!(r.handle(msg("home/fuchun/back/frame", b"1")).is_empty());
    }

    #[test]
    fn cameras_beyond_max_cameras_are_forgotten_least_recent_first() {
        let mut r = router("[daemon]\nmax_cameras = 2\n[cameras.front]\nmin_interval_ms = 60000\n");
        r.handle(msg(FRONT, b"1"));
        r.handle(msg("home/fuchun/a/style/set", b"wave"));
        r.handle(msg("home/fuchun/b/frame", b"1"));
        // three cameras: `a` goes, not `front` (configured) although it was seen earlier
        assert_eq!(r.shared.style_of("a"), "ink");
        assert_eq!(n(&r.shared.stats.evicted_cameras), 1);
        assert_eq!(r.shared.cameras.load(Ordering::Relaxed), 2);
        // front keeps its rate limit
        assert!(r.handle(msg(FRONT, b"2")).is_empty());
        assert_eq!(n(&r.shared.stats.dropped), 1);
    }
}
