//! Deployment: the systemd units verify, the install script lays out an installation (dry run and into a fake
//! root), `fuchun doctor` reports what is present and what is missing, and the kiosk page shows new frames in
//! headless Chromium.

mod common;
mod mqtt_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mqtt_support::{free_port, shared_broker_port, unique_prefix, Probe};

fn tool(name: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {name}")]).stdout(Stdio::null()).status().unwrap().success()
}

#[test]
fn systemd_units_verify() {
    assert!(tool("systemd-analyze"), "systemd-analyze is needed (apt-get install systemd)");
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_fuchun");
    for unit in ["fuchun.service", "fuchun-view.service"] {
        let text = std::fs::read_to_string(common::root().join("systemd").join(unit)).unwrap();
        let path = dir.path().join(unit);
        std::fs::write(&path, text.replace("/usr/local/bin/fuchun", bin)).unwrap();
        let o = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success() && err.trim().is_empty(), "{unit}: {err}");
    }
    let text = std::fs::read_to_string(common::root().join("systemd/fuchun.service")).unwrap();
    for key in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
        "StateDirectory=fuchun",
        "CacheDirectory=fuchun",
        "ConfigurationDirectory=fuchun",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=",
        "SupplementaryGroups=video",
        "DeviceAllow=/dev/nvmap",
    ] {
        assert!(text.contains(key), "fuchun.service lacks {key}");
    }
    let o = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(dir.path().join("fuchun.service"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out.lines().find(|l| l.contains("Overall exposure level")).expect("security summary");
    let score: f64 = line.split("fuchun.service:").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    eprintln!("systemd-analyze security: {}", line.trim());
    assert!(score <= 2.5, "{line}");
}

fn install(args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(common::root().join("deploy/install.sh"))
        .args(args)
        .args(["--binary", env!("CARGO_BIN_EXE_fuchun")])
        .output()
        .unwrap()
}

#[test]
fn install_script_dry_run_and_fake_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let r = root.to_str().unwrap();
    let o = install(&["--target", "linux", "--root", r, "--dry-run"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains(&format!("would: install -m 0755 {} {r}/usr/local/bin/fuchun", env!("CARGO_BIN_EXE_fuchun"))),
        "{out}"
    );
    assert!(out.contains(&format!("would: write {r}/etc/fuchun/fuchun.toml")), "{out}");
    assert!(!root.exists(), "a dry run created files");
    // the real thing, into the fake root
    let o = install(&["--target", "linux", "--root", r]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "usr/local/bin/fuchun",
        "etc/fuchun/fuchun.toml",
        "etc/fuchun/fuchun.env",
        "etc/systemd/system/fuchun.service",
        "etc/systemd/system/fuchun-view.service",
        "var/lib/fuchun/models/vgg16-max/manifest.json",
        "var/lib/fuchun/models/vgg16-max/objective.onnx",
        "usr/local/share/fuchun/styles/fuchun.jpg",
        "usr/local/share/doc/fuchun/fuchun.example.toml",
    ] {
        assert!(root.join(f).is_file(), "{f} missing");
    }
    assert!(std::fs::read_dir(root.join("usr/local/lib/fuchun")).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("libonnxruntime.so")));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(root.join("etc/fuchun/fuchun.env")).unwrap().permissions().mode() & 0o777, 0o600);
    let config = std::fs::read_to_string(root.join("etc/fuchun/fuchun.toml")).unwrap();
    assert!(config.contains("provider = \"cpu\"") && config.contains("/var/lib/fuchun/models/vgg16-max"));
    // re-runnable: the configuration is kept
    std::fs::write(root.join("etc/fuchun/fuchun.toml"), "# mine\n").unwrap();
    let o = install(&["--target", "linux", "--root", r]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("keeping the existing"));
    assert_eq!(std::fs::read_to_string(root.join("etc/fuchun/fuchun.toml")).unwrap(), "# mine\n");
    // the installed binary finds the installed model and library
    let o = Command::new(root.join("usr/local/bin/fuchun"))
        .args(["doctor", "--no-broker", "--model"])
        .arg(root.join("var/lib/fuchun/models/vgg16-max"))
        .arg("--ort-library")
        .arg(
            std::fs::read_dir(root.join("usr/local/lib/fuchun"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("libonnxruntime.so."))
                .unwrap(),
        )
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    // the Jetson target: onnxruntime-gpu is not here, so given explicitly; it warns that only the CPU provider
    // libraries were found and writes a TensorRT-ready configuration
    let jroot = dir.path().join("jetson");
    let ort = std::fs::read_dir(root.join("usr/local/lib/fuchun"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("libonnxruntime.so."))
        .unwrap();
    let o = install(&["--target", "jetson", "--root", jroot.to_str().unwrap(), "--ort-library", ort.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("CUDA/TensorRT provider libraries not found"));
    let config = std::fs::read_to_string(jroot.join("etc/fuchun/fuchun.toml")).unwrap();
    assert!(
        config.contains("provider = \"auto\"")
            && config.contains("tensorrt_fp16 = false")
            && !config.contains("tensorrt_fp16 = true")
            && config.contains("/var/cache/fuchun/tensorrt")
    );
    // bad use
    let o = install(&["--target", "windows"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("unknown target"));
}

fn doctor_config(dir: &Path, port: u16, extra: &str) -> std::path::PathBuf {
    let p = dir.join("fuchun.toml");
    std::fs::write(&p, format!(
        "[mqtt]\nport = {port}\nprefix = \"{}\"\n[model]\ndir = \"{}\"\n[daemon]\ncache_dir = \"cache\"\n[styles.ink]\nimages = [\"{}\"]\n{extra}",
        unique_prefix("doctor"), common::test_model().display(), common::example("fuchun.jpg").display())).unwrap();
    p
}

fn doctor(args: &[&str]) -> (bool, String) {
    let o = common::fuchun(&[&["doctor"], args].concat());
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

#[test]
fn doctor_reports_each_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good = doctor_config(dir.path(), shared_broker_port(), "");
    let (ok, out) = doctor(&["--config", good.to_str().unwrap()]);
    assert!(ok, "{out}");
    for line in ["ONNX Runtime", "provider CPU", "model", "broker", "cache directory", "style ink"] {
        assert!(out.lines().any(|l| l.starts_with(line) && l.contains(" ok ")), "{line}: {out}");
    }
    assert!(dir.path().join("cache").is_dir());
    // ONNX Runtime missing
    let (ok, out) = doctor(&["--config", good.to_str().unwrap(), "--ort-library", "/nonexistent/libonnxruntime.so"]);
    assert!(!ok && out.contains("ONNX Runtime") && out.contains("FAIL") && out.contains("does not exist"), "{out}");
    // model missing
    let (ok, out) = doctor(&["--config", good.to_str().unwrap(), "--model", "/nonexistent/model"]);
    assert!(
        !ok && out.lines().any(|l| l.starts_with("model") && l.contains("FAIL") && l.contains("make models")),
        "{out}"
    );
    // broker down
    let down = dir.path().join("down");
    std::fs::create_dir(&down).unwrap();
    let cfg = doctor_config(&down, free_port(), "");
    let t = Instant::now();
    let (ok, out) = doctor(&["--config", cfg.to_str().unwrap()]);
    assert!(!ok && out.lines().any(|l| l.starts_with("broker") && l.contains("FAIL")), "{out}");
    assert!(out.contains("is the broker running") || out.contains("no round trip"), "{out}");
    assert!(t.elapsed() < Duration::from_secs(20));
}

fn http_get(port: u16, path: &str) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    (String::from_utf8_lossy(&buf[..split]).into_owned(), buf[split + 4..].to_vec())
}

fn solid_jpeg(r: f32, g: f32, b: f32) -> Vec<u8> {
    let mut p = fuchun::imageio::Planar::new(160, 120);
    let n = 160 * 120;
    p.data[..n].fill(r);
    p.data[n..2 * n].fill(g);
    p.data[2 * n..].fill(b);
    fuchun::imageio::encode(&p, fuchun::imageio::OutputFormat::Jpeg { quality: 95 }).unwrap()
}

fn screenshot(url: &str, out: &Path, profile: &Path) -> image::RgbImage {
    let o = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=320,240",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", out.display()))
        .arg(url)
        .output()
        .expect("chromium is needed (apt-get install chromium)");
    assert!(out.is_file(), "no screenshot: {}", String::from_utf8_lossy(&o.stderr));
    image::open(out).unwrap().to_rgb8()
}

#[test]
fn kiosk_page_shows_each_new_frame() {
    assert!(tool("chromium"), "chromium is needed (apt-get install chromium)");
    let port = shared_broker_port();
    let prefix = unique_prefix("kiosk");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, format!("[mqtt]\nport = {port}\nprefix = \"{prefix}\"\nclient_id = \"kiosk-test\"\n[styles.ink]\nimages = [\"{}\"]\n",
        common::example("fuchun.jpg").display())).unwrap();
    let http = free_port();
    let mut view = Command::new(env!("CARGO_BIN_EXE_fuchun"))
        .args(["view", "--config", cfg.to_str().unwrap(), "--listen", &format!("127.0.0.1:{http}"), "--camera", "door"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", http)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(50));
    }
    let (head, _) = http_get(http, "/frame/door.jpg");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let probe = Probe::new(port, &[]);
    let topic = format!("{prefix}/door/stylized");
    let red = solid_jpeg(0.9, 0.1, 0.1);
    // the view subscribes after connecting: publish until it has the frame
    let t = Instant::now();
    loop {
        probe.publish(&topic, red.clone());
        std::thread::sleep(Duration::from_millis(200));
        if http_get(http, "/frame/door.jpg").0.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "the view never received a frame");
    }
    let url = format!("http://127.0.0.1:{http}/");
    let a = screenshot(&url, &dir.path().join("a.png"), &dir.path().join("profile-a"));
    let centre = |img: &image::RgbImage| *img.get_pixel(img.width() / 2, img.height() / 2);
    let pa = centre(&a);
    assert!(pa[0] > 180 && pa[2] < 80, "screenshot centre {pa:?} is not the red frame");
    // SSE: an open event stream announces the next frame
    let mut sse = TcpStream::connect(("127.0.0.1", http)).unwrap();
    sse.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(sse, "GET /events/door HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut first = [0u8; 512];
    let n = sse.read(&mut first).unwrap();
    let text = String::from_utf8_lossy(&first[..n]).into_owned();
    assert!(text.contains("text/event-stream"), "{text}");
    let blue = solid_jpeg(0.1, 0.1, 0.9);
    probe.publish(&topic, blue.clone());
    let mut got = text.clone();
    let t = Instant::now();
    while got.matches("data:").count() < 2 {
        let n = sse.read(&mut first).unwrap();
        got.push_str(&String::from_utf8_lossy(&first[..n]));
        assert!(t.elapsed() < Duration::from_secs(10), "no event for the new frame: {got}");
    }
    assert_eq!(http_get(http, "/frame/door.jpg").1, blue);
    let b = screenshot(&url, &dir.path().join("b.png"), &dir.path().join("profile-b"));
    let pb = centre(&b);
    assert!(pb[2] > 180 && pb[0] < 80, "screenshot centre {pb:?} is not the blue frame");
    assert_ne!(a, b);
    let _ = view.kill();
    let _ = view.wait();
}
