//! Soak (issue 14): `fuchun serve` for a long run — 8 cameras sending frames, the broker killed and restarted every
//! few minutes — printing frames sent / results / errors / dropped / lost and the daemon's RSS over time. Not part
//! of `make test` (it takes `FUCHUN_SOAK_MINUTES`, default 30, and `FUCHUN_SOAK_PROTOCOL`, v5 or v311): run it with
//! `make soak`.
//!
//! Every frame the daemon received must end as a result, an error or a counted drop (newest frame wins); frames
//! sent into a broker that is then killed never reach the daemon and are reported apart.

mod common;
mod mqtt_support;

use std::time::{Duration, Instant};

use mqtt_support::{free_port, jpeg, unique_prefix, Broker, Daemon, Probe};

fn rss_mb(pid: i32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

#[test]
#[ignore = "long: run with `make soak` (FUCHUN_SOAK_MINUTES, default 30)"]
fn soak_8_cameras_with_broker_restarts() {
    let minutes: f64 = std::env::var("FUCHUN_SOAK_MINUTES").ok().and_then(|v| v.parse().ok()).unwrap_or(30.0);
    let restart_every = Duration::from_secs_f64((minutes * 60.0 / 10.0).clamp(20.0, 180.0));
    let port = free_port();
    let mut broker = Some(Broker::start_on(port));
    let prefix = unique_prefix("soak");
    let cams: Vec<String> = (0..8).map(|i| format!("cam{i}")).collect();
    let mut probes = vec![Probe::new(port, &[&format!("{prefix}/#")])];
    // FUCHUN_SOAK_PROTOCOL: v5 (default) or v311, the daemon's MQTT version
    let protocol = std::env::var("FUCHUN_SOAK_PROTOCOL").unwrap_or_else(|_| "v5".into());
    let extra = format!(
        "[mqtt]\nprotocol = \"{protocol}\"\n[daemon]\nstats_interval_s = 5\n[styles.ink]\nimage_size = 64\niterations = 15\n"
    );
    let mut d = Daemon::start(port, &prefix, &format!("soak-{}", std::process::id()), &extra);
    probes[0].wait_for(&format!("{prefix}/available"), |m| m.text() == "online", Duration::from_secs(60));
    let frames: Vec<Vec<u8>> = (0..16).map(|i| jpeg(96, 72, i as f32 / 16.0)).collect();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(minutes * 60.0);
    let (mut sent, mut not_sent, mut restarts, mut k) = (0u64, 0u64, 0u32, 0usize);
    let mut last_restart = Instant::now();
    let mut last_rss = Instant::now() - Duration::from_secs(60);
    let mut rss_log: Vec<(f64, f64)> = Vec::new();
    println!("soak: MQTT {protocol}, {minutes} min, 8 cameras, a frame per camera every 2 s, broker restart every {restart_every:?}");
    while Instant::now() < end {
        assert!(d.child.try_wait().unwrap().is_none(), "the daemon exited:\n{}", d.log_text());
        if last_rss.elapsed() >= Duration::from_secs(30) {
            let r = rss_mb(d.pid());
            rss_log.push((start.elapsed().as_secs_f64() / 60.0, r));
            println!("  t = {:5.1} min  RSS {r:6.1} MB  sent {sent}", start.elapsed().as_secs_f64() / 60.0);
            last_rss = Instant::now();
        }
        if last_restart.elapsed() >= restart_every {
            drop(broker.take()); // killed
            std::thread::sleep(Duration::from_secs(3));
            broker = Some(Broker::start_on(port));
            probes.push(Probe::new(port, &[&format!("{prefix}/#")]));
            restarts += 1;
            last_restart = Instant::now();
        }
        let sender = probes.last().unwrap();
        for cam in &cams {
            let topic = format!("{prefix}/{cam}/frame");
            let f = frames[k % frames.len()].clone();
            k += 1;
            match sender.client.try_publish(topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, f) {
                Ok(()) => sent += 1,
                Err(_) => not_sent += 1,
            }
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    std::thread::sleep(Duration::from_secs(15)); // the last jobs and stats
    let count = |leaf: &str| -> u64 {
        probes.iter().map(|p| p.all().iter().filter(|m| m.topic.ends_with(leaf)).count() as u64).sum()
    };
    let (results, errors) = (count("/stylized/meta"), count("/error"));
    let stats: Vec<serde_json::Value> =
        probes.iter().flat_map(|p| p.on(&format!("{prefix}/stats"))).map(|m| m.json()).collect();
    let last = stats.iter().max_by_key(|s| s["uptime_s"].as_u64().unwrap_or(0)).cloned().unwrap_or_default();
    let dropped = last["dropped"].as_u64().unwrap_or(0);
    let received = last["received"].as_u64().unwrap_or(0);
    let t = Instant::now();
    d.signal("TERM");
    let status = d.wait_exit(Duration::from_secs(10));
    let stop_s = t.elapsed().as_secs_f64();
    drop(broker);
    let log = d.log_text();
    let panics = log.matches("panicked").count();
    let never_delivered = sent.saturating_sub(received);
    let lost_in_daemon = received as i64 - (results + errors + dropped) as i64;
    let rss_first = rss_log.iter().find(|(m, _)| *m >= minutes.min(5.0) * 0.5).map_or(0.0, |r| r.1);
    let rss_last = rss_log.last().map_or(0.0, |r| r.1);
    println!("soak summary (MQTT {protocol}, {minutes} min, {restarts} broker restarts):");
    println!("  frames sent {sent} (+{not_sent} refused by the sender's client while the broker was down)");
    println!(
        "  received by the daemon {received}; results {results}; errors {errors}; dropped (newest wins) {dropped}"
    );
    println!("  never delivered to the daemon (sent - received: in a killed broker) {never_delivered}");
    println!("  lost inside the daemon (received - results - errors - dropped) {lost_in_daemon}");
    println!(
        "  RSS {rss_first:.1} MB early, {rss_last:.1} MB at the end; max {:.1} MB",
        rss_log.iter().map(|r| r.1).fold(0.0, f64::max)
    );
    println!("  SIGTERM -> exit {status:?} in {stop_s:.1} s; panics in the log: {panics}");
    assert!(status.is_some_and(|s| s.success()), "no clean exit:\n{log}");
    assert_eq!(panics, 0, "{log}");
    assert!(results > 0);
    assert_eq!(lost_in_daemon, 0, "frames the daemon received but never answered");
    assert!(rss_last < rss_first * 1.5 + 20.0, "RSS grew: {rss_log:?}");
}
