//! `fuchun view` over HTTP: the daemons' stats as Prometheus metrics, and hostile clients — oversized headers,
//! slow clients, many idle event streams, path traversal and odd methods — after which it still serves. Also the
//! daemon's own `/metrics` (`daemon.metrics_listen`).

mod common;
mod mqtt_support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mqtt_support::{free_port, unique_prefix, Broker, Daemon, Probe};

/// A `fuchun view` process with its own broker (both stopped on drop).
struct View {
    child: Child,
    http: u16,
    prefix: String,
    broker: Broker,
    _dir: tempfile::TempDir,
}

impl View {
    fn start(args: &[&str]) -> View {
        View::start_with_fd_limit(args, None)
    }

    /// Started with a soft limit on open files (as systemd's 1024), through the shell's `ulimit -n`.
    fn start_with_fd_limit(args: &[&str], fd_limit: Option<u32>) -> View {
        let broker = Broker::start();
        let prefix = unique_prefix("view");
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(
            &cfg,
            format!(
                "[mqtt]\nport = {}\nprefix = \"{prefix}\"\nclient_id = \"view-test\"\n[styles.ink]\nimages = [\"{}\"]\n",
                broker.port,
                common::example("fuchun.jpg").display()
            ),
        )
        .unwrap();
        let http = free_port();
        let mut cmd = match fd_limit {
            Some(n) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), env!("CARGO_BIN_EXE_fuchun")]);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_fuchun")),
        };
        let child = cmd
            .args(["view", "--config", cfg.to_str().unwrap(), "--listen", &format!("127.0.0.1:{http}")])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", http)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(10), "the view did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        View { child, http, prefix, broker, _dir: dir }
    }

    /// Resident set size of the view process, bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB");
        kb.trim().parse::<u64>().unwrap() * 1024
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.http)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// Send `raw` and read the whole response (the server closes after each one): (status line, headers, body).
    fn raw(&self, raw: &[u8]) -> (String, String, Vec<u8>) {
        let mut s = self.connect();
        let _ = s.write_all(raw);
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        split(&buf)
    }

    fn request(&self, method: &str, path: &str) -> (String, String, Vec<u8>) {
        self.raw(format!("{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
    }

    fn get(&self, path: &str) -> (String, String, Vec<u8>) {
        self.request("GET", path)
    }

    /// GET / and /metrics still answer.
    fn still_serves(&self) {
        for path in ["/", "/metrics", "/healthz"] {
            let (status, _, _) = self.get(path);
            assert!(status.starts_with("HTTP/1.1 200"), "{path}: {status}");
        }
    }

    /// Open an event stream; its status line and headers (the stream stays open).
    fn open_events(&self, camera: &str) -> (TcpStream, String) {
        let mut s = self.connect();
        write!(s, "GET /events/{camera} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(1) => head.push(b[0]),
                _ => break,
            }
        }
        (s, String::from_utf8_lossy(&head).into_owned())
    }
}

impl Drop for View {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.broker.kill();
    }
}

fn split(buf: &[u8]) -> (String, String, Vec<u8>) {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (String::from_utf8_lossy(buf).into_owned(), String::new(), Vec::new());
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let (status, headers) = head.split_once("\r\n").unwrap_or((&head, ""));
    (status.to_string(), headers.to_ascii_lowercase(), buf[end + 4..].to_vec())
}

/// Exposition lines as (name, labels, value); panics on a malformed line (the unit tests check the format fully).
fn samples(text: &str) -> Vec<(String, String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("{l}"));
            let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'), "{l}");
            (
                name.to_string(),
                labels.trim_end_matches('}').to_string(),
                value.parse().unwrap_or_else(|_| panic!("{l}")),
            )
        })
        .collect()
}

fn value(text: &str, name: &str, label: &str) -> Option<f64> {
    samples(text).into_iter().find(|(n, l, _)| n == name && l.contains(label)).map(|s| s.2)
}

#[test]
fn view_metrics_show_each_daemon() {
    let view = View::start(&[]);
    let probe = Probe::new(view.broker.port, &[]);
    let stats = |processed: u64, id: Option<&str>| {
        let mut v = serde_json::json!({"received": 9, "processed": processed, "dropped": 1, "errors": 0,
            "warm_starts": 2, "queue_depth": 0, "duration_ms": {"p50": 120.5, "p90": 200, "p99": 300, "max": 310},
            "mean_evaluations": 41.5, "provider": "CPU", "rss_bytes": 1000, "peak_rss_bytes": 2000, "uptime_s": 5});
        if let Some(id) = id {
            v["daemon_id"] = id.into();
        }
        v.to_string()
    };
    // the view subscribes after connecting: publish until it shows both daemons
    let t = Instant::now();
    let text = loop {
        probe.publish(&format!("{}/stats", view.prefix), stats(4, Some("edge-1")));
        probe.publish(&format!("{}/edge-2/stats", view.prefix), stats(7, None));
        std::thread::sleep(Duration::from_millis(200));
        let (status, headers, body) = view.get("/metrics");
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert!(headers.contains("content-type: text/plain; version=0.0.4"), "{headers}");
        let text = String::from_utf8(body).unwrap();
        if text.contains("edge-1") && text.contains("edge-2") {
            break text;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "the view never showed both daemons: {text}");
    };
    assert_eq!(value(&text, "fuchun_processed_total", "daemon_id=\"edge-1\""), Some(4.0));
    assert_eq!(value(&text, "fuchun_processed_total", "daemon_id=\"edge-2\""), Some(7.0));
    assert_eq!(value(&text, "fuchun_duration_ms", "quantile=\"0.5\""), Some(120.5));
    assert_eq!(value(&text, "fuchun_info", "provider=\"CPU\""), Some(1.0));
    assert_eq!(text.matches("# TYPE fuchun_processed_total counter").count(), 1);
    // a newer message replaces a daemon's series
    let t = Instant::now();
    loop {
        probe.publish(&format!("{}/stats", view.prefix), stats(5, Some("edge-1")));
        std::thread::sleep(Duration::from_millis(100));
        let text = String::from_utf8(view.get("/metrics").2).unwrap();
        if value(&text, "fuchun_processed_total", "daemon_id=\"edge-1\"") == Some(5.0) {
            assert_eq!(samples(&text).iter().filter(|s| s.0 == "fuchun_processed_total").count(), 2);
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{text}");
    }
}

#[test]
fn a_daemon_that_falls_silent_is_forgotten() {
    let view = View::start(&["--forget-after-s", "3"]);
    let probe = Probe::new(view.broker.port, &[]);
    let stats = |id: &str| serde_json::json!({"received": 1, "processed": 1, "daemon_id": id}).to_string();
    let shown = |text: &str, id: &str| value(text, "fuchun_processed_total", &format!("daemon_id=\"{id}\"")).is_some();
    let t = Instant::now();
    loop {
        probe.publish(&format!("{}/stats", view.prefix), stats("edge-1"));
        probe.publish(&format!("{}/stats", view.prefix), stats("edge-2"));
        std::thread::sleep(Duration::from_millis(200));
        let text = String::from_utf8(view.get("/metrics").2).unwrap();
        if shown(&text, "edge-1") && shown(&text, "edge-2") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "the view never showed both daemons: {text}");
    }
    // edge-1 falls silent, edge-2 goes on: edge-1 is gone after 3 s, edge-2 stays
    let t = Instant::now();
    loop {
        probe.publish(&format!("{}/stats", view.prefix), stats("edge-2"));
        std::thread::sleep(Duration::from_millis(250));
        let text = String::from_utf8(view.get("/metrics").2).unwrap();
        assert!(shown(&text, "edge-2"), "{text}");
        if !shown(&text, "edge-1") {
            assert!(t.elapsed() >= Duration::from_millis(2500), "forgotten too early: {:?}", t.elapsed());
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "a silent daemon was never forgotten: {text}");
    }
    // heard from again: shown again
    let t = Instant::now();
    loop {
        probe.publish(&format!("{}/stats", view.prefix), stats("edge-1"));
        std::thread::sleep(Duration::from_millis(200));
        if shown(&String::from_utf8(view.get("/metrics").2).unwrap(), "edge-1") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "edge-1 not shown again");
    }
}

#[test]
fn oversized_headers_are_refused() {
    let view = View::start(&[]);
    let mut req = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 64 << 10));
    req.extend(b"\r\n\r\n");
    let (status, _, _) = view.raw(&req);
    assert!(!status.starts_with("HTTP/1.1 200"), "a 64 KiB header was accepted");
    assert!(status.is_empty() || status.starts_with("HTTP/1.1 431"), "{status}");
    // many headers, each small
    let mut req = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..2000 {
        req.extend(format!("X-H{i}: {}\r\n", "b".repeat(20)).as_bytes());
    }
    req.extend(b"\r\n");
    let (status, _, _) = view.raw(&req);
    assert!(status.is_empty() || status.starts_with("HTTP/1.1 431"), "{status}");
    // an ordinary request with a few KiB of headers is fine
    let req = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nCookie: {}\r\n\r\n", "c".repeat(4000));
    assert!(view.raw(req.as_bytes()).0.starts_with("HTTP/1.1 200"));
    view.still_serves();
}

#[test]
fn slow_clients_are_dropped() {
    let view = View::start(&["--header-timeout-ms", "1500"]);
    // one header byte a second, never finishing: the server must close the connection at its header deadline
    let mut s = view.connect();
    let mut reader = s.try_clone().unwrap();
    let t = Instant::now();
    let closed = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let r = reader.read_to_end(&mut buf);
        (t.elapsed(), r.map_err(|e| e.kind()), buf)
    });
    let request = b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: slow slow slow slow slow slow slow";
    for b in request {
        if s.write_all(&[*b]).is_err() || closed.is_finished() {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let (after, r, buf) = closed.join().unwrap();
    assert!(!matches!(r, Err(ErrorKind::WouldBlock | ErrorKind::TimedOut)), "still open after {after:?}");
    assert!(after < Duration::from_secs(5), "the slow client was held for {after:?}");
    let (status, _, _) = split(&buf);
    assert!(!status.starts_with("HTTP/1.1 200"), "{status}");
    // a client that connects and sends nothing is dropped too
    let mut idle = view.connect();
    let t = Instant::now();
    let mut buf = Vec::new();
    let r = idle.read_to_end(&mut buf);
    assert!(r.is_ok() && t.elapsed() < Duration::from_secs(5), "{r:?} after {:?}", t.elapsed());
    view.still_serves();
}

#[test]
fn event_streams_are_capped_and_released() {
    let view = View::start(&["--max-event-streams", "3", "--keep-alive-ms", "200"]);
    let mut open: Vec<TcpStream> = (0..3)
        .map(|i| {
            let (s, head) = view.open_events(&format!("cam{i}"));
            assert!(head.starts_with("HTTP/1.1 200") && head.contains("text/event-stream"), "{head}");
            s
        })
        .collect();
    // over the cap: 503, while the page, frames and metrics are still served
    let (status, _, _) = view.get("/events/cam9");
    assert!(status.starts_with("HTTP/1.1 503"), "{status}");
    assert!(view.get("/frame/cam0.jpg").0.starts_with("HTTP/1.1 404"));
    view.still_serves();
    // idle streams get keep-alive comments
    let mut got = Vec::new();
    let mut b = [0u8; 256];
    let t = Instant::now();
    while !String::from_utf8_lossy(&got).contains(": keep-alive") {
        let n = open[0].read(&mut b).unwrap();
        assert!(n > 0 && t.elapsed() < Duration::from_secs(5), "no keep-alive comment");
        got.extend_from_slice(&b[..n]);
    }
    // a client that goes away frees its slot
    drop(open.remove(0));
    let t = Instant::now();
    let (_again, head) = loop {
        let (s, head) = view.open_events("cam0");
        if head.starts_with("HTTP/1.1 200") {
            break (s, head);
        }
        assert!(head.starts_with("HTTP/1.1 503"), "{head}");
        assert!(t.elapsed() < Duration::from_secs(5), "the closed stream's slot was never released");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(head.contains("text/event-stream"));
    view.still_serves();
}

#[test]
fn bad_paths_and_methods() {
    let view = View::start(&[]);
    // give the view a frame, so that a working route is known to answer 200
    let probe = Probe::new(view.broker.port, &[]);
    let t = Instant::now();
    while !view.get("/frame/door.jpg").0.starts_with("HTTP/1.1 200") {
        probe.publish(&format!("{}/door/stylized", view.prefix), vec![0xff, 0xd8, 0xff, 0xd9]);
        std::thread::sleep(Duration::from_millis(200));
        assert!(t.elapsed() < Duration::from_secs(15), "the view never received a frame");
    }
    for path in [
        "/frame/../../etc/passwd",
        "/frame/..%2F..%2Fetc%2Fpasswd.jpg",
        "/frame/%2e%2e.jpg",
        "/frame/door.png",
        "/frame/door",
        "/frame/.jpg",
        "/camera/..%2F..%2Fetc%2Fpasswd",
        "/camera/%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        "/camera/door%00",
        "/camera/%ff%fe",
        "/camera/door/extra",
        "/camera/",
        "/events/..%2Fdoor",
        "/events/a%20b",
        "//etc/passwd",
        "/nothing",
    ] {
        let (status, _, body) = view.get(path);
        assert!(status.starts_with("HTTP/1.1 404"), "{path}: {status}");
        let body = String::from_utf8_lossy(&body);
        assert!(!body.contains("script") && !body.contains("passwd"), "{path}: {body}");
    }
    let long = format!("/camera/{}", "a".repeat(65));
    assert!(view.get(&long).0.starts_with("HTTP/1.1 404"));
    for (method, path) in
        [("POST", "/"), ("PUT", "/frame/door.jpg"), ("DELETE", "/camera/door"), ("POST", "/metrics"), ("PATCH", "/x")]
    {
        let (status, _, _) = view.request(method, path);
        assert!(status.starts_with("HTTP/1.1 405"), "{method} {path}: {status}");
    }
    let body = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let req = format!("POST /events/door HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len());
    assert!(view.raw(&[req.as_bytes(), body].concat()).0.starts_with("HTTP/1.1 405"));
    // garbage is a 400 at most
    let (status, _, _) = view.raw(b"\x16\x03\x01\x02\x00garbage\r\n\r\n");
    assert!(status.is_empty() || status.starts_with("HTTP/1.1 400"), "{status}");
    // and the real routes are fine
    let (status, headers, body) = view.get("/frame/door.jpg");
    assert!(status.starts_with("HTTP/1.1 200") && headers.contains("content-type: image/jpeg"), "{status}");
    assert_eq!(body, [0xff, 0xd8, 0xff, 0xd9]);
    let (status, _, body) = view.get("/camera/door");
    assert!(status.starts_with("HTTP/1.1 200") && String::from_utf8_lossy(&body).contains("/frame/door.jpg?v="));
    let (_, _, body) = view.get("/");
    assert!(String::from_utf8_lossy(&body).contains("<a href=\"/camera/door\">door</a>"));
    view.still_serves();
}

#[test]
fn daemon_serves_its_metrics() {
    let broker = Broker::start();
    let prefix = unique_prefix("metrics");
    let http = free_port();
    let probe = Probe::new(broker.port, &[&format!("{prefix}/#")]);
    let d = Daemon::start(
        broker.port,
        &prefix,
        "metrics-test",
        &format!("[daemon]\nmetrics_listen = \"127.0.0.1:{http}\"\n"),
    );
    mqtt_support::wait_online(&probe, &prefix);
    let get = |path: &str| {
        let mut s = TcpStream::connect(("127.0.0.1", http)).unwrap_or_else(|e| panic!("{e}: {}", d.log_text()));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        split(&buf)
    };
    let (status, headers, body) = get("/metrics");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(headers.contains("content-type: text/plain; version=0.0.4"), "{headers}");
    let text = String::from_utf8(body).unwrap();
    assert_eq!(value(&text, "fuchun_info", "provider=\"cpu\""), Some(1.0), "{text}");
    assert_eq!(value(&text, "fuchun_received_total", "daemon_id="), Some(0.0), "{text}");
    assert!(value(&text, "fuchun_rss_bytes", "daemon_id=").unwrap() > 0.0);
    // a frame: counted
    probe.publish(&format!("{prefix}/door/frame"), mqtt_support::jpeg(48, 32, 0.3));
    probe.wait_n(&format!("{prefix}/door/stylized"), 1, Duration::from_secs(60));
    let t = Instant::now();
    let text = loop {
        let text = String::from_utf8(get("/metrics").2).unwrap();
        if value(&text, "fuchun_processed_total", "daemon_id=") == Some(1.0) {
            break text;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(value(&text, "fuchun_received_total", "daemon_id="), Some(1.0), "{text}");
    assert!(value(&text, "fuchun_duration_ms", "quantile=\"0.5\"").unwrap() > 0.0, "{text}");
    assert!(get("/healthz").0.starts_with("HTTP/1.1 200"));
    assert!(get("/nothing").0.starts_with("HTTP/1.1 404"));
    // a second daemon cannot have the same address: it says so and exits
    let mut other = Daemon::start(
        broker.port,
        &prefix,
        "metrics-test-2",
        &format!("[daemon]\nmetrics_listen = \"127.0.0.1:{http}\"\n"),
    );
    let status = other.wait_exit(Duration::from_secs(30)).expect("the second daemon kept running");
    assert!(!status.success());
    let t = Instant::now();
    while !other.log_text().contains("metrics_listen") {
        assert!(t.elapsed() < Duration::from_secs(5), "{}", other.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Issue 21 item 5: whatever is published under the prefix, the view keeps at most `--max-results` results and
/// `--max-result-bytes` of them, the stats of `--max-daemons` daemons, and no stats message over
/// `--max-stats-bytes` or `--max-stats-fields` (defaults: 64, 32 MiB, 64, 64 KiB, 256).
#[test]
fn a_flood_of_results_and_stats_is_kept_within_bounds() {
    let view = View::start(&[]);
    let probe = Probe::new(view.broker.port, &[]);
    let p = &view.prefix;
    // the view subscribes after connecting: wait until a result is shown
    let t = Instant::now();
    while !view.get("/frame/first.jpg").0.starts_with("HTTP/1.1 200") {
        probe.publish(&format!("{p}/first/stylized"), vec![0xff, 0xd8, 0xff, 0xd9]);
        std::thread::sleep(Duration::from_millis(200));
        assert!(t.elapsed() < Duration::from_secs(15), "the view never received a result");
    }
    let before = view.rss();
    // 300 cameras × 200 KB of results (60 MB), 100 daemons, 20 daemons with 20,000-field stats (~400 KB each),
    // and one with 1000 small fields (under the byte bound, over the series bound)
    let result = vec![0x55u8; 200_000];
    for i in 0..300 {
        probe.publish(&format!("{p}/cam{i}/stylized"), result.clone());
    }
    for i in 0..100 {
        let s = serde_json::json!({"daemon_id": format!("d{i}"), "processed": i, "note": "x".repeat(1000)});
        probe.publish(&format!("{p}/stats"), s.to_string());
    }
    let wide: serde_json::Map<String, serde_json::Value> =
        (0..20_000).map(|k| (format!("field_{k}"), serde_json::json!(k))).collect();
    for i in 0..20 {
        let mut s = serde_json::Value::Object(wide.clone());
        s["daemon_id"] = format!("wide{i}").into();
        probe.publish(&format!("{p}/stats"), s.to_string());
    }
    let many: serde_json::Map<String, serde_json::Value> =
        (0..1000).map(|k| (format!("f{k}"), serde_json::json!(k))).collect();
    let mut s = serde_json::Value::Object(many);
    s["daemon_id"] = "many".into();
    probe.publish(&format!("{p}/stats"), s.to_string());
    // the last message of the flood: once it is shown, every earlier one has been seen
    let t = Instant::now();
    while !view.get("/frame/last.jpg").0.starts_with("HTTP/1.1 200") {
        probe.publish(&format!("{p}/last/stylized"), result.clone());
        std::thread::sleep(Duration::from_millis(200));
        assert!(t.elapsed() < Duration::from_secs(60), "the view never received the last result");
    }
    let listed = String::from_utf8(view.get("/").2).unwrap();
    let cams: Vec<&str> = listed.split("<a href=\"/camera/").skip(1).map(|r| &r[..r.find('"').unwrap()]).collect();
    let mut bytes = 0;
    for c in &cams {
        let (status, _, body) = view.get(&format!("/frame/{c}.jpg"));
        assert!(status.starts_with("HTTP/1.1 200"), "{c}: {status}");
        bytes += body.len();
    }
    let (status, _, metrics) = view.get("/metrics");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let metrics = String::from_utf8(metrics).unwrap();
    let daemons: Vec<String> = samples(&metrics).into_iter().filter(|s| s.0 == "fuchun_info").map(|s| s.1).collect();
    let after = view.rss();
    eprintln!(
        "view: {} results kept ({bytes} bytes), {} daemons, /metrics {} bytes; RSS {} -> {} MiB",
        cams.len(),
        daemons.len(),
        metrics.len(),
        before >> 20,
        after >> 20
    );
    assert!(cams.len() <= 64 && cams.contains(&"last") && cams.contains(&"cam299"), "{} kept", cams.len());
    assert!(bytes <= 32 << 20, "{bytes} bytes of results kept");
    assert!(daemons.len() <= 64, "{} daemons kept", daemons.len());
    assert!(daemons.iter().any(|l| l.contains("\"d99\"")), "the most recent daemon is kept");
    assert!(!metrics.contains("wide") && !metrics.contains("\"many\""), "oversized stats kept");
    assert!(metrics.len() < 1 << 20, "/metrics is {} bytes", metrics.len());
    view.still_serves();
}

/// Issue 21 item 10: a flood of idle connections (more than the process's file descriptors) does not lock out
/// health checks: beyond `--max-connections` (default 256) the oldest idle one is closed.
#[test]
fn idle_connections_cannot_lock_out_health_checks() {
    let view = View::start_with_fd_limit(&[], Some(320));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], view.http));
    // a server that no longer accepts leaves new connections in its listen queue, and then unanswered: stop at
    // the first that is not accepted within 2 s. (In batches: the listen queue holds 128 here, and a connection
    // beyond it waits a second for its SYN to be sent again.)
    let idle: Vec<TcpStream> = (0..450)
        .map_while(|i| {
            if i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(50));
            }
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..5 {
        let t = Instant::now();
        let status = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok().map(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            split(&buf).0
        });
        assert!(
            status.as_deref().is_some_and(|s| s.starts_with("HTTP/1.1 200")),
            "health check {i} with {} idle connections open, after {:?}: {status:?}",
            idle.len(),
            t.elapsed()
        );
    }
    assert_eq!(idle.len(), 450, "the server stopped accepting connections");
    drop(idle);
    view.still_serves();
}
