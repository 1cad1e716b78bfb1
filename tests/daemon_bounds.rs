//! `fuchun serve` against hostile but well-formed input (issue 21, items 5, 6 and 9), on a real Mosquitto: what it
//! keeps of other daemons' availability is bounded in count and size, an invalid camera name is echoed as a short
//! escaped excerpt (not in full) in the error reply and in the log, and a frame whose decoding would take more
//! than `daemon.max_decode_bytes` is refused from its header, for PNG (16-bit) and progressive JPEG.

mod common;
mod mqtt_support;

use std::time::Duration;

use mqtt_support::{jpeg, shared_broker_port, unique_prefix, wait_online, Daemon, Probe};

const T: Duration = Duration::from_secs(60);

/// The first stats message after `received` frames.
fn stats_after(probe: &Probe, prefix: &str, received: u64) -> serde_json::Value {
    probe.wait_for(&format!("{prefix}/stats"), |m| m.json()["received"].as_u64() == Some(received), T).json()
}

#[test]
fn availability_of_other_daemons_is_kept_within_max_peers() {
    let (port, prefix) = (shared_broker_port(), unique_prefix("peers"));
    let probe = Probe::new(port, &[&format!("{prefix}/stats"), &format!("{prefix}/+/stylized")]);
    let d = Daemon::start(port, &prefix, &format!("peers-{}", std::process::id()), "[daemon]\nstats_interval_s = 1\n");
    wait_online(&Probe::new(port, &[&format!("{prefix}/available")]), &prefix);
    let before = stats_after(&probe, &prefix, 0)["rss_bytes"].as_u64().unwrap();
    // 1000 daemon ids saying online; 500 more with 60 KB payloads; 500 with 60 KB ids
    let big = vec![b'o'; 60_000];
    for i in 0..1000 {
        probe.publish(&format!("{prefix}/peer{i}/available"), "online");
    }
    for i in 0..500 {
        probe.publish(&format!("{prefix}/big{i}/available"), big.clone());
        probe.publish(&format!("{prefix}/{}{i}/available", "i".repeat(60_000)), "online");
    }
    // a frame after the flood: once it is counted, the router has handled every message before it
    probe.publish(&format!("{prefix}/cam/frame"), jpeg(64, 48, 0.2));
    let s = stats_after(&probe, &prefix, 1);
    eprintln!(
        "serve: {} peers kept after 2000 availability messages; RSS {} -> {} MiB",
        s["peers"],
        before >> 20,
        s["rss_bytes"].as_u64().unwrap() >> 20
    );
    assert_eq!(s["peers"].as_u64(), Some(64), "daemon.max_peers (default 64): {s}");
    drop(d);
}

#[test]
fn an_invalid_camera_name_is_echoed_as_a_short_escaped_excerpt() {
    let (port, prefix) = (shared_broker_port(), unique_prefix("echo"));
    let probe = Probe::new(port, &[&format!("{prefix}/#")]);
    let d = Daemon::start(port, &prefix, &format!("echo-{}", std::process::id()), "");
    wait_online(&probe, &prefix);
    // (Mosquitto refuses control characters in topics: those are tried in a style name below)
    let name = format!("bad \"name\"!{}", "n".repeat(60_000));
    for _ in 0..20 {
        probe.publish(&format!("{prefix}/{name}/frame"), b"x".to_vec());
    }
    let errors = probe.wait_n(&format!("{prefix}/error"), 20, T);
    let log = d.log_text();
    let longest_log = log.lines().map(str::len).max().unwrap_or(0);
    eprintln!("error reply {} bytes, longest log line {longest_log} bytes", errors[0].payload.len());
    for e in &errors {
        assert!(e.payload.len() < 1000, "a {} byte error reply for a 60 KB name", e.payload.len());
        let body = e.json();
        assert_eq!(body["code"], "bad_topic");
        let (message, topic) = (body["message"].as_str().unwrap(), body["topic"].as_str().unwrap());
        assert!(message.contains("bad \"name\"!nnn") && message.contains("60011 bytes in all"), "{message}");
        assert!(topic.starts_with(prefix.as_str()) && topic.contains("bytes in all"), "{topic}");
    }
    assert!(longest_log < 1000, "a {longest_log} byte log line");
    assert!(log.contains("bytes in all"), "{log}");
    // a style name in a payload, with control characters: cut and escaped in the reply
    let style = format!("evil\u{1b}[31m\n{}", "s".repeat(60_000));
    probe.publish(&format!("{prefix}/cam/style/set"), serde_json::json!({ "style": style }).to_string());
    let e = probe.wait_n(&format!("{prefix}/cam/error"), 1, T).remove(0);
    let message = e.json()["message"].as_str().unwrap().to_string();
    assert!(e.payload.len() < 1000, "a {} byte error reply for a 60 KB style name", e.payload.len());
    assert!(message.contains("evil\\u{1b}[31m\\nsss") && !message.contains('\u{1b}'), "{message}");
}

/// The first message on the camera's error or result topic.
fn outcome(probe: &Probe, prefix: &str, camera: &str) -> mqtt_support::Msg {
    let (err, ok) = (format!("{prefix}/{camera}/error"), format!("{prefix}/{camera}/stylized"));
    let t = std::time::Instant::now();
    loop {
        if let Some(m) = probe.all().into_iter().find(|m| m.topic == err || m.topic == ok) {
            return m;
        }
        assert!(t.elapsed() < T, "no answer for {camera}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn decoding_memory_is_bounded_by_max_decode_bytes() {
    let (port, prefix) = (shared_broker_port(), unique_prefix("decodemem"));
    let probe = Probe::new(port, &[&format!("{prefix}/#")]);
    let extra = "[daemon]\nstats_interval_s = 1\n[styles.ink]\nimage_size = 64\niterations = 2\n";
    let _d = Daemon::start(port, &prefix, &format!("decodemem-{}", std::process::id()), extra);
    wait_online(&probe, &prefix);
    // 4000x3000 16-bit RGBA PNG: 96 MB decoded plus its 8-bit RGB copy, over the default 96 MiB
    let img =
        image::ImageBuffer::<image::Rgba<u16>, _>::from_pixel(4000, 3000, image::Rgba([9000, 30000, 50000, 65535]));
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    drop(img);
    probe.publish(&format!("{prefix}/png16/frame"), png);
    // a progressive JPEG declaring 6000x6000: 108 MB of coefficients (the header of a small one, marked so)
    let mut progressive = jpeg(64, 64, 0.5);
    let sof = progressive.windows(2).position(|m| m == [0xFF, 0xC0]).unwrap();
    progressive[sof + 1] = 0xC2;
    progressive[sof + 5..sof + 9].copy_from_slice(&[0x17, 0x70, 0x17, 0x70]);
    probe.publish(&format!("{prefix}/progressive/frame"), progressive);
    for (camera, kind) in [("png16", "16-bit RGBA PNG"), ("progressive", "progressive JPEG")] {
        let m = outcome(&probe, &prefix, camera);
        assert!(m.topic.ends_with("/error"), "{camera} was decoded");
        let e = m.json();
        let msg = e["message"].as_str().unwrap();
        assert_eq!(e["code"], "image_too_large", "{e}");
        assert!(msg.contains(kind) && msg.contains("daemon.max_decode_bytes"), "{msg}");
    }
    // an ordinary frame is still served
    probe.publish(&format!("{prefix}/ok/frame"), jpeg(640, 480, 0.3));
    assert!(outcome(&probe, &prefix, "ok").topic.ends_with("/stylized"));
}
