//! Test support for the daemon: a real Mosquitto (the machine's on 127.0.0.1:1883, or one started on a free
//! port), a probe client that records everything under a prefix, and `fuchun serve` processes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{Client, Event, MqttOptions};

use super::common;

/// A Mosquitto we started (killed on drop).
pub struct Broker {
    pub port: u16,
    child: Option<Child>,
}

impl Broker {
    pub fn start_on(port: u16) -> Broker {
        let child = Command::new("mosquitto")
            .args(["-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting mosquitto: install it (apt-get install mosquitto)");
        let b = Broker { port, child: Some(child) };
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(10), "mosquitto did not start on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        b
    }

    /// A broker with its own configuration file, waiting until every port answers.
    pub fn start_with_config(config: &Path, ports: &[u16]) -> Broker {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting mosquitto: install it (apt-get install mosquitto)");
        let b = Broker { port: ports[0], child: Some(child) };
        let t = Instant::now();
        for &port in ports {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(t.elapsed() < Duration::from_secs(10), "mosquitto did not start on port {port}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        b
    }

    pub fn start() -> Broker {
        Broker::start_on(free_port())
    }

    /// Freeze the broker (SIGSTOP): connections stay open, nothing is read, acknowledged or forwarded, as with a
    /// broker host that hangs or a network path that silently drops everything.
    pub fn freeze(&self) {
        let pid = self.child.as_ref().expect("the broker is not running").id().to_string();
        let ok = Command::new("kill").args(["-STOP", &pid]).status().map(|s| s.success()).unwrap_or(false);
        assert!(ok, "could not stop mosquitto (pid {pid})");
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy on a free port to `127.0.0.1:target` that holds every chunk for `delay` before passing it on, both
/// ways: a broker that far away. Runs until the test process ends.
pub fn slow_link(target: u16, delay: Duration) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let pipe = move |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n) = from.read(&mut buf) {
                std::thread::sleep(delay);
                if n == 0 || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(std::net::Shutdown::Both);
        });
    };
    std::thread::spawn(move || {
        for client in listener.incoming().map_while(Result::ok) {
            let Ok(broker) = TcpStream::connect(("127.0.0.1", target)) else { continue };
            pipe(client.try_clone().unwrap(), broker.try_clone().unwrap());
            pipe(broker, client);
        }
    });
    port
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The broker most tests share: the machine's Mosquitto on 1883 when it answers, else one we start.
pub fn shared_broker_port() -> u16 {
    static PORT: OnceLock<(u16, Option<Broker>)> = OnceLock::new();
    PORT.get_or_init(|| {
        if TcpStream::connect_timeout(&"127.0.0.1:1883".parse().unwrap(), Duration::from_millis(300)).is_ok() {
            (1883, None)
        } else {
            let b = Broker::start();
            (b.port, Some(b))
        }
    })
    .0
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A topic prefix no other test uses.
pub fn unique_prefix(name: &str) -> String {
    format!("fuchun-test/{}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed), name)
}

#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
    pub props: Option<PublishProperties>,
    pub at: Instant,
}

impl Msg {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {:?}", self.topic, self.payload))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// An MQTT v5 client that records every message on its subscriptions.
pub struct Probe {
    pub client: Client,
    pub msgs: Arc<Mutex<Vec<Msg>>>,
}

impl Probe {
    pub fn new(port: u16, filters: &[&str]) -> Probe {
        let id = format!("probe-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_max_packet_size(Some(64 << 20));
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut conn) = Client::new(o, 256);
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let (m2, ready) = (msgs.clone(), Arc::new(Mutex::new(0usize)));
        let r2 = ready.clone();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(Event::Incoming(Packet::Publish(p))) => m2.lock().unwrap().push(Msg {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload,
                        retain: p.retain,
                        props: p.properties,
                        at: Instant::now(),
                    }),
                    Ok(Event::Incoming(Packet::SubAck(_))) => *r2.lock().unwrap() += 1,
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        for f in filters {
            client.subscribe(*f, QoS::AtLeastOnce).unwrap();
        }
        let t = Instant::now();
        while *ready.lock().unwrap() < filters.len() {
            assert!(t.elapsed() < Duration::from_secs(10), "probe could not subscribe");
            std::thread::sleep(Duration::from_millis(10));
        }
        Probe { client, msgs }
    }

    pub fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload.into()).unwrap();
    }

    pub fn request(&self, topic: &str, payload: impl Into<Vec<u8>>, response_topic: &str, correlation: &[u8]) {
        let props = PublishProperties {
            response_topic: Some(response_topic.to_string()),
            correlation_data: Some(Bytes::copy_from_slice(correlation)),
            ..Default::default()
        };
        self.client.publish_with_properties(topic, QoS::AtLeastOnce, false, payload.into(), props).unwrap();
    }

    pub fn all(&self) -> Vec<Msg> {
        self.msgs.lock().unwrap().clone()
    }

    pub fn on(&self, topic: &str) -> Vec<Msg> {
        self.all().into_iter().filter(|m| m.topic == topic).collect()
    }

    /// Wait until `n` messages on `topic` have arrived; returns them.
    pub fn wait_n(&self, topic: &str, n: usize, timeout: Duration) -> Vec<Msg> {
        let t = Instant::now();
        loop {
            let v = self.on(topic);
            if v.len() >= n {
                return v;
            }
            if t.elapsed() > timeout {
                let seen: Vec<String> = self.all().iter().map(|m| format!("{} {:.80}", m.topic, m.text())).collect();
                panic!("waited {timeout:?} for {n} message(s) on {topic}, got {}; all: {seen:#?}", v.len());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_for(&self, topic: &str, pred: impl Fn(&Msg) -> bool, timeout: Duration) -> Msg {
        let t = Instant::now();
        loop {
            if let Some(m) = self.on(topic).into_iter().find(|m| pred(m)) {
                return m;
            }
            if t.elapsed() > timeout {
                let seen: Vec<String> = self.all().iter().map(|m| format!("{} {:.100}", m.topic, m.text())).collect();
                panic!("waited {timeout:?} for a matching message on {topic}; all: {seen:#?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn clear(&self) {
        self.msgs.lock().unwrap().clear();
    }
}

/// A `fuchun serve` process (killed on drop).
pub struct Daemon {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Start with a config: `extra` is appended to a base config (prefix, port, test model, one style "ink").
    pub fn start(port: u16, prefix: &str, client_id: &str, extra: &str) -> Daemon {
        Daemon::start_env(port, prefix, client_id, extra, &[])
    }

    /// `start` with extra environment variables.
    pub fn start_env(port: u16, prefix: &str, client_id: &str, extra: &str, env: &[(&str, &str)]) -> Daemon {
        let (dir, path) = Daemon::config(port, prefix, client_id, extra);
        Daemon::spawn(dir, &path, env)
    }

    /// Write the configuration `start` would use; the directory holds it (as `fuchun.toml`).
    pub fn config(port: u16, prefix: &str, client_id: &str, extra: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let base = format!(
            r#"
[mqtt]
host = "127.0.0.1"
port = {port}
prefix = "{prefix}"
client_id = "{client_id}"
reconnect_min_ms = 100
reconnect_max_ms = 500

[model]
dir = "{model}"
provider = "cpu"
threads = 1

[styles.ink]
images = ["{style}"]
image_size = 64
iterations = 15
"#,
            model = common::test_model().display(),
            style = common::example("fuchun.jpg").display(),
        );
        let path = dir.path().join("fuchun.toml");
        std::fs::write(&path, merge(&base, extra)).unwrap();
        (dir, path)
    }

    /// `fuchun serve --config <config>`, with `env` set; `dir` is kept until the daemon is dropped.
    pub fn spawn(dir: tempfile::TempDir, config: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fuchun"))
            .args(["serve", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .env("FUCHUN_LOG", "info,ort=error")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (l2, err) = (log.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                l2.lock().unwrap().push(line);
            }
        });
        Daemon { child, dir, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([&format!("-{sig}"), &self.pid().to_string()]).status().unwrap().success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Wait for the process to exit; its status, or None after the timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Wait until a log line contains `needle`; false after the timeout.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if self.log_text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Base TOML with `extra` deep-merged into it (tables merged key by key, other values replaced).
fn merge(base: &str, extra: &str) -> String {
    fn deep(into: &mut toml::Table, from: toml::Table) {
        for (k, v) in from {
            match (into.get_mut(&k), v) {
                (Some(toml::Value::Table(a)), toml::Value::Table(b)) => deep(a, b),
                (_, v) => {
                    into.insert(k, v);
                }
            }
        }
    }
    let mut b: toml::Table = base.parse().expect("base config");
    deep(&mut b, extra.parse().expect("extra config"));
    toml::to_string(&b).unwrap()
}

/// A JPEG test frame: w×h, a gradient tinted by `tint`.
pub fn jpeg(w: usize, h: usize, tint: f32) -> Vec<u8> {
    let mut p = fuchun::imageio::Planar::new(w, h);
    let n = w * h;
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            p.data[i] = x as f32 / w as f32;
            p.data[n + i] = y as f32 / h as f32;
            p.data[2 * n + i] = tint;
        }
    }
    fuchun::imageio::encode(&p, fuchun::imageio::OutputFormat::Jpeg { quality: 90 }).unwrap()
}

pub fn wait_online(probe: &Probe, prefix: &str) {
    probe.wait_for(&format!("{prefix}/available"), |m| m.text() == "online", Duration::from_secs(30));
}

pub fn root() -> PathBuf {
    common::root()
}
