//! The example configuration loads and validates; bad configurations give clear errors.

mod common;

use std::sync::Mutex;

use fuchun::daemon::config::Config;

/// Config::load reads the environment, which one test changes: the tests take turns.
static ENV: Mutex<()> = Mutex::new(());

#[test]
fn example_config_is_valid() {
    let _g = ENV.lock().unwrap();
    let c = Config::load(&common::root().join("deploy/fuchun.example.toml")).unwrap();
    assert_eq!(c.mqtt.prefix, "fuchun");
    assert_eq!(c.styles.len(), 2);
    let cam = c.camera("front_door");
    assert_eq!((cam.style.as_str(), cam.max_size, cam.min_interval_ms, cam.retain), ("ink", Some(384), 5000, true));
    let other = c.camera("garage");
    assert_eq!(other.style, "ink");
    assert_eq!(c.inputs[0].camera_level, Some(1));
}

fn load(text: &str) -> String {
    let _g = ENV.lock().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, text).unwrap();
    format!("{:#}", Config::load(&p).unwrap_err())
}

#[test]
fn bad_configurations_are_explained() {
    let style = format!("[styles.ink]\nimages = [\"{}\"]\n", common::example("fuchun.jpg").display());
    assert!(load("").contains("no [styles.NAME]"));
    assert!(load(&format!("{style}[mqtt]\nqos = 3\n")).contains("mqtt.qos"));
    assert!(load(&format!("{style}[mqtt]\nprefix = \"a/#\"\n")).contains("wildcards"));
    assert!(load(&format!("{style}[cameras.x]\nstyle = \"nope\"\n")).contains("style \"nope\" is not defined"));
    assert!(load("[styles.ink]\nimages = [\"/nonexistent.jpg\"]\n").contains("does not exist"));
    assert!(load(&format!("{style}[mqtt]\nunknown_key = 1\n")).contains("unknown field"));
    assert!(load(&format!("{style}[[inputs]]\ntopic = \"a/b\"\ncamera_level = 1\n")).contains("'+' wildcard"));
    assert!(load(&format!("{style}[daemon]\nworkers = 0\n")).contains("workers"));
    assert!(load(&format!("{style}[daemon]\nmax_cameras = 0\n")).contains("max_cameras"));
    assert!(load(&format!("{style}[mqtt]\nclient_id = \"a/b\"\n")).contains("availability topic"));
    // a style file that is not an image is refused at start-up, naming the file
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.jpg");
    std::fs::write(&text, "not a picture").unwrap();
    let e = load(&format!("[styles.ink]\nimages = [\"{}\"]\n", text.display()));
    assert!(e.contains("notes.jpg") && e.contains("not a usable style image"), "{e}");
    assert!(load(&format!("{style}[daemon]\nmetrics_listen = \"localhost\"\n")).contains("metrics_listen"));
}

#[test]
fn password_comes_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(
        &p,
        format!("[mqtt]\nusername = \"u\"\n[styles.ink]\nimages = [\"{}\"]\n", common::example("fuchun.jpg").display()),
    )
    .unwrap();
    let _g = ENV.lock().unwrap();
    // SAFETY: the ENV lock keeps every other test of this binary from reading the environment meanwhile.
    unsafe { std::env::set_var("FUCHUN_MQTT_PASSWORD", "s3cret") };
    let c = Config::load(&p).unwrap();
    unsafe { std::env::remove_var("FUCHUN_MQTT_PASSWORD") };
    assert_eq!(c.mqtt.password.as_deref(), Some("s3cret"));
}
