//! Bad input: each a clear message naming the problem and the fix, exit status ≠ 0, no panic.

mod common;

use std::path::Path;

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Run `fuchun stylize` on a small test setup with some arguments replaced; return stderr, asserting failure.
fn fails(extra: &[&str], content: Option<&Path>, model: Option<&Path>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    let default_model = common::test_model();
    let default_content = common::example("tubingen.jpg");
    let style = common::example("fuchun.jpg");
    let mut args = vec![
        "stylize",
        "--model",
        p(model.unwrap_or(&default_model)),
        "--content",
        p(content.unwrap_or(&default_content)),
        "--style",
        p(&style),
        "-o",
        p(&out),
        "--image-size",
        "48",
        "--iterations",
        "2",
    ];
    args.extend(extra);
    let o = common::fuchun(&args);
    let err = common::stderr(&o);
    assert!(!o.status.success(), "expected failure for {extra:?}");
    assert!(err.contains("error:"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists());
    err
}

#[test]
fn missing_content_file() {
    let err = fails(&[], Some(Path::new("/nonexistent/photo.jpg")), None);
    assert!(err.contains("/nonexistent/photo.jpg"), "{err}");
}

#[test]
fn non_image_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("notes.jpg");
    std::fs::write(&f, "this is a text file, not a photo\n").unwrap();
    let err = fails(&[], Some(&f), None);
    assert!(err.to_lowercase().contains("jpeg, png or webp"), "{err}");
}

#[test]
fn truncated_jpeg() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(common::example("tubingen.jpg")).unwrap();
    let f = dir.path().join("cut.jpg");
    std::fs::write(&f, &bytes[..bytes.len() / 3]).unwrap();
    let err = fails(&[], Some(&f), None);
    assert!(err.to_lowercase().contains("truncated") || err.to_lowercase().contains("corrupt"), "{err}");
}

#[test]
fn huge_declared_dimensions() {
    // A PNG whose header declares 100000 x 100000 pixels.
    let png = common::png_header(100_000, 100_000);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("huge.png");
    std::fs::write(&f, &png).unwrap();
    let err = fails(&[], Some(&f), None);
    assert!(err.contains("100000"), "{err}");
}

#[test]
fn unknown_provider() {
    let err = fails(&["--provider", "quantum"], None, None);
    assert!(err.contains("unknown provider") && err.contains("auto, tensorrt, cuda or cpu"), "{err}");
}

#[test]
fn unavailable_provider_is_an_error_not_a_fallback() {
    for p in ["tensorrt", "cuda"] {
        let err = fails(&["--provider", p], None, None);
        assert!(err.contains(&format!("execution provider {p} was requested but is unavailable")), "{err}");
        assert!(err.contains("not available in this build") || err.contains("not available in this library"), "{err}");
    }
}

#[test]
fn bad_gpu_options_are_explained() {
    let err = fails(&["--cudnn-conv-algo-search", "fastest"], None, None);
    assert!(err.contains("heuristic, exhaustive or default"), "{err}");
    let err = fails(&["--cuda-arena-extend-strategy", "double"], None, None);
    assert!(err.contains("same_as_requested or next_power_of_two"), "{err}");
    let err = fails(&["--gpu-mem-limit-mb", "0"], None, None);
    assert!(err.contains("gpu_mem_limit_mb must be at least 1"), "{err}");
    let err = fails(&["--tensorrt-profile", "64x64,32x32,512x512"], None, None);
    assert!(err.contains("min 64x64 is larger than opt 32x32"), "{err}");
    let err = fails(&["--tensorrt-profile", "64x64,big,512x512"], None, None);
    assert!(err.contains("WIDTHxHEIGHT"), "{err}");
}

#[test]
fn serve_with_an_unavailable_explicit_provider_exits_with_a_clear_error() {
    // the model is loaded before the broker is contacted: no broker needed to see the failure
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[mqtt]\nport = 1\n[model]\ndir = \"{}\"\nprovider = \"tensorrt\"\n[styles.ink]\nimages = [\"{}\"]\nimage_size = 64\n",
            common::test_model().display(),
            common::example("fuchun.jpg").display()
        ),
    )
    .unwrap();
    let o = common::fuchun(&["serve", "--config", cfg.to_str().unwrap()]);
    let err = common::stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("error:") && !err.contains("panicked"), "{err}");
    assert!(err.contains("execution provider tensorrt was requested but is unavailable"), "{err}");
    // restarting cannot fix it: the exit status on which the systemd unit does not restart
    assert_eq!(o.status.code(), Some(78), "{err}");
    assert!(err.contains("cannot start (not restarted by systemd"), "{err}");
}

#[test]
fn daemons_with_a_bad_configuration_exit_78_and_failures_of_other_commands_1() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[mqtt]\nport = \"x\"\n").unwrap();
    for cmd in ["serve", "view"] {
        let o = common::fuchun(&[cmd, "--config", cfg.to_str().unwrap()]);
        let err = common::stderr(&o);
        assert_eq!(o.status.code(), Some(78), "{cmd}: {err}");
        assert!(err.contains("error:") && err.contains("port") && !err.contains("panicked"), "{cmd}: {err}");
    }
    let missing = dir.path().join("missing.toml");
    let o = common::fuchun(&["serve", "--config", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(78), "{}", common::stderr(&o));
    // a one-shot command's failure keeps status 1
    let o = common::fuchun(&["stylize", "--content", missing.to_str().unwrap(), "--style", "x.jpg", "-o", "o.png"]);
    assert_eq!(o.status.code(), Some(1), "{}", common::stderr(&o));
}

#[test]
fn ort_library_missing() {
    let err = fails(&["--ort-library", "/nonexistent/libonnxruntime.so"], None, None);
    assert!(err.contains("/nonexistent/libonnxruntime.so") && err.contains("--ort-library"), "{err}");
}

#[test]
fn ort_library_not_onnxruntime() {
    // a real shared library that is not ONNX Runtime, and a file that is no library at all
    let libz =
        ["/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1", "/lib/aarch64-linux-gnu/libz.so.1"]
            .into_iter()
            .find(|p| Path::new(p).exists());
    if let Some(lib) = libz {
        let err = fails(&["--ort-library", lib], None, None);
        assert!(err.contains("not a usable ONNX Runtime library"), "{err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("libonnxruntime.so");
    std::fs::write(&f, "garbage").unwrap();
    let err = fails(&["--ort-library", p(&f)], None, None);
    assert!(err.contains("not a usable ONNX Runtime library"), "{err}");
}

fn copy_model(to: &Path) {
    common::copy_dir(&common::test_model(), to);
}

#[test]
fn manifest_names_an_input_the_graph_lacks() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    let path = dir.path().join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m["graphs"]["objective"]["inputs"][1]["name"] = "gram_relu9_9".into();
    std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
    let err = fails(&[], None, Some(dir.path()));
    assert!(err.contains("gram_relu9_9") && err.contains("make models"), "{err}");
}

#[test]
fn graph_from_another_export() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    // features.onnx of the real model in place of the test one
    std::fs::copy(common::real_model().join("features.onnx"), dir.path().join("features.onnx")).unwrap();
    let err = fails(&[], None, Some(dir.path()));
    assert!(err.contains("does not match its manifest"), "{err}");
}

#[test]
fn graph_weights_missing_or_from_another_export() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    let data = dir.path().join("objective.onnx.data");
    let original = std::fs::read(&data).unwrap();
    std::fs::remove_file(&data).unwrap();
    let err = fails(&[], None, Some(dir.path()));
    assert!(err.contains("objective.onnx.data") && err.contains("missing") && err.contains("make models"), "{err}");
    let mut changed = original.clone();
    changed[100] ^= 1;
    std::fs::write(&data, changed).unwrap();
    let err = fails(&[], None, Some(dir.path()));
    assert!(err.contains("objective.onnx.data") && err.contains("does not match its manifest"), "{err}");
}

#[test]
fn missing_model_directory() {
    let err = fails(&[], None, Some(Path::new("/nonexistent/model")));
    assert!(err.contains("make models"), "{err}");
}

#[test]
fn bad_output_extension_and_options() {
    let dir = tempfile::tempdir().unwrap();
    let o = common::fuchun(&[
        "stylize",
        "--model",
        p(&common::test_model()),
        "--content",
        p(&common::example("tubingen.jpg")),
        "--style",
        p(&common::example("fuchun.jpg")),
        "-o",
        p(&dir.path().join("out.gif")),
    ]);
    assert!(!o.status.success());
    assert!(
        common::stderr(&o).to_lowercase().contains(".gif") || common::stderr(&o).contains("gif"),
        "{}",
        common::stderr(&o)
    );
    let err = fails(&["--image-size", "8"], None, None);
    assert!(err.contains("too small") && err.contains("--image-size"), "{err}");
    let err = fails(&["--scales", "64,32"], None, None);
    assert!(err.contains("--scales must increase"), "{err}");
    let err = fails(&["--style-weight=-1"], None, None);
    assert!(err.contains("--style-weight"), "{err}");
}

#[test]
fn pooling_selects_the_model_and_must_match_an_explicit_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("avg.png");
    // no --model: --pooling avg picks models/out/vgg16-avg (exported by `make models`)
    let o = common::fuchun(&[
        "stylize",
        "--pooling",
        "avg",
        "--content",
        p(&common::example("tubingen.jpg")),
        "--style",
        p(&common::example("fuchun.jpg")),
        "-o",
        p(&out),
        "--image-size",
        "32",
        "--iterations",
        "2",
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(out.is_file());
    // an explicit model exported with max pooling does not silently run as avg
    let err = fails(&["--pooling", "avg"], None, None);
    assert!(err.contains("exported with max pooling"), "{err}");
}

/// `FUCHUN_LOG=info` shows this program's progress, not ONNX Runtime's own messages (518 of 526 lines were its,
/// before): they stay at warnings unless the filter names `ort`.
#[test]
fn info_logs_are_ours_not_onnx_runtimes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.png");
    let run = |filter: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_fuchun"))
            .args(["stylize", "--model", p(&common::test_model()), "--content", p(&common::example("tubingen.jpg"))])
            .args(["--style", p(&common::example("fuchun.jpg")), "-o", p(&out), "--image-size", "48"])
            .args(["--iterations", "2", "-q", "--provider", "cpu"])
            .env("FUCHUN_LOG", filter)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    let o = run("info");
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains(" INFO ") || l.contains(" WARN ")).collect();
    assert!(!lines.is_empty(), "no progress logged: {err}");
    assert!(lines.iter().all(|l| l.contains("fuchun")), "{err}");
    // asking for them still shows them
    let o = run("info,ort=info");
    assert!(String::from_utf8_lossy(&o.stderr).lines().filter(|l| l.contains(" ort")).count() > 0);
}
