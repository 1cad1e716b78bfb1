//! Topic layout: `<prefix>/<camera>/frame` in, `<prefix>/<camera>/stylized` (+ `/meta`) and `/error` out,
//! `<prefix>/<camera>/style/set` → `<prefix>/<camera>/style/state`, `<prefix>/available`, `<prefix>/stats`.

use super::config::{valid_name, InputMapping};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Frame {
        camera: String,
    },
    StyleSet {
        camera: String,
    },
    StyleState {
        camera: String,
    },
    /// A daemon's availability (`<prefix>/<daemon_id>/available`) or the aggregate (`<prefix>/available`, None).
    Availability {
        daemon: Option<String>,
    },
    /// A topic we subscribe to that carries nothing usable (e.g. an invalid camera name).
    Invalid {
        reason: String,
    },
    Ignore,
}

#[derive(Debug, Clone)]
pub struct Topics {
    pub prefix: String,
    pub mappings: Vec<InputMapping>,
}

/// Characters of a received name or topic that error messages and log lines show at most: a topic level can be
/// 64 KiB, and echoing it whole would turn each small hostile message into a large reply and a large log line.
pub const EXCERPT_CHARS: usize = 64;

/// `s` for an error message or a log line: at most `EXCERPT_CHARS` characters, control characters (and `\\`)
/// escaped so that they cannot forge log lines or terminal output, and the full length noted when it was cut.
pub fn excerpt(s: &str) -> String {
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n == EXCERPT_CHARS {
            out.push_str(&format!("…({} bytes in all)", s.len()));
            break;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

/// MQTT filter matching (`+` one level, `#` the rest).
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl Topics {
    pub fn frame(&self, camera: &str) -> String {
        format!("{}/{camera}/frame", self.prefix)
    }
    pub fn stylized(&self, camera: &str) -> String {
        format!("{}/{camera}/stylized", self.prefix)
    }
    pub fn meta(&self, camera: &str) -> String {
        format!("{}/{camera}/stylized/meta", self.prefix)
    }
    pub fn error(&self, camera: &str) -> String {
        format!("{}/{camera}/error", self.prefix)
    }
    pub fn style_state(&self, camera: &str) -> String {
        format!("{}/{camera}/style/state", self.prefix)
    }
    /// The aggregate availability: `online` while any daemon of this prefix serves.
    pub fn available(&self) -> String {
        format!("{}/available", self.prefix)
    }
    /// One daemon's availability (its last will: `offline`).
    pub fn daemon_available(&self, daemon_id: &str) -> String {
        format!("{}/{daemon_id}/available", self.prefix)
    }
    pub fn stats(&self) -> String {
        format!("{}/stats", self.prefix)
    }

    /// (filter, shared) pairs to subscribe to; shared ones go through `$share/<group>/` when a group is set.
    pub fn subscriptions(&self) -> Vec<(String, bool)> {
        let mut v = vec![
            (format!("{}/+/frame", self.prefix), true),
            (format!("{}/+/style/set", self.prefix), false),
            (format!("{}/+/style/state", self.prefix), false),
            (format!("{}/available", self.prefix), false),
            (format!("{}/+/available", self.prefix), false),
        ];
        v.extend(self.mappings.iter().map(|m| (m.topic.clone(), true)));
        v
    }

    /// The filters of `subscriptions` whose retained messages are state to read back on every connect (chosen
    /// styles, availabilities), even into a kept session.
    pub fn state_subscriptions(&self) -> Vec<String> {
        let p = &self.prefix;
        vec![format!("{p}/+/style/state"), format!("{p}/available"), format!("{p}/+/available")]
    }

    pub fn route(&self, topic: &str) -> Route {
        if let Some(rest) = topic.strip_prefix(&self.prefix).and_then(|r| r.strip_prefix('/')) {
            let parts: Vec<&str> = rest.split('/').collect();
            let named = |cam: &str, ok: Route| {
                if valid_name(cam) {
                    ok
                } else {
                    let cam = excerpt(cam);
                    Route::Invalid { reason: format!("camera name \"{cam}\" must be 1-64 letters, digits, '_' or '-'") }
                }
            };
            match parts.as_slice() {
                ["available"] => return Route::Availability { daemon: None },
                [id, "available"] => return Route::Availability { daemon: Some(id.to_string()) },
                [cam, "frame"] => return named(cam, Route::Frame { camera: cam.to_string() }),
                [cam, "style", "set"] => return named(cam, Route::StyleSet { camera: cam.to_string() }),
                [cam, "style", "state"] => return named(cam, Route::StyleState { camera: cam.to_string() }),
                _ => {}
            }
        }
        for m in &self.mappings {
            if matches(&m.topic, topic) {
                let cam = match (&m.camera, m.camera_level) {
                    (Some(c), _) => c.clone(),
                    (None, Some(l)) => topic.split('/').nth(l).unwrap_or("").to_string(),
                    _ => continue,
                };
                if !valid_name(&cam) {
                    let (cam, topic) = (excerpt(&cam), excerpt(topic));
                    return Route::Invalid { reason: format!("camera name \"{cam}\" taken from {topic} is not valid") };
                }
                return Route::Frame { camera: cam };
            }
        }
        Route::Ignore
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        Topics {
            prefix: "home/fuchun".into(),
            mappings: vec![
                InputMapping { topic: "frigate/+/+/snapshot".into(), camera_level: Some(1), camera: None },
                InputMapping { topic: "doorbell/image".into(), camera_level: None, camera: Some("door".into()) },
            ],
        }
    }

    #[test]
    fn routes() {
        let t = topics();
        assert_eq!(t.route("home/fuchun/front/frame"), Route::Frame { camera: "front".into() });
        assert_eq!(t.route("home/fuchun/front/style/set"), Route::StyleSet { camera: "front".into() });
        assert_eq!(t.route("home/fuchun/front/style/state"), Route::StyleState { camera: "front".into() });
        assert_eq!(t.route("frigate/garage/person/snapshot"), Route::Frame { camera: "garage".into() });
        assert_eq!(t.route("doorbell/image"), Route::Frame { camera: "door".into() });
        assert_eq!(t.route("home/fuchun/front/stylized"), Route::Ignore);
        assert_eq!(t.route("home/fuchun/stats"), Route::Ignore);
        assert!(matches!(t.route("home/fuchun/bad name!/frame"), Route::Invalid { .. }));
        assert!(
            matches("a/#", "a/b/c") && matches("a/+/c", "a/b/c") && !matches("a/+", "a/b/c") && !matches("a/b", "a")
        );
        assert_eq!(t.route("home/fuchun/available"), Route::Availability { daemon: None });
        assert_eq!(t.route("home/fuchun/d1/available"), Route::Availability { daemon: Some("d1".into()) });
        assert_eq!(t.subscriptions().len(), 7);
    }

    #[test]
    fn excerpts_are_short_and_escaped() {
        assert_eq!(excerpt("front"), "front");
        assert_eq!(excerpt("a\nb\x1b[31mc\\"), "a\\nb\\u{1b}[31mc\\\\");
        let long = "é".repeat(30_000);
        let e = excerpt(&long);
        assert!(e.starts_with(&"é".repeat(EXCERPT_CHARS)) && e.ends_with("…(60000 bytes in all)"), "{e}");
        assert!(e.len() < 200);
        let Route::Invalid { reason } = topics().route(&format!("home/fuchun/{}/frame", "x!".repeat(30_000))) else {
            panic!("not invalid")
        };
        assert!(reason.len() < 300, "{reason}");
    }
}
