//! `fuchun serve` under the failures an outside attack found (issue 14): long broker outages with many queued
//! results, SIGTERM with hundreds of queued cameras and during a reconnect back-off, hostile response topics,
//! unbounded camera names, huge frames, several daemons sharing a prefix, and frames sent while disconnected.
//! Each test runs against a real Mosquitto (its own when it kills the broker) and fails on the old behaviour.

mod common;
mod mqtt_support;

use std::time::{Duration, Instant};

use mqtt_support::{free_port, jpeg, shared_broker_port, slow_link, unique_prefix, wait_online, Broker, Daemon, Probe};

const T: Duration = Duration::from_secs(60);

fn stats_where(probe: &Probe, prefix: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    probe.wait_for(&format!("{prefix}/stats"), |m| pred(&m.json()), T).json()
}

/// A frame that takes the worker a long time (many iterations at a size the style allows).
const SLOW_STYLE: &str = "[styles.ink]\nimage_size = 96\niterations = 100000\ntol = 0.0\n";

#[test]
fn long_outage_with_many_queued_results_recovers_and_stops_cleanly() {
    let port = free_port();
    let mut broker = Broker::start_on(port);
    let prefix = unique_prefix("outage");
    let before = Probe::new(port, &[&format!("{prefix}/#")]);
    // keep-alive 5 s: a frozen broker is noticed within ~10 s; reconnect attempts every 3 s
    let extra = "[mqtt]\nkeep_alive_s = 5\nreconnect_min_ms = 3000\nreconnect_max_ms = 3000\n\
                 [daemon]\nstats_interval_s = 1\nmax_queued_frames = 400\nmax_cameras = 400\n\
                 [styles.ink]\nimage_size = 32\niterations = 40\n";
    let mut d = Daemon::start(port, &prefix, &format!("outage-{}", std::process::id()), extra);
    wait_online(&before, &prefix);
    // 150 cameras with a frame each; most results are made while the broker is frozen and then gone: the MQTT
    // client takes some of them (its request queue, 64, and the broker's receive maximum) before the outage is
    // noticed, and drops them when the broker comes back without the session
    for i in 0..150 {
        before.publish(&format!("{prefix}/cam{i}/frame"), jpeg(40, 32, i as f32 / 150.0));
    }
    // the broker is frozen only once the daemon holds every frame: a frame still on its way (the probe's and the
    // broker's flow control pass 20 at a time) dies with the broker, and no daemon can answer it. 40 iterations
    // (~0.1 s a frame on a fast machine) keep results coming for seconds after the freeze
    let s = stats_where(&before, &prefix, |s| s["received"].as_u64() == Some(150));
    assert!(s["processed"].as_u64().unwrap() < 120, "the frames were done before the outage began: {s}");
    broker.freeze();
    let t = Instant::now();
    while !d.log_text().contains("broker connection lost") {
        assert!(t.elapsed() < T, "the daemon did not notice the frozen broker:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    broker.kill();
    std::thread::sleep(Duration::from_secs(2));
    let _broker = Broker::start_on(port);
    let probe = Probe::new(port, &[&format!("{prefix}/#")]);
    // everything made before, during and after the outage is delivered
    let got = |i: usize| {
        let t = format!("{prefix}/cam{i}/stylized");
        !probe.on(&t).is_empty() || !before.on(&t).is_empty()
    };
    let t = Instant::now();
    while (0..150).any(|i| !got(i)) {
        if t.elapsed() > Duration::from_secs(120) {
            let missing: Vec<_> = (0..150).filter(|&i| !got(i)).collect();
            panic!("{} results never delivered (cameras {missing:?}):\n{}", missing.len(), d.log_text());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // and the daemon says it sent unacknowledged messages again
    let s = stats_where(&probe, &prefix, |s| s["processed"].as_u64() == Some(150) && s["connected"] == true);
    assert!(s["outbox_resent"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["outbox_dropped"], 0, "{s}");
    // back: subscribed and serving (a new camera's frame is processed)
    let t = Instant::now();
    loop {
        probe.publish(&format!("{prefix}/after/frame"), jpeg(40, 32, 0.5));
        if !probe.on(&format!("{prefix}/after/stylized")).is_empty() {
            break;
        }
        assert!(t.elapsed() < T, "no frame processed after the broker came back:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(500));
    }
    // SIGTERM honoured, clean stop
    let t = Instant::now();
    d.signal("TERM");
    assert!(d.wait_exit(Duration::from_secs(5)).expect("no exit within 5 s after SIGTERM").success());
    probe.wait_for(&format!("{prefix}/available"), |m| m.text() == "stopped", Duration::from_secs(5));
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn sigterm_with_hundreds_of_queued_cameras_stops_within_5_s() {
    let (port, prefix) = (shared_broker_port(), unique_prefix("manycams"));
    let probe = Probe::new(port, &[&format!("{prefix}/#")]);
    let extra = format!("[daemon]\nstats_interval_s = 1\nmax_queued_frames = 500\nmax_cameras = 500\n{SLOW_STYLE}");
    let mut d = Daemon::start(port, &prefix, &format!("manycams-{}", std::process::id()), &extra);
    wait_online(&probe, &prefix);
    for i in 0..300 {
        probe.publish(&format!("{prefix}/c{i}/frame"), jpeg(48, 32, 0.3));
    }
    stats_where(&probe, &prefix, |s| s["queue_depth"].as_u64().unwrap_or(0) >= 290);
    let t = Instant::now();
    d.signal("TERM");
    let status = d.wait_exit(Duration::from_secs(5));
    assert!(status.expect("no exit within 5 s after SIGTERM").success(), "{}", d.log_text());
    assert!(t.elapsed() < Duration::from_secs(5));
    probe.wait_for(&format!("{prefix}/available"), |m| m.text() == "stopped", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    let answered = (0..300)
        .filter(|i| probe.on(&format!("{prefix}/c{i}/error")).iter().any(|m| m.json()["code"] == "shutting_down"))
        .count();
    assert!(answered >= 290, "only {answered} waiting frames were answered shutting_down");
}

#[test]
fn sigterm_during_a_reconnect_back_off_stops_within_2_s() {
    let port = free_port();
    let mut broker = Broker::start_on(port);
    let prefix = unique_prefix("backoff");
    let probe = Probe::new(port, &[&format!("{prefix}/#")]);
    let extra = "[mqtt]\nreconnect_min_ms = 30000\nreconnect_max_ms = 30000\n";
    let mut d = Daemon::start(port, &prefix, &format!("backoff-{}", std::process::id()), extra);
    wait_online(&probe, &prefix);
    broker.kill();
    let t = Instant::now();
    while !d.log_text().contains("broker connection lost") {
        assert!(t.elapsed() < T, "the daemon did not notice the broker going away");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    d.signal("TERM");
    let status = d.wait_exit(Duration::from_secs(2)).expect("no exit within 2 s of SIGTERM during the back-off");
    assert!(status.success() && t.elapsed() < Duration::from_secs(2));
}

#[test]
fn bad_response_topics_get_an_error_and_do_not_disconnect() {
    let (port, prefix) = (shared_broker_port(), unique_prefix("badreply"));
    let probe = Probe::new(port, &[&format!("{prefix}/#")]);
    let d = Daemon::start(port, &prefix, &format!("badreply-{}", std::process::id()), "");
    wait_online(&probe, &prefix);
    for (i, reply) in ["", "", "x/+/y", "x/#", ""].iter().enumerate() {
        probe.request(&format!("{prefix}/cam/frame"), jpeg(64, 48, i as f32 / 5.0), reply, b"c");
        // each frame is still processed, its result on the camera's topic
        probe.wait_n(&format!("{prefix}/cam/stylized"), i + 1, T);
    }
    let errors: Vec<_> = probe.on(&format!("{prefix}/cam/error")).iter().map(|m| m.json()).collect();
    assert_eq!(errors.iter().filter(|e| e["code"] == "bad_response_topic").count(), 5, "{errors:?}");
    assert!(errors.iter().any(|e| e["message"].as_str().unwrap().contains("empty")));
    assert!(errors.iter().any(|e| e["message"].as_str().unwrap().contains("wildcard")));
    let log = d.log_text();
    assert!(!log.contains("connection lost") && !log.contains("not publishable"), "{log}");
    assert_eq!(probe.on(&format!("{prefix}/available")).len(), 1, "availability changed: the daemon reconnected");
    // a frame whose side is too short at the output size: the error names the side
    let png = fuchun::imageio::encode(&fuchun::imageio::Planar::new(3000, 30), fuchun::imageio::OutputFormat::Png);
    probe.publish(&format!("{prefix}/thin/frame"), png.unwrap());
    let e = probe.wait_n(&format!("{prefix}/thin/error"), 1, T).remove(0).json();
    assert_eq!(e["code"], "image_too_small");
    assert!(e["message"].as_str().unwrap().contains("height"), "{e}");
}

#[test]
fn queued_frames_and_camera_state_are_bounded_and_counted() {
    let (port, prefix) = (shared_broker_port(), unique_prefix("bounded"));
    let probe = Probe::new(port, &[&format!("{prefix}/#")]);
    let extra = format!("[daemon]\nstats_interval_s = 1\nmax_queued_frames = 8\nmax_cameras = 16\n{SLOW_STYLE}");
    let _d = Daemon::start(port, &prefix, &format!("bounded-{}", std::process::id()), &extra);
    wait_online(&probe, &prefix);
    let base = stats_where(&probe, &prefix, |_| true)["rss_bytes"].as_u64().unwrap();
    // 150 camera names, ~1 MB frames (noise JPEGs); the worker is busy with the first one
    let mut noise = fuchun::imageio::Planar::new(1000, 1000);
    let mut x = 12345u32;
    for v in noise.data.iter_mut() {
        x = x.wrapping_mul(1664525).wrapping_add(1013904223);
        *v = (x >> 24) as f32 / 255.0;
    }
    let frame = fuchun::imageio::encode(&noise, fuchun::imageio::OutputFormat::Jpeg { quality: 95 }).unwrap();
    assert!(frame.len() > 700_000, "{}", frame.len());
    for i in 0..150 {
        probe.publish(&format!("{prefix}/n{i}/frame"), frame.clone());
    }
    let s = stats_where(&probe, &prefix, |s| s["received"].as_u64() == Some(150));
    assert!(s["queue_depth"].as_u64().unwrap() <= 8, "{s}");
    assert!(s["cameras"].as_u64().unwrap() <= 16, "{s}");
    assert!(s["evicted_frames"].as_u64().unwrap() >= 140, "{s}");
    assert!(s["evicted_cameras"].as_u64().unwrap() >= 134, "{s}");
    let c = |k: &str| s[k].as_u64().unwrap();
    assert_eq!(
        c("received"),
        c("processed") + c("dropped") + c("errors") + c("queue_depth") + c("in_progress"),
        "every frame accounted for: {s}"
    );
    // memory: 150 frames of ~1 MB would be ~150 MB more; the bound keeps 8 (the decode of one is at most 96 px)
    let grown = c("rss_bytes") as i64 - base as i64;
    assert!(grown < 80_000_000, "RSS grew by {grown} bytes: {s}");
    // a bad topic is a control error, not a frame error
    probe.publish(&format!("{prefix}/bad name!/frame"), b"x".to_vec());
    let s = stats_where(&probe, &prefix, |s| s["control_errors"].as_u64() == Some(1));
    assert_eq!(s["received"].as_u64(), Some(150), "{s}");
}

#[test]
fn a_huge_jpeg_is_decoded_at_the_size_the_style_needs() {
    let (port, prefix) = (shared_broker_port(), unique_prefix("hugejpeg"));
    let probe = Probe::new(port, &[&format!("{prefix}/#")]);
    let extra = "[daemon]\nstats_interval_s = 1\n[styles.ink]\nimage_size = 64\niterations = 2\n";
    let _d = Daemon::start(port, &prefix, &format!("hugejpeg-{}", std::process::id()), extra);
    wait_online(&probe, &prefix);
    // 40 megapixels, the default limit
    let big = jpeg(8000, 5000, 0.4);
    probe.publish(&format!("{prefix}/big/frame"), big);
    let meta = probe.wait_n(&format!("{prefix}/big/stylized/meta"), 1, T).remove(0).json();
    assert_eq!((meta["input_width"].as_u64(), meta["width"].as_u64()), (Some(8000), Some(64)));
    // a full decode is 120 MB of RGB8 plus 480 MB as floats: the peak stays far below that
    let s = stats_where(&probe, &prefix, |s| s["processed"].as_u64() == Some(1));
    let peak = s["peak_rss_bytes"].as_u64().unwrap();
    eprintln!("40 Mpx JPEG for a 64-px style: daemon peak RSS {} MB", peak / 1_000_000);
    assert!(peak < 250_000_000, "peak RSS {peak} bytes");
}

#[test]
fn daemons_sharing_a_prefix_each_have_an_availability_and_the_aggregate_follows() {
    let (port, prefix) = (shared_broker_port(), unique_prefix("avail"));
    let probe = Probe::new(port, &[&format!("{prefix}/#")]);
    let group = format!("[mqtt]\nshared_group = \"g{}\"\n[daemon]\nstats_interval_s = 1\n", std::process::id());
    let (a, b) = (format!("avail-a-{}", std::process::id()), format!("avail-b-{}", std::process::id()));
    let mut da = Daemon::start(port, &prefix, &a, &group);
    let mut db = Daemon::start(port, &prefix, &b, &group);
    for id in [&a, &b] {
        probe.wait_for(&format!("{prefix}/{id}/available"), |m| m.text() == "online", T);
    }
    let ids: std::collections::HashSet<String> = (0..40)
        .map_while(|_| {
            std::thread::sleep(Duration::from_millis(100));
            Some(probe.on(&format!("{prefix}/stats")))
        })
        .last()
        .unwrap()
        .iter()
        .map(|m| m.json()["daemon_id"].as_str().unwrap().to_string())
        .collect();
    assert!(ids.contains(&a) && ids.contains(&b), "stats carry the daemon id: {ids:?}");
    // kill -9 of one: its own topic goes offline; the aggregate is online again, as the other still serves
    da.signal("KILL");
    let _ = da.wait_exit(Duration::from_secs(5));
    probe.wait_for(&format!("{prefix}/{a}/available"), |m| m.text() == "offline", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    let late = Probe::new(port, &[&format!("{prefix}/available"), &format!("{prefix}/+/available")]);
    let agg = late.wait_n(&format!("{prefix}/available"), 1, Duration::from_secs(10)).remove(0);
    assert!(agg.retain && agg.text() == "online", "retained aggregate {:?} while {b} serves", agg.text());
    assert_eq!(late.wait_n(&format!("{prefix}/{b}/available"), 1, T)[0].text(), "online");
    // the frames still get served
    probe.publish(&format!("{prefix}/cam/frame"), jpeg(64, 48, 0.1));
    probe.wait_n(&format!("{prefix}/cam/stylized"), 1, T);
    // the last one stops cleanly: both say stopped
    db.signal("TERM");
    assert!(db.wait_exit(Duration::from_secs(5)).unwrap().success());
    probe.wait_for(&format!("{prefix}/{b}/available"), |m| m.text() == "stopped", Duration::from_secs(5));
    probe.wait_for(&format!("{prefix}/available"), |m| m.text() == "stopped", Duration::from_secs(5));
}

#[test]
fn frames_sent_while_the_daemon_is_disconnected_are_not_lost() {
    let (port, prefix) = (shared_broker_port(), unique_prefix("session"));
    let probe = Probe::new(port, &[&format!("{prefix}/#")]);
    let id = format!("session-{}", std::process::id());
    let d = Daemon::start(port, &prefix, &id, "[mqtt]\nkeep_alive_s = 5\nsession_expiry_s = 120\n");
    wait_online(&probe, &prefix);
    // frozen past its keep-alive: the broker drops the connection (its last will says offline)
    d.signal("STOP");
    probe.wait_for(&format!("{prefix}/{id}/available"), |m| m.text() == "offline", Duration::from_secs(20));
    probe.publish(&format!("{prefix}/cam/frame"), jpeg(64, 48, 0.7));
    std::thread::sleep(Duration::from_millis(300));
    d.signal("CONT");
    // the broker kept the session and the frame for it
    probe.wait_n(&format!("{prefix}/cam/stylized"), 1, T);
    probe.wait_for(&format!("{prefix}/{id}/available"), |m| m.text() == "online" && m.at > Instant::now() - T, T);
}

/// With the systemd watchdog on: pings stop while the broker is unreachable for longer than
/// `daemon.watchdog_outage_s`, and resume once the daemon serves again.
#[test]
fn watchdog_stops_while_not_serving_and_resumes() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let port = free_port();
    let mut broker = Broker::start_on(port);
    let prefix = unique_prefix("watchdog");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[mqtt]\nport = {port}\nprefix = \"{prefix}\"\nclient_id = \"wd-{}\"\nreconnect_min_ms = 100\n\
             reconnect_max_ms = 300\n[model]\ndir = \"{}\"\nprovider = \"cpu\"\n[daemon]\nwatchdog_outage_s = 1\n\
             [styles.ink]\nimages = [\"{}\"]\nimage_size = 64\n",
            std::process::id(),
            common::test_model().display(),
            common::example("fuchun.jpg").display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fuchun"))
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    // collect notifications for `d`; returns how many were watchdog pings
    let mut pings = |d: Duration| {
        let (t, mut n) = (Instant::now(), 0);
        while t.elapsed() < d {
            if let Ok(k) = sock.recv(&mut buf) {
                n += String::from_utf8_lossy(&buf[..k]).matches("WATCHDOG=1").count();
            }
        }
        n
    };
    let t = Instant::now();
    while pings(Duration::from_millis(500)) == 0 {
        assert!(t.elapsed() < T, "no watchdog ping after start");
    }
    broker.kill();
    pings(Duration::from_millis(1800)); // the outage allowance
    assert_eq!(pings(Duration::from_secs(2)), 0, "watchdog pinged while the broker was unreachable");
    let _broker = Broker::start_on(port);
    let t = Instant::now();
    while pings(Duration::from_millis(500)) == 0 {
        assert!(t.elapsed() < Duration::from_secs(20), "watchdog pings did not resume after the broker returned");
    }
    let _ = child.kill();
    let _ = child.wait();
}

// Issue 21: a reconnect loop on an oversized kept frame, panicking jobs, settings and frames across a clean
// restart, start-up validation and signals, the aggregate after the last stop, duplicate ids and refused logins.

/// Two styles: `ink` (64 px, the default) and `wave` (48 px), so a result's meta names the style it was made with.
const TWO_STYLES: &str = "[styles.wave]\nimages = [\"STYLE\"]\nimage_size = 48\niterations = 10\n";

fn two_styles() -> String {
    TWO_STYLES.replace("STYLE", &common::example("fuchun.jpg").display().to_string())
}

/// The exit status of a daemon that should stop by itself within `timeout`.
fn exit_code(d: &mut Daemon, timeout: Duration) -> Option<i32> {
    d.wait_exit(timeout).map(|s| s.code().unwrap_or(-1))
}

#[test]
fn v311_oversized_frame_in_a_kept_session_is_refused_once_not_redelivered_forever() {
    let port = free_port();
    let _broker = Broker::start_on(port);
    let prefix = unique_prefix("oversize");
    let probe = Probe::new(
        port,
        &[&format!("{prefix}/+/error"), &format!("{prefix}/+/available"), &format!("{prefix}/+/stylized")],
    );
    let id = format!("oversize-{}", std::process::id());
    let extra = "[mqtt]\nprotocol = \"v311\"\nsession_expiry_s = 300\n";
    let d = Daemon::start(port, &prefix, &id, extra);
    probe.wait_for(&format!("{prefix}/{id}/available"), |m| m.text() == "online", T);
    probe.clear();
    // exactly the broker limit of deploy/mosquitto/fuchun.conf: the packet (topic and header included) is larger
    probe.publish(&format!("{prefix}/big/frame"), vec![0xAB; 33_554_432]);
    let e = probe.wait_n(&format!("{prefix}/big/error"), 1, Duration::from_secs(30)).remove(0).json();
    assert_eq!(e["code"], "payload_too_large", "{e}");
    // answered once and acknowledged: no reconnect, no redelivery, and the daemon serves the next frame
    probe.publish(&format!("{prefix}/small/frame"), jpeg(64, 48, 0.2));
    probe.wait_n(&format!("{prefix}/small/stylized"), 1, T);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(probe.on(&format!("{prefix}/big/error")).len(), 1, "the frame was delivered again");
    let offline = probe.on(&format!("{prefix}/{id}/available")).iter().filter(|m| m.text() == "offline").count();
    let seen: Vec<String> = probe.all().iter().map(|m| format!("{} {:.60} {:?}", m.topic, m.text(), m.at)).collect();
    assert_eq!(offline, 0, "the connection was lost: {seen:#?}\n{}", d.log_text());
    assert!(!d.log_text().contains("connection lost"), "{}", d.log_text());
}

/// A job that panics (the test hook FUCHUN_TEST_PANIC_CAMERA makes every job of that camera panic): the frame
/// is answered `internal_error` with the panic's message, counted, logged; the worker goes on with the next.
#[test]
fn a_panicking_job_is_answered_counted_and_the_worker_carries_on() {
    let (port, prefix) = (shared_broker_port(), unique_prefix("panic"));
    let probe = Probe::new(port, &[&format!("{prefix}/#")]);
    let metrics = free_port();
    let extra = format!("[daemon]\nstats_interval_s = 1\nmetrics_listen = \"127.0.0.1:{metrics}\"\n");
    let env = [("FUCHUN_TEST_PANIC_CAMERA", "boom")];
    let d = Daemon::start_env(port, &prefix, &format!("panic-{}", std::process::id()), &extra, &env);
    wait_online(&probe, &prefix);
    probe.request(&format!("{prefix}/boom/frame"), jpeg(64, 48, 0.5), &format!("{prefix}/replies/1"), b"k1");
    let e = probe.wait_n(&format!("{prefix}/boom/error"), 1, Duration::from_secs(20)).remove(0).json();
    assert_eq!(e["code"], "internal_error", "{e}");
    assert!(e["message"].as_str().unwrap().contains("FUCHUN_TEST_PANIC_CAMERA"), "{e}");
    let r = probe.wait_n(&format!("{prefix}/replies/1"), 1, T).remove(0);
    assert_eq!(r.json()["code"], "internal_error");
    // the same worker goes on: the next frames are processed, of another camera and of the same one again
    probe.publish(&format!("{prefix}/calm/frame"), jpeg(64, 48, 0.1));
    probe.wait_n(&format!("{prefix}/calm/stylized"), 1, T);
    probe.publish(&format!("{prefix}/boom/frame"), jpeg(64, 48, 0.6));
    probe.wait_n(&format!("{prefix}/boom/error"), 2, T);
    let s = stats_where(&probe, &prefix, |s| s["internal_errors"].as_u64() == Some(2));
    assert_eq!((s["in_progress"].as_u64(), s["processed"].as_u64()), (Some(0), Some(1)), "{s}");
    assert!(d.log_text().contains("FUCHUN_TEST_PANIC_CAMERA"), "{}", d.log_text());
    let mut http = std::net::TcpStream::connect(("127.0.0.1", metrics)).unwrap();
    use std::io::{Read, Write};
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    http.read_to_string(&mut body).unwrap();
    assert!(body.lines().any(|l| l.starts_with("fuchun_internal_errors_total{") && l.ends_with(" 2")), "{body}");
}

#[test]
fn a_style_chosen_for_a_camera_survives_a_restart_with_a_kept_session() {
    let port = free_port();
    let _broker = Broker::start_on(port);
    let prefix = unique_prefix("keepstyle");
    let probe = Probe::new(port, &[&format!("{prefix}/#")]);
    let id = format!("keepstyle-{}", std::process::id());
    let extra = format!("[mqtt]\nsession_expiry_s = 300\n{}", two_styles());
    let mut d = Daemon::start(port, &prefix, &id, &extra);
    wait_online(&probe, &prefix);
    probe.publish(&format!("{prefix}/cam/style/set"), b"wave".to_vec());
    probe.wait_for(&format!("{prefix}/cam/style/state"), |m| m.text() == "wave", T);
    d.signal("KILL");
    let _ = d.wait_exit(Duration::from_secs(5));
    // a frame while it is away: the kept session delivers it right after the CONNACK, before any read-back
    probe.publish(&format!("{prefix}/cam/frame"), jpeg(64, 48, 0.3));
    std::thread::sleep(Duration::from_millis(300));
    probe.clear();
    let _d = Daemon::start(port, &prefix, &id, &extra);
    let meta = probe.wait_n(&format!("{prefix}/cam/stylized/meta"), 1, T).remove(0).json();
    assert_eq!(meta["style"], "wave", "the frame queued in the session: {meta}");
    wait_online(&probe, &prefix);
    probe.publish(&format!("{prefix}/cam/frame"), jpeg(64, 48, 0.9));
    let meta = probe.wait_n(&format!("{prefix}/cam/stylized/meta"), 2, T).remove(1).json();
    assert_eq!(meta["style"], "wave", "a frame after the restart: {meta}");
}

#[test]
fn qos1_frames_sent_while_the_daemon_is_cleanly_stopped_are_answered_after_the_restart() {
    let port = free_port();
    let _broker = Broker::start_on(port);
    let prefix = unique_prefix("cleanstop");
    let probe = Probe::new(port, &[&format!("{prefix}/#")]);
    let id = format!("cleanstop-{}", std::process::id());
    let extra = "[mqtt]\nsession_expiry_s = 300\n";
    let mut d = Daemon::start(port, &prefix, &id, extra);
    wait_online(&probe, &prefix);
    d.signal("TERM");
    assert!(d.wait_exit(Duration::from_secs(5)).unwrap().success());
    for i in 0..5 {
        probe.publish(&format!("{prefix}/c{i}/frame"), jpeg(64, 48, i as f32 / 5.0));
    }
    std::thread::sleep(Duration::from_millis(500));
    let _d = Daemon::start(port, &prefix, &id, extra);
    for i in 0..5 {
        probe.wait_n(&format!("{prefix}/c{i}/stylized"), 1, T);
    }
}

#[test]
fn tls_files_that_cannot_be_used_stop_the_start_with_78() {
    let (port, prefix) = (free_port(), unique_prefix("tls"));
    let mut d = Daemon::start(port, &prefix, "tls-a", "[mqtt.tls]\nca = \"/nonexistent/ca.pem\"\n");
    assert_eq!(exit_code(&mut d, Duration::from_secs(10)), Some(78), "{}", d.log_text());
    assert!(d.wait_log("/nonexistent/ca.pem", Duration::from_secs(2)), "{}", d.log_text());
    let ca = tempfile::NamedTempFile::new().unwrap();
    let extra = format!("[mqtt.tls]\nca = \"{}\"\nclient_cert = \"{}\"\n", ca.path().display(), ca.path().display());
    let mut d = Daemon::start(port, &prefix, "tls-b", &extra);
    assert_eq!(exit_code(&mut d, Duration::from_secs(10)), Some(78), "{}", d.log_text());
    assert!(d.wait_log("client_key", Duration::from_secs(2)), "{}", d.log_text());
}

#[test]
fn bad_input_topics_and_payload_limits_stop_the_start_with_78() {
    let (port, prefix) = (shared_broker_port(), unique_prefix("badstart"));
    for (extra, says) in [
        ("[[inputs]]\ntopic = \"\"\ncamera = \"x\"\n", "empty"),
        ("[[inputs]]\ntopic = \"a/#/b\"\ncamera = \"x\"\n", "'#'"),
        ("[[inputs]]\ntopic = \"a/b+/c\"\ncamera = \"x\"\n", "'+'"),
        ("[daemon]\nmax_payload_bytes = 2147483648\n", "268435455"),
    ] {
        let mut d = Daemon::start(port, &prefix, "badstart", extra);
        assert_eq!(exit_code(&mut d, Duration::from_secs(10)), Some(78), "{extra}: {}", d.log_text());
        assert!(d.wait_log(says, Duration::from_secs(2)), "{extra}: {}", d.log_text());
    }
}

#[test]
fn a_configuration_that_never_ends_fails_fast() {
    let t = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fuchun"))
        .args(["serve", "--config", "/dev/zero"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut d = Daemon { child: out, dir: tempfile::tempdir().unwrap(), log: Default::default() };
    assert_eq!(exit_code(&mut d, Duration::from_secs(5)), Some(78));
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn sigterm_while_the_model_loads_says_stopped_and_exits_0() {
    let (port, prefix) = (shared_broker_port(), unique_prefix("earlyterm"));
    let probe = Probe::new(port, &[&format!("{prefix}/#")]);
    let id = format!("earlyterm-{}", std::process::id());
    // a warm-up at sizes that take seconds on a CPU keeps the daemon loading
    let extra = "[daemon]\nwarmup = true\n[styles.ink]\nimage_size = 1024\n";
    let mut d = Daemon::start(port, &prefix, &id, extra);
    assert!(d.wait_log("warm-up", T), "{}", d.log_text());
    let t = Instant::now();
    d.signal("TERM");
    let status = d.wait_exit(Duration::from_secs(5)).expect("no exit within 5 s of SIGTERM while loading");
    assert!(status.success(), "{status:?}: {}", d.log_text());
    assert!(t.elapsed() < Duration::from_secs(5));
    probe.wait_for(&format!("{prefix}/{id}/available"), |m| m.text() == "stopped", Duration::from_secs(5));
}

#[test]
fn sighup_stops_gracefully() {
    let (port, prefix) = (shared_broker_port(), unique_prefix("sighup"));
    let probe = Probe::new(port, &[&format!("{prefix}/#")]);
    let id = format!("sighup-{}", std::process::id());
    let mut d = Daemon::start(port, &prefix, &id, "");
    wait_online(&probe, &prefix);
    d.signal("HUP");
    let status = d.wait_exit(Duration::from_secs(5)).expect("no exit within 5 s of SIGHUP");
    assert!(status.success(), "{status:?}");
    probe.wait_for(&format!("{prefix}/{id}/available"), |m| m.text() == "stopped", Duration::from_secs(5));
}

#[test]
fn the_aggregate_stays_stopped_after_the_last_daemon_stops() {
    let (port, prefix) = (shared_broker_port(), unique_prefix("aggstop"));
    let probe = Probe::new(port, &[&format!("{prefix}/available")]);
    let mut d = Daemon::start(port, &prefix, &format!("aggstop-{}", std::process::id()), "");
    wait_online(&probe, &prefix);
    d.signal("TERM");
    assert!(d.wait_exit(Duration::from_secs(5)).unwrap().success());
    std::thread::sleep(Duration::from_secs(3));
    let said = probe.on(&format!("{prefix}/available")).iter().any(|m| m.text() == "stopped");
    assert!(said, "no `stopped`: {:?}\n{}", probe.all().iter().map(|m| m.text()).collect::<Vec<_>>(), d.log_text());
    let last = probe.on(&format!("{prefix}/available")).last().unwrap().text();
    assert_eq!(last, "stopped", "{:?}", probe.all().iter().map(|m| m.text()).collect::<Vec<_>>());
    let late = Probe::new(port, &[&format!("{prefix}/available")]);
    assert_eq!(late.wait_n(&format!("{prefix}/available"), 1, Duration::from_secs(5))[0].text(), "stopped");
}

#[test]
fn two_daemons_with_the_same_client_id_are_named_in_an_error() {
    let port = free_port();
    let _broker = Broker::start_on(port);
    let prefix = unique_prefix("dupid");
    let id = format!("dupid-{}", std::process::id());
    let a = Daemon::start(port, &prefix, &id, "");
    let b = Daemon::start(port, &prefix, &id, "");
    let t = Instant::now();
    let said =
        |d: &Daemon| d.log_text().lines().any(|l| l.contains("ERROR") && l.contains("client id") && l.contains(&id));
    while !said(&a) && !said(&b) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no error naming the duplicate client id:\n{}\n---\n{}",
            a.log_text(),
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_broker_refusing_the_login_stops_the_daemon_with_78() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous false\n")).unwrap();
    let _broker = Broker::start_with_config(&conf, &[port]);
    let prefix = unique_prefix("noauth");
    let extra = "[mqtt]\nusername = \"fuchun\"\npassword = \"wrong\"\n";
    let mut d = Daemon::start(port, &prefix, &format!("noauth-{}", std::process::id()), extra);
    assert_eq!(exit_code(&mut d, Duration::from_secs(30)), Some(78), "{}", d.log_text());
    d.wait_log("refused the login", Duration::from_secs(2));
    let log = d.log_text().to_lowercase();
    assert!(log.contains("refused the login") && log.contains("password"), "{log}");
}

#[test]
fn a_world_writable_configuration_holding_a_password_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let (port, prefix) = (free_port(), unique_prefix("perm"));
    let (dir, path) = Daemon::config(port, &prefix, "perm", "[mqtt]\nusername = \"u\"\npassword = \"secret\"\n");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let d = Daemon::spawn(dir, &path, &[]);
    assert!(d.wait_log("world-writable", Duration::from_secs(20)), "{}", d.log_text());
}

/// A broker 0.8 s away (round trip): the CONNACK comes later than a turn of the event loop (0.5 s). The poll that
/// is connecting must not be dropped on the next turn — before, the daemon never connected, and each abandoned
/// attempt left the broker a half-made connection.
#[test]
fn a_distant_broker_is_reached() {
    let port = free_port();
    let _broker = Broker::start_on(port);
    let prefix = unique_prefix("distant");
    let probe = Probe::new(port, &[&format!("{prefix}/#")]);
    let id = format!("distant-{}", std::process::id());
    let far = slow_link(port, Duration::from_millis(400));
    let d = Daemon::start(far, &prefix, &id, "");
    let online = |m: &mqtt_support::Msg| m.text() == "online";
    let t = Instant::now();
    while !probe.on(&format!("{prefix}/{id}/available")).iter().any(online) {
        assert!(t.elapsed() < Duration::from_secs(30), "never online through a slow link:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let offline = probe.on(&format!("{prefix}/{id}/available")).iter().any(|m| m.text() == "offline");
    assert!(!offline, "an abandoned attempt fired the last will:\n{}", d.log_text());
    probe.publish(&format!("{prefix}/cam/frame"), jpeg(64, 48, 0.4));
    probe.wait_n(&format!("{prefix}/cam/stylized"), 1, T);
}
