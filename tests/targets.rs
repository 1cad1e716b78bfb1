//! The runtime's style targets (Gram, shifted Gram, quantiles, blends) against the exporter's numpy reference.

mod common;

use std::process::Command;

use fuchun::engine::{Model, ObjectiveInputs, RuntimeOptions};
use fuchun::imageio::{self, Limits};
use fuchun::transfer::histmatch::update_targets;
use fuchun::transfer::targets::{gram, quantiles, resample_sorted, shifted_grams};
use fuchun::transfer::StyleTargets;

fn max_rel(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-12);
    a.iter().zip(b).map(|(x, y)| (*x as f64 - y).abs()).fold(0.0, f64::max) / scale
}

#[test]
fn targets_match_the_exporter_reference() {
    let mut model = Model::load(&common::test_model(), &RuntimeOptions::default()).unwrap();
    let img = imageio::load_path(&common::example("fuchun.jpg"), &Limits::default()).unwrap().fit_longest(72);
    let feats = model.features(&img.data, img.height, img.width).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fdir = dir.path().join("feats");
    std::fs::create_dir(&fdir).unwrap();
    for (layer, f) in &feats {
        common::write_npy(&fdir.join(format!("feat_{layer}.npy")), &[1, f.channels, f.height, f.width], &f.data);
    }
    let m = &model.manifest;
    let shift: Vec<String> = m.shift_layers.iter().map(|s| format!("{}:{}", s.layer, s.delta)).collect();
    let out = dir.path().join("ref");
    let status = Command::new(common::python())
        .args(["-m", "fuchun_export.reference", "targets"])
        .arg(&fdir)
        .arg(&out)
        .args(["--quantiles", &m.quantiles.to_string(), "--shift", &shift.join(",")])
        .current_dir(common::root().join("models"))
        .status()
        .unwrap();
    assert!(status.success());
    let t = StyleTargets::from_features(m, &feats).unwrap();
    for l in &m.style_layers {
        let (shape, want) = common::read_npy(&out.join(format!("gram_{l}.npy")));
        assert_eq!(shape, vec![feats[l].channels, feats[l].channels]);
        assert!(max_rel(t.get(&format!("gram_{l}")).unwrap(), &want) < 1e-5, "gram {l}");
    }
    for s in &m.shift_layers {
        let (_, h) = common::read_npy(&out.join(format!("shift_h_{}.npy", s.layer)));
        let (_, v) = common::read_npy(&out.join(format!("shift_v_{}.npy", s.layer)));
        assert!(max_rel(t.get(&format!("shift_h_{}", s.layer)).unwrap(), &h) < 1e-5, "shift_h {}", s.layer);
        assert!(max_rel(t.get(&format!("shift_v_{}", s.layer)).unwrap(), &v) < 1e-5, "shift_v {}", s.layer);
    }
    for l in &m.hist_layers {
        let (shape, want) = common::read_npy(&out.join(format!("hist_{l}.npy")));
        assert_eq!(shape, vec![feats[l].channels, m.quantiles]);
        let e = max_rel(t.get(&format!("quantiles_{l}")).unwrap(), &want);
        assert!(e < 1e-6, "hist {l}: {e}");
    }
    // the free functions agree with the struct
    let l = &m.style_layers[0];
    assert_eq!(gram(&feats[l]), t.get(&format!("gram_{l}")).unwrap());
    assert_eq!(quantiles(&feats[l], m.quantiles).len(), feats[l].channels * m.quantiles);
    let s0 = &m.shift_layers[0];
    let (h, v) = shifted_grams(&feats[&s0.layer], s0.delta);
    assert_eq!(h, t.get(&format!("shift_h_{}", s0.layer)).unwrap());
    assert_eq!(v, t.get(&format!("shift_v_{}", s0.layer)).unwrap());
    // every tensor has the shape the layout (what the daemon's cache holds) says
    let layout = StyleTargets::layout(m);
    assert_eq!(layout.len(), t.tensors.len());
    for (name, shape) in layout {
        assert_eq!(t.tensors[&name].shape, shape, "{name}");
        assert_eq!(t.tensors[&name].data.len(), shape.iter().product::<usize>(), "{name}");
    }
}

/// The runtime's histogram matching (radix argsort per channel, src/transfer/histmatch.rs) against numpy's
/// stable argsort + resampled table: identical, ties (ReLU zeros) included.
#[test]
fn histogram_matching_matches_the_exporter_reference() {
    let mut model = Model::load(&common::test_model(), &RuntimeOptions::default()).unwrap();
    let limits = Limits::default();
    let style = imageio::load_path(&common::example("fuchun.jpg"), &limits).unwrap().fit_longest(80);
    let photo = imageio::load_path(&common::example("tubingen.jpg"), &limits).unwrap().fit_longest(64);
    let sf = model.features(&style.data, style.height, style.width).unwrap();
    let pf = model.features(&photo.data, photo.height, photo.width).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (sub, feats) in [("style", &sf), ("photo", &pf)] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        for (layer, f) in feats.iter() {
            common::write_npy(
                &dir.path().join(sub).join(format!("feat_{layer}.npy")),
                &[1, f.channels, f.height, f.width],
                &f.data,
            );
        }
    }
    let m = model.manifest.clone();
    let out = dir.path().join("ref");
    let status = Command::new(common::python())
        .args(["-m", "fuchun_export.reference", "targets"])
        .arg(dir.path().join("style"))
        .arg(&out)
        .args(["--quantiles", &m.quantiles.to_string(), "--match"])
        .arg(dir.path().join("photo"))
        .current_dir(common::root().join("models"))
        .status()
        .unwrap();
    assert!(status.success());
    let st = StyleTargets::from_features(&m, &sf).unwrap();
    let mut inputs = ObjectiveInputs::new();
    update_targets(&m, &pf, &st, &mut inputs).unwrap();
    assert!(!m.hist_layers.is_empty());
    for l in &m.hist_layers {
        let (shape, want) = common::read_npy(&out.join(format!("hist_target_{l}.npy")));
        let f = &pf[l];
        assert_eq!(shape, vec![1, f.channels, f.height, f.width]);
        let zeros = f.data.iter().filter(|v| **v == 0.0).count();
        assert!(zeros > 0, "{l}: the test should include ties");
        let got = inputs.get_mut(&format!("hist_target_{l}")).unwrap().to_vec();
        let e = max_rel(&got, &want);
        assert!(e < 1e-6, "hist_target {l}: {e}");
        // updating in place with the same activations gives the same target
        update_targets(&m, &pf, &st, &mut inputs).unwrap();
        assert_eq!(inputs.get_mut(&format!("hist_target_{l}")).unwrap().to_vec(), got);
    }
}

#[test]
fn blending_averages_grams_and_quantiles() {
    let mut model = Model::load(&common::test_model(), &RuntimeOptions::default()).unwrap();
    let limits = Limits::default();
    let a = imageio::load_path(&common::example("fuchun.jpg"), &limits).unwrap().fit_longest(64);
    let b = imageio::load_path(&common::example("starry_night.jpg"), &limits).unwrap().fit_longest(64);
    let fa = model.features(&a.data, a.height, a.width).unwrap();
    let fb = model.features(&b.data, b.height, b.width).unwrap();
    let ta = StyleTargets::from_features(&model.manifest, &fa).unwrap();
    let tb = StyleTargets::from_features(&model.manifest, &fb).unwrap();
    let only_a = StyleTargets::blend(&[ta.clone(), tb.clone()], &[2.0, 0.0]).unwrap();
    assert_eq!(only_a, ta);
    let mid = StyleTargets::blend(&[ta.clone(), tb.clone()], &[1.0, 3.0]).unwrap();
    for (name, g) in mid.tensors.iter().filter(|(n, _)| n.starts_with("gram_")) {
        for ((m, x), y) in g.data.iter().zip(&ta.tensors[name].data).zip(&tb.tensors[name].data) {
            assert!((m - (0.25 * x + 0.75 * y)).abs() <= 1e-5 * (x.abs() + y.abs() + 1e-6));
        }
    }
    // a blend of sorted tables stays sorted (it is the Wasserstein barycentre's quantile function)
    let k = model.manifest.quantiles;
    for q in mid.tensors.iter().filter(|(n, _)| n.starts_with("quantiles_")).map(|(_, t)| &t.data) {
        for row in q.chunks(k) {
            assert!(row.windows(2).all(|w| w[0] <= w[1]));
        }
    }
    assert!(StyleTargets::blend(&[ta.clone(), tb.clone()], &[1.0])
        .unwrap_err()
        .to_string()
        .contains("--style-blend-weights"));
    assert!(StyleTargets::blend(&[ta, tb], &[0.0, 0.0]).is_err());
}

#[test]
fn resampling_is_exact_at_equal_sizes() {
    let s: Vec<f32> = (0..16).map(|i| (i * i) as f32).collect();
    let mut out = vec![0.0; 16];
    resample_sorted(&s, 16, &mut out);
    assert_eq!(out, s);
    let mut two = vec![0.0; 2];
    resample_sorted(&s, 2, &mut two);
    // p = (j + 0.5) * 16 / 2 - 0.5 = 3.5 and 11.5
    assert_eq!(two, vec![(9.0 + 16.0) / 2.0, (121.0 + 144.0) / 2.0]);
}

/// The full-resolution histogram layers come from prelude.onnx before each evaluation: the same activations as the
/// feature extractor's, matched into the objective's inputs.
#[test]
fn prelude_gives_the_exact_layers_activations() {
    let mut model = Model::load(&common::test_model(), &RuntimeOptions::default()).unwrap();
    let m = model.manifest.clone();
    assert_eq!(m.hist_exact_layers, vec!["relu1_1".to_string()]);
    let img = imageio::load_path(&common::example("tubingen.jpg"), &Limits::default()).unwrap().fit_longest(64);
    let feats = model.features(&img.data, img.height, img.width).unwrap();
    let mut inputs = ObjectiveInputs::new();
    let mut seen = Vec::new();
    let mut check = |layer: &str, shape: [usize; 3], data: &mut [f32]| -> anyhow::Result<()> {
        let f = &feats[layer];
        assert_eq!(shape, [f.channels, f.height, f.width]);
        let scale = f.data.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        assert!(data.iter().zip(&f.data).all(|(a, b)| (a - b).abs() <= 1e-5 * scale), "{layer}");
        seen.push(layer.to_string());
        Ok(())
    };
    model.prelude(&img.data, img.height, img.width, &mut inputs, &mut check).unwrap();
    assert_eq!(seen, m.hist_exact_layers);
    // the activations were written into the objective's target input (in place, no other buffer); matching them
    // there gives the same target as matching a copy
    let f = &feats["relu1_1"];
    assert_eq!(inputs.get_mut("hist_target_relu1_1").unwrap().len(), f.data.len());
    let style = imageio::load_path(&common::example("fuchun.jpg"), &Limits::default()).unwrap().fit_longest(80);
    let st = StyleTargets::from_features(&m, &model.features(&style.data, style.height, style.width).unwrap()).unwrap();
    let mut in_place = |layer: &str, shape: [usize; 3], data: &mut [f32]| {
        fuchun::transfer::histmatch::match_layer_in_place(m.quantiles, layer, shape, data, &st)
    };
    model.prelude(&img.data, img.height, img.width, &mut inputs, &mut in_place).unwrap();
    let got = inputs.get_mut("hist_target_relu1_1").unwrap().to_vec();
    let mut copy = ObjectiveInputs::new();
    update_targets(&m, &feats, &st, &mut copy).unwrap();
    let want = copy.get_mut("hist_target_relu1_1").unwrap().to_vec();
    let scale = want.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let differ = got.iter().zip(&want).filter(|(a, b)| (*a - *b).abs() > 1e-4 * scale).count();
    // ORT's prelude and feature graphs may round a few activations differently, which can swap neighbours' ranks
    assert!(differ * 1000 <= got.len(), "{differ} of {} values differ", got.len());
}
