//! The messages the daemon makes up itself (not results): Home Assistant discovery, availability, the stats
//! snapshot, the answers to requesters whose frames were dropped.

use std::sync::atomic::Ordering;

use super::config::Config;
use super::link::Link;
use super::mqtt::Outgoing;
use super::queue::Reply;
use super::stats::Gauges;
use super::topics::Topics;
use super::worker::Shared;

/// Home Assistant MQTT discovery: an `image` entity and a duration sensor per camera.
pub(super) fn discovery(cfg: &Config, topics: &Topics, camera: &str) -> Vec<Outgoing> {
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

/// An availability (`online`, `stopped`; the last wills say `offline`), retained.
pub(super) fn availability(topic: String, value: &str) -> Outgoing {
    Outgoing::new(topic, value.to_string()).retained(true)
}

/// The answer to a requester (MQTT v5 response topic) whose frame was dropped before it was processed.
pub(super) fn dropped(r: &Reply, camera: &str, code: &str, seq: u64, message: &str) -> Outgoing {
    let body = serde_json::json!({"camera": camera, "code": code, "seq": seq, "message": message});
    Outgoing::json(r.topic.clone(), &body).answering(r)
}

/// The stats message (also served as Prometheus metrics with `daemon.metrics_listen`).
pub(super) fn stats_snapshot(s: &Shared, link: &Link) -> serde_json::Value {
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
