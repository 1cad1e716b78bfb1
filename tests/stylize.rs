//! `fuchun stylize` end to end, and the transfer loop on the real default weights.

mod common;

use fuchun::engine::{Model, RuntimeOptions};
use fuchun::imageio::{self, Limits};
use fuchun::transfer::color::rgb_to_ycbcr;
use fuchun::transfer::{stylize, Init, NoHooks, StylizeOptions, Weights};

fn p(path: &std::path::Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn end_to_end_with_random_graph_loss_falls_saves_and_traces() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    let trace = dir.path().join("trace.jsonl");
    let model = common::test_model();
    let o = common::fuchun(&[
        "stylize",
        "--model",
        p(&model),
        "--content",
        p(&common::example("tubingen.jpg")),
        "--style",
        p(&common::example("fuchun.jpg")),
        "-o",
        p(&out),
        "--image-size",
        "64",
        "--scales",
        "48,64",
        // the refinement at 64 px runs a quarter of them (`REFINE_SHARE`): 10
        "--iterations",
        "40",
        "--tol",
        "0",
        "--save-every",
        "5",
        "--trace",
        p(&trace),
        "--provider",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("wrote") && stdout.contains("64x48"), "{stdout}");
    let img = imageio::load_path(&out, &Limits::default()).unwrap();
    assert_eq!((img.width, img.height), (64, 48));
    // intermediate saves: iterations 5 and 10 at both scales, none past the refinement's 10
    assert!(!dir.path().join("out_2_0015.png").exists());
    for name in ["out_1_0005.png", "out_1_0010.png", "out_2_0005.png", "out_2_0010.png"] {
        let saved = imageio::load_path(&dir.path().join(name), &Limits::default()).unwrap();
        assert_eq!(saved.width, if name.starts_with("out_1") { 48 } else { 64 }, "{name}");
    }
    // trace: valid JSON lines with every field; the loss falls within each scale
    let text = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.len() >= 20, "{} trace lines", lines.len());
    for l in &lines {
        for key in [
            "scale",
            "width",
            "height",
            "iteration",
            "evaluation",
            "total",
            "content",
            "style",
            "shift",
            "hist",
            "tv",
            "elapsed_ms",
        ] {
            assert!(l.get(key).is_some(), "trace line lacks {key}: {l}");
        }
    }
    for scale in [0, 1] {
        let totals: Vec<f64> =
            lines.iter().filter(|l| l["scale"] == scale).map(|l| l["total"].as_f64().unwrap()).collect();
        let best = totals.iter().cloned().fold(f64::INFINITY, f64::min);
        assert!(best < 0.9 * totals[0], "scale {scale}: loss did not fall: {totals:?}");
    }
    let ms: Vec<f64> = lines.iter().map(|l| l["elapsed_ms"].as_f64().unwrap()).collect();
    assert!(ms.windows(2).all(|w| w[1] >= w[0]));
}

#[test]
fn seed_makes_output_bit_identical_and_blend_weights_matter() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::test_model();
    let both = format!("{},{}", p(&common::example("fuchun.jpg")), p(&common::example("starry_night.jpg")));
    let content = common::example("tubingen.jpg");
    let run = |name: &str, styles: &str, extra: &[&str]| -> Vec<u8> {
        let out = dir.path().join(name);
        let mut args = vec![
            "stylize",
            "--model",
            p(&model),
            "--content",
            p(&content),
            "--style",
            styles,
            "-o",
            p(&out),
            "--image-size",
            "40",
            "--iterations",
            "8",
            "--tol",
            "0",
            "--init",
            "noise",
            "--provider",
            "cpu",
        ];
        args.extend(extra);
        let o = common::fuchun(&args);
        assert!(o.status.success(), "{}", common::stderr(&o));
        std::fs::read(&out).unwrap()
    };
    let a = run("a.png", &both, &["--seed", "7"]);
    let b = run("b.png", &both, &["--seed", "7"]);
    assert_eq!(a, b, "same seed, different output");
    let c = run("c.png", &both, &["--seed", "8"]);
    assert_ne!(a, c, "different seeds, same output");
    // blend weights 1,0 are exactly the first style alone; equal weights differ from either style alone
    let only_first = run("d.png", &both, &["--seed", "7", "--style-blend-weights", "1,0"]);
    let first_alone = run("e.png", p(&common::example("fuchun.jpg")), &["--seed", "7"]);
    assert_eq!(only_first, first_alone);
    let only_second = run("f.png", &both, &["--seed", "7", "--style-blend-weights", "0,1"]);
    assert_ne!(a, only_first);
    assert_ne!(a, only_second);
    let bad = common::fuchun(&[
        "stylize",
        "--model",
        p(&model),
        "--content",
        p(&common::example("tubingen.jpg")),
        "--style",
        p(&common::example("fuchun.jpg")),
        "-o",
        p(&dir.path().join("x.png")),
        "--style-blend-weights",
        "1,2",
    ]);
    assert!(!bad.status.success());
    assert!(
        common::stderr(&bad).contains("--style-blend-weights has 2 values for 1 style images"),
        "{}",
        common::stderr(&bad)
    );
}

#[test]
fn original_colors_keep_the_content_chroma() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("oc.png");
    let o = common::fuchun(&[
        "stylize",
        "--model",
        p(&common::test_model()),
        "--content",
        p(&common::example("tubingen.jpg")),
        "--style",
        p(&common::example("starry_night.jpg")),
        "-o",
        p(&out),
        "--image-size",
        "48",
        "--iterations",
        "10",
        "--original-colors",
        "--provider",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let res = imageio::load_path(&out, &Limits::default()).unwrap();
    let content =
        imageio::load_path(&common::example("tubingen.jpg"), &Limits::default()).unwrap().resize(res.width, res.height);
    let n = res.width * res.height;
    let (mut err, mut count) = (0.0f64, 0usize);
    for i in 0..n {
        let (y, cb, cr) = rgb_to_ycbcr(res.data[i], res.data[n + i], res.data[2 * n + i]);
        let (_, cb0, cr0) = rgb_to_ycbcr(content.data[i], content.data[n + i], content.data[2 * n + i]);
        if y > 0.05 && y < 0.95 {
            err += ((cb - cb0).abs() + (cr - cr0).abs()) as f64;
            count += 2;
        }
    }
    let mean = err / count as f64;
    assert!(mean < 0.01, "mean chroma difference {mean}");
}

/// The real default weights at ~96 px: the style loss falls by at least half while the content stays close to the
/// content image (much closer than noise is).
#[test]
fn real_weights_style_loss_falls_and_content_stays_bounded() {
    let mut model = Model::load(&common::real_model(), &RuntimeOptions::default()).unwrap();
    let limits = Limits::default();
    let content = imageio::load_path(&common::example("tubingen.jpg"), &limits).unwrap();
    let style = imageio::load_path(&common::example("fuchun.jpg"), &limits).unwrap();
    let mut opts = StylizeOptions::new(Weights::defaults(&model.manifest));
    opts.image_size = 96;
    opts.iterations = 40;
    opts.tol = 0.0;
    let out = stylize(&mut model, &content, std::slice::from_ref(&style), &opts, &mut NoHooks).unwrap();
    let rep = &out.scales[0];
    let (s0, s1) = (rep.first.term("style"), rep.last.term("style"));
    assert!(s1 <= 0.5 * s0, "style loss {s0} -> {s1}");
    // content term of the result vs that of a noise image with the same targets
    let mut noise_opts = opts.clone();
    noise_opts.init = Init::Noise;
    noise_opts.iterations = 1;
    let noise = stylize(&mut model, &content, std::slice::from_ref(&style), &noise_opts, &mut NoHooks).unwrap();
    let c_noise = noise.scales[0].first.term("content");
    let c_final = rep.last.term("content");
    assert!(c_final < 0.5 * c_noise, "content {c_final} vs noise {c_noise}");
    assert!(out.image.data.iter().all(|v| (0.0..=1.0).contains(v)));
}

/// What each side of the loss "aims for": from noise, content-only reconstruction approaches the content
/// features and style-only reconstruction approaches the style statistics.
#[test]
fn content_only_and_style_only_reconstructions_from_noise() {
    let mut model = Model::load(&common::test_model(), &RuntimeOptions::default()).unwrap();
    let limits = Limits::default();
    let content = imageio::load_path(&common::example("tubingen.jpg"), &limits).unwrap();
    let style = imageio::load_path(&common::example("starry_night.jpg"), &limits).unwrap();
    let mut w = Weights::defaults(&model.manifest);
    w.only(&[("content", 1.0)]).unwrap();
    let mut opts = StylizeOptions::new(w);
    opts.image_size = 48;
    opts.iterations = 60;
    opts.tol = 0.0;
    opts.init = Init::Noise;
    let c = stylize(&mut model, &content, std::slice::from_ref(&style), &opts, &mut NoHooks).unwrap();
    let r = &c.scales[0];
    assert!(
        r.last.term("content") < 0.2 * r.first.term("content"),
        "content {} -> {}",
        r.first.term("content"),
        r.last.term("content")
    );
    opts.weights.only(&[("style", 1.0)]).unwrap();
    let s = stylize(&mut model, &content, std::slice::from_ref(&style), &opts, &mut NoHooks).unwrap();
    let r = &s.scales[0];
    assert!(
        r.last.term("style") < 0.2 * r.first.term("style"),
        "style {} -> {}",
        r.first.term("style"),
        r.last.term("style")
    );
    // and the content-only image is far from the style-only one
    let diff: f32 =
        c.image.data.iter().zip(&s.image.data).map(|(a, b)| (a - b).abs()).sum::<f32>() / c.image.data.len() as f32;
    assert!(diff > 0.05, "{diff}");
}

/// `fuchun bench` on the small random graph: every figure with its target, the JSON, the hist-every comparison and
/// its loss curves, and the memory figure from a child `fuchun stylize`.
#[test]
fn bench_prints_the_four_figures_and_writes_curves() {
    let dir = tempfile::tempdir().unwrap();
    let curves = dir.path().join("curves");
    let model = common::test_model();
    let o = common::fuchun(&[
        "bench",
        "--model",
        p(&model),
        "--provider",
        "cpu",
        "--content",
        p(&common::example("tubingen.jpg")),
        "--style",
        p(&common::example("fuchun.jpg")),
        "--sizes",
        "48,64",
        "--repeats",
        "1",
        "--memory-iterations",
        "3",
        "--schedule-size",
        "64",
        "--schedule-evaluations",
        "8",
        "--warm-size",
        "64",
        "--compare-hist-every",
        "1,3",
        "--compare-size",
        "48",
        "--compare-iterations",
        "6",
        "--curves",
        p(&curves),
        "--json",
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "matrix-multiply peak",
        "64x64",
        "[1] speed",
        "target ≥ 85%",
        "[2] memory",
        "`fuchun stylize` at 64x64",
        "target ≤ 1200 MB",
        "optimiser's own cost",
        "[3] schedule at 64 px",
        "target ≥ 3x",
        "[4] warm start at 64 px",
        "target ≤ 0.33",
        "hist_every",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    let json: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert!(json["sgemm_peak_gflops"].as_f64().unwrap() > 0.0);
    assert_eq!(json["evaluations"].as_array().unwrap().len(), 2);
    let f = &json["figures"];
    assert!(f["stylize_peak_rss_bytes"].as_u64().unwrap() > 10_000_000);
    assert!(f["schedule"]["single_evaluations"].as_u64().unwrap() >= 8);
    assert!(f["warm"]["warm_evaluations"].as_u64().unwrap() <= f["warm"]["cold_evaluations"].as_u64().unwrap());
    let cmp = f["hist_every"].as_array().unwrap();
    assert_eq!(cmp.len(), 2);
    for (row, k) in cmp.iter().zip([1, 3]) {
        assert_eq!(row["hist_every"], k);
        assert!(row["exact_loss"].as_f64().unwrap().is_finite());
        let csv = std::fs::read_to_string(curves.join(format!("hist_every_{k}.csv"))).unwrap();
        assert_eq!(csv.lines().next(), Some("evaluation,total"));
        assert!(csv.lines().count() > 6, "{csv}");
    }
}
