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
fn bad_provider_options_are_explained() {
    let style = format!("[styles.ink]\nimages = [\"{}\"]\n", common::example("fuchun.jpg").display());
    let m = |body: &str| load(&format!("{style}[model]\n{body}\n"));
    let e = m("provider = \"gpu\"");
    assert!(e.contains("provider = \"gpu\"") && e.contains("auto, tensorrt, cuda or cpu"), "{e}");
    let e = m("cudnn_conv_algo_search = \"fast\"");
    assert!(e.contains("cudnn_conv_algo_search") && e.contains("heuristic, exhaustive or default"), "{e}");
    let e = m("cuda_arena_extend_strategy = \"double\"");
    assert!(e.contains("cuda_arena_extend_strategy") && e.contains("same_as_requested"), "{e}");
    assert!(m("gpu_mem_limit_mb = 0").contains("gpu_mem_limit_mb must be at least 1"));
    assert!(m("tensorrt_max_workspace_mb = 0").contains("tensorrt_max_workspace_mb must be at least 1"));
    let e = m("tensorrt_profile_min = \"64\"");
    assert!(e.contains("tensorrt_profile_min") && e.contains("WIDTHxHEIGHT"), "{e}");
    let e = m("tensorrt_profile_opt = \"640x480\"\ntensorrt_profile_max = \"512x512\"");
    assert!(e.contains("opt 640x480 is larger than max 512x512"), "{e}");
    let e = load(&format!("{style}[daemon]\nframe_aspect = \"wide\"\n"));
    assert!(e.contains("frame_aspect") && e.contains("WIDTH:HEIGHT"), "{e}");
}

#[test]
fn runtime_options_and_expected_shapes_from_the_example() {
    let _g = ENV.lock().unwrap();
    let c = Config::load(&common::root().join("deploy/fuchun.example.toml")).unwrap();
    let o = c.runtime().unwrap();
    use fuchun::engine::runtime::{ArenaExtend, ConvSearch};
    // the defaults that suit shared GPU memory
    assert_eq!(o.cuda.conv_search, ConvSearch::Heuristic);
    assert_eq!(o.cuda.arena_extend, ArenaExtend::SameAsRequested);
    assert!(!o.tensorrt.fp16, "FP16 must not be a default");
    assert!(o.tensorrt.timing_cache);
    let (frames, profile) = c.expected_shapes();
    // ink at 384 (front_door caps at 384 too): 128, 256, 384 at 16:9; starry at 256: 128, 256
    assert_eq!(frames, vec![[72, 128], [144, 256], [216, 384]]);
    // the profile also covers the style images (squares of their longest side)
    assert!(profile.contains(&[384, 384]) && profile.iter().all(|s| s[0].max(s[1]) <= 384), "{profile:?}");
    // what serve uses: that profile, opt = the largest frame
    let (o, warm) = c.serve_runtime().unwrap();
    assert_eq!((o.sizes, o.tensorrt.profile.opt, warm), (profile, Some([216, 384]), frames));
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

#[test]
fn temporal_settings_load_and_bad_ones_are_explained() {
    let style = format!("[styles.ink]\nimages = [\"{}\"]\n", common::example("fuchun.jpg").display());
    let e = load(&format!("{style}[daemon.temporal]\nchange_threshold = 1.5\n"));
    assert!(e.contains("daemon.temporal") && e.contains("threshold must be in (0, 1)"), "{e}");
    assert!(load(&format!("{style}[daemon.temporal]\nscene_change = 0\n")).contains("scene_change"));
    let e = load(&format!("{style}[daemon.temporal]\nframe_evaluations = 0\n"));
    assert!(e.contains("daemon.temporal.frame_evaluations must be at least 1"), "{e}");
    // the deprecated spelling is still read
    assert!(load(&format!("{style}[daemon.temporal]\nmax_evaluations = 0\n")).contains("frame_evaluations"));
    assert!(load(&format!("{style}[daemon.temporal]\nmotion_px = 500\n")).contains("motion_px"));
    assert!(load(&format!("{style}[daemon.temporal]\nflow = true\n")).contains("unknown field"));
    assert!(load(&format!("{style}temporal_weight = -1\n")).contains("temporal_weight"));
    // the old key still loads (it is ignored with a warning), and the settings reach the stream
    let _g = ENV.lock().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(
        &p,
        format!("{style}temporal_weight = 50\n[daemon]\nwarm_start_threshold = 0.04\n[daemon.temporal]\nenabled = false\ndilate_px = 3\n"),
    )
    .unwrap();
    let c = Config::load(&p).unwrap();
    let door = fuchun::settings::Door::Toml("daemon.temporal".into());
    let s = c.daemon.temporal.settings(c.styles["ink"].transfer.temporal_weight(), &door).unwrap();
    assert!(!s.enabled);
    assert_eq!((s.change.dilate_px, s.temporal_weight), (3, 50.0));
}

/// Kiosk sizes: a camera's max_size is accepted up to 3840 (4K UHD) and refused outside 16..=3840 with the range
/// in the message; each camera's largest result is planned under [model] memory_budget_mb on the real manifest:
/// 3840 px runs in tiles under a budget that holds it, and a budget too small is refused naming the camera and the
/// settings to change.
#[test]
fn kiosk_sizes_are_accepted_up_to_4k_and_planned_under_the_budget() {
    let style =
        format!("[styles.ink]\nimages = [\"{}\"]\nimage_size = 3840\n", common::example("fuchun.jpg").display());
    for bad in [0, 8, 3841, 38400] {
        let e = load(&format!("{style}[cameras.lobby]\nmax_size = {bad}\n"));
        assert!(e.contains("cameras.lobby.max_size") && e.contains("16 to 3840"), "{bad}: {e}");
        let e = load(&format!("{style}[daemon]\ndefault_max_size = {bad}\n"));
        assert!(e.contains("daemon.default_max_size") && e.contains("16 to 3840"), "{bad}: {e}");
    }
    let _g = ENV.lock().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, format!("{style}[daemon]\ndefault_max_size = 1024\n[cameras.lobby]\nmax_size = 3840\n"))
        .unwrap();
    let c = Config::load(&p).unwrap();
    let m = fuchun::engine::Manifest::load(&common::root().join("models/out/vgg16-max")).unwrap();
    // under 8000 MiB: 3840x2160 in tiles, the largest first
    let plans = c.plan_frame_sizes(&m, Some(8000)).unwrap();
    let (who, shape, plan) = &plans[0];
    assert!(who.contains("lobby") && *shape == [2160, 3840] && plan.tile.is_some(), "{who} {shape:?} {plan:?}");
    assert!(plan.estimate_mb <= 8000);
    assert!(plans.iter().any(|(w, s, _)| w.contains("default_max_size") && *s == [576, 1024]), "{plans:?}");
    // under 3000 MiB 3840x2160 cannot run even in the smallest tiles: refused, naming the camera and the fix
    let e = format!("{:#}", c.plan_frame_sizes(&m, Some(3000)).unwrap_err());
    assert!(
        e.contains("camera lobby")
            && e.contains("3840x2160")
            && e.contains("max_size 3840")
            && e.contains("memory_budget_mb"),
        "{e}"
    );
    // without a budget it is planned whole (a warning, not a refusal: a GPU host may have the memory)
    assert!(c.plan_frame_sizes(&m, None).unwrap()[0].2.tile.is_none());
}
