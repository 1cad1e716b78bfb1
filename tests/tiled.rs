//! The tiled objective (transfer::tiled, tile_stats.onnx + tile_grad.onnx) against the whole-image objective
//! (objective.onnx) through the real ONNX Runtime: every term's loss, the layers' losses and the gradient, on the
//! real weights at 765×509 with small blocks (odd-sized blocks at the border), and on the random-weight graph at
//! several block sizes.

mod common;

use fuchun::engine::{Losses, Model, ObjectiveInputs, RuntimeOptions};
use fuchun::imageio::{self, Limits, Planar};
use fuchun::transfer::canvas::MARGIN;
use fuchun::transfer::inputs::{objective_inputs, set_temporal, TemporalInputs, Weights};
use fuchun::transfer::tiled;
use fuchun::transfer::StyleTargets;
use rand::{Rng, SeedableRng};

fn load(dir: &std::path::Path) -> Model {
    let opts = RuntimeOptions { memory_budget_mb: Some(4096), ..Default::default() };
    Model::load(dir, &opts).unwrap()
}

/// Content, style targets, a starting image (the content with noise, so that every term is > 0) and the
/// objective's inputs for it, with every term on (the temporal one against a noisy previous frame).
fn setup(model: &mut Model, w: usize, h: usize, seed: u64) -> (Planar, StyleTargets, ObjectiveInputs) {
    let limits = Limits::default();
    let content = imageio::load_path(&common::example("tubingen.jpg"), &limits).unwrap().resize(w, h);
    let style_img = imageio::load_path(&common::example("fuchun.jpg"), &limits).unwrap().resize(384, 256);
    let m = model.manifest.clone();
    let style = StyleTargets::from_features(&m, &model.features(&style_img.data, 256, 384).unwrap()).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut x = content.clone();
    x.data.iter_mut().for_each(|v| *v = (*v + 0.2 * (rng.random::<f32>() - 0.5)).clamp(0.0, 1.0));
    let cf = model.features(&content.data, h, w).unwrap();
    let xf = model.features(&x.data, h, w).unwrap();
    let mut weights = Weights::defaults(&m);
    weights.set_term("temporal", 5.0).unwrap();
    let mut inputs = objective_inputs(&m, (w, h), &cf, &style, &weights, &xf).unwrap();
    let mut prev = x.clone();
    prev.data.iter_mut().for_each(|v| *v = (*v + 0.1 * (rng.random::<f32>() - 0.5)).clamp(0.0, 1.0));
    let t = TemporalInputs { previous: prev, weights: (0..w * h).map(|i| ((i / w) % 3) as f32 * 0.5).collect() };
    set_temporal(&mut inputs, w, h, Some(&t)).unwrap();
    (x, style, inputs)
}

/// `tol(term)`: the relative tolerance of each term's loss against the whole objective's.
fn compare(name: &str, whole: &Losses, g_whole: &[f32], tiled: &Losses, g_tiled: &[f32], tol: &dyn Fn(&str) -> f64) {
    for (t, v) in &whole.terms {
        let got = tiled.term(t);
        let rel = (got - v).abs() / v;
        println!("{name}: {t} tiled {got:.9e} whole {v:.9e} (relative {rel:.2e})");
        assert!(*v > 0.0, "{name}: term {t} is {v}: the test would not see it");
        assert!(rel <= tol(t), "{name}: {t} tiled {got} whole {v} ({rel:.2e})");
    }
    assert!((tiled.total - whole.total).abs() <= 1e-5 * whole.total, "{name}: total");
    for (group, v) in &whole.layers {
        for (i, (a, b)) in v.iter().zip(tiled.layer_losses(group)).enumerate() {
            assert!((a - b).abs() <= tol(group) * a.abs().max(1e-12), "{name}: {group} layer {i}: {a} vs {b}");
        }
    }
    let dot: f64 = g_whole.iter().zip(g_tiled).map(|(a, b)| *a as f64 * *b as f64).sum();
    let na: f64 = g_whole.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = g_tiled.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
    let cosine = dot / (na * nb);
    let largest = g_whole.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let err = g_whole.iter().zip(g_tiled).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    println!("{name}: cosine {cosine:.9}, max error {:.2e} of the largest component", err / largest);
    assert!(cosine >= 0.99999, "{name}: gradient cosine {cosine}");
    assert!(err <= 1e-4 * largest, "{name}: max gradient error {err} against the largest component {largest}");
}

/// Run both on the same inputs: the whole objective with histogram targets matched to x (features.onnx), the
/// tiled one matching them itself from its first pass (global ranks).
fn both(model: &mut Model, w: usize, h: usize, inner: usize, seed: u64) -> (Losses, Vec<f32>, Losses, Vec<f32>) {
    let (x, style, mut inputs) = setup(model, w, h, seed);
    let mut g_whole = vec![0.0f32; x.data.len()];
    let whole = model.evaluate(&x.data, h, w, &mut inputs, &mut g_whole, None).unwrap();
    let layers = model.manifest.hist_layers.clone();
    let hist = |inputs: &ObjectiveInputs| -> Vec<Vec<f32>> {
        layers.iter().map(|l| inputs.view(&format!("hist_target_{l}")).unwrap().1.to_vec()).collect()
    };
    let before = hist(&inputs);
    let mut g_tiled = vec![1.0f32; x.data.len()];
    let (tiled, _) = tiled::evaluate(model, &x.data, (h, w), &mut inputs, &mut g_tiled, &style, true, inner).unwrap();
    // the global ranks: the tiled matching gives every histogram target of the whole image's, bit for bit
    assert!(before == hist(&inputs), "{w}x{h}, tiles {inner}: the histogram targets differ");
    (whole, g_whole, tiled, g_tiled)
}

#[test]
fn tiled_equals_whole_on_the_real_weights() {
    let mut model = load(&common::real_model());
    let tiling = model.manifest.tiling.unwrap();
    assert_eq!((tiling.align, tiling.margin), (16, 80));
    // 765x509: the last tile of each row and column is odd-sized (765 = 5 x 128 + 125, 509 = 3 x 128 + 125)
    let (whole, gw, tiled, gt) = both(&mut model, 765, 509, 128, 7);
    // The Gram terms of objective.onnx itself are off by up to 1.9e-5 (relu4_1) in float32: its Grams are summed over
    // the whole image in one float32 product, the tiled sums per block and added in f64. The tiled layers are held
    // to 1e-6 of a float64 computation from the same activations instead, and to 3e-5 of the whole graph's.
    let (x, _, inputs) = setup(&mut model, 765, 509, 7);
    for group in ["style", "shift"] {
        let exact = f64_gram_layers(&mut model, &x, &inputs, group);
        for (i, (e, t)) in exact.iter().zip(tiled.layer_losses(group)).enumerate() {
            let w = whole.layer_losses(group)[i];
            println!("{group} layer {i}: float64 {e:.10e}, tiled {t:.10e}, whole {w:.10e}");
            assert!((t - e).abs() <= 1e-6 * e, "{group} layer {i}: tiled {t} against float64 {e}");
        }
    }
    compare("real 765x509, tiles 128", &whole, &gw, &tiled, &gt, &|t| {
        if t == "shift" || t == "style" {
            3e-5
        } else {
            1e-5
        }
    });
}

/// Each style (`group` "style") or long-range ("shift") layer's weighted loss in float64 from the image's
/// activations (features.onnx).
fn f64_gram_layers(model: &mut Model, x: &Planar, inputs: &ObjectiveInputs, group: &str) -> Vec<f64> {
    let feats = model.features(&x.data, x.height, x.width).unwrap();
    let lw = inputs.view(&format!("{group}_layer_weights")).unwrap().1.to_vec();
    let m = &model.manifest;
    // (layer, [(target name, rows, cols, dy, dx, share)])
    let layers: Vec<(String, usize)> = if group == "style" {
        m.style_layers.iter().map(|l| (l.clone(), 0)).collect()
    } else {
        m.shift_layers.iter().map(|s| (s.layer.clone(), s.delta)).collect()
    };
    let mut out = Vec::new();
    for (i, (layer, d)) in layers.iter().enumerate() {
        let f = &feats[layer];
        let (c, fh, fw) = (f.channels, f.height, f.width);
        let sides = if group == "style" {
            vec![(format!("gram_{layer}"), (fh, fw, 0, 0), 1.0)]
        } else {
            vec![
                (format!("shift_h_{layer}"), (fh, fw - d, 0, *d), 0.5),
                (format!("shift_v_{layer}"), (fh - d, fw, *d, 0), 0.5),
            ]
        };
        let mut loss = 0.0;
        for (target, (rows, cols, dy, dx), share) in sides {
            let half = |oy: usize, ox: usize| -> Vec<f64> {
                let mut v = Vec::with_capacity(c * rows * cols);
                for ch in 0..c {
                    for y in 0..rows {
                        let at = (ch * fh + y + oy) * fw + ox;
                        v.extend(f.data[at..at + cols].iter().map(|a| *a as f64));
                    }
                }
                v
            };
            let (a, b) = (half(0, 0), half(dy, dx));
            let n = rows * cols;
            let mut g = vec![0.0f64; c * c];
            // SAFETY: a and b are [C, n] row-major, g is [C, C].
            unsafe {
                matrixmultiply::dgemm(
                    c,
                    n,
                    c,
                    1.0 / n as f64,
                    a.as_ptr(),
                    n as isize,
                    1,
                    b.as_ptr(),
                    1,
                    n as isize,
                    0.0,
                    g.as_mut_ptr(),
                    c as isize,
                    1,
                );
            }
            let t = inputs.view(&target).unwrap().1;
            let s: f64 = g.iter().zip(t).map(|(g, t)| (g - *t as f64).powi(2)).sum();
            loss += share * s / (c * c) as f64;
        }
        out.push(lw[i] as f64 * loss);
    }
    out
}

#[test]
fn tiled_equals_whole_on_the_random_graph_for_every_block_size() {
    let mut model = load(&common::test_model());
    // tiles of one alignment unit (many blocks, each mostly margin), odd sizes, and one tile for the whole image
    for (w, h, inner) in [(203, 157, 16), (203, 157, 50), (171, 133, 64), (203, 157, 400), (219, 173, 32)] {
        let (whole, gw, tiled, gt) = both(&mut model, w, h, inner, w as u64 + inner as u64);
        compare(&format!("random {w}x{h}, tiles {inner}"), &whole, &gw, &tiled, &gt, &|_| 1e-5);
    }
}

#[test]
fn a_model_without_tile_graphs_or_a_tiny_budget_is_refused_with_the_fix() {
    let opts = RuntimeOptions { memory_budget_mb: Some(10), ..Default::default() };
    let err = format!("{:#}", Model::load(&common::test_model(), &opts).err().unwrap());
    assert!(err.contains("--max-memory") && err.contains("at least"), "{err}");
    // a copy of the test model whose manifest lists no tile graphs (an export from before them)
    let dir = tempfile::tempdir().unwrap();
    common::copy_dir(&common::test_model(), dir.path());
    let path = dir.path().join("manifest.json");
    let mut man: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let graphs = man["graphs"].as_object_mut().unwrap();
    graphs.remove("tile_stats");
    graphs.remove("tile_grad");
    man.as_object_mut().unwrap().remove("tiling");
    std::fs::write(&path, serde_json::to_string(&man).unwrap()).unwrap();
    let opts = RuntimeOptions { memory_budget_mb: Some(2048), ..Default::default() };
    let err = format!("{:#}", Model::load(dir.path(), &opts).err().unwrap());
    assert!(err.contains("make models") && err.contains("tile graphs"), "{err}");
    // without a budget the same model loads as before
    Model::load(dir.path(), &RuntimeOptions::default()).unwrap();
}

/// Mean absolute difference between neighbouring rows (and columns) of an image, across the given borders and
/// elsewhere. The tiles are laid on the canvas (`transfer::canvas`: `MARGIN` beyond the image on every side), so in
/// the image their borders fall `MARGIN` before each multiple of the side.
fn across_and_inside(img: &Planar, side: usize) -> (f64, f64) {
    let (w, h) = (img.width, img.height);
    let (mut across, mut inside, mut na, mut ni) = (0.0, 0.0, 0usize, 0usize);
    for c in 0..3 {
        let p = &img.data[c * w * h..(c + 1) * w * h];
        for y in 0..h {
            for x in 0..w {
                for (ok, q, border) in [
                    (x + 1 < w, y * w + x + 1, (x + 1 + MARGIN).is_multiple_of(side)),
                    (y + 1 < h, (y + 1) * w + x, (y + 1 + MARGIN).is_multiple_of(side)),
                ] {
                    if !ok {
                        continue;
                    }
                    let d = (p[y * w + x] - p[q]).abs() as f64;
                    if border {
                        across += d;
                        na += 1;
                    } else {
                        inside += d;
                        ni += 1;
                    }
                }
            }
        }
    }
    (across / na as f64, inside / ni as f64)
}

/// A short single-scale run on the random-weight graph: Tübingen at 203×157 (odd sizes: border blocks of their own
/// shape) with the Fuchun scroll, `iterations` L-BFGS iterations and no early stop.
fn short_run(iterations: usize) -> (Model, Planar, Planar, fuchun::transfer::StylizeOptions) {
    let model = load(&common::test_model());
    let limits = Limits::default();
    let content = imageio::load_path(&common::example("tubingen.jpg"), &limits).unwrap().resize(203, 157);
    let style = imageio::load_path(&common::example("fuchun.jpg"), &limits).unwrap();
    let mut opts = fuchun::transfer::StylizeOptions::new(Weights::defaults(&model.manifest));
    opts.image_size = 203;
    opts.scales = vec![203];
    opts.iterations = iterations;
    opts.tol = 0.0;
    (model, content, style, opts)
}

#[test]
fn a_short_tiled_optimisation_has_no_seam_and_follows_the_whole_one() {
    use fuchun::transfer::{stylize, NoHooks};
    let (mut model, content, style, mut opts) = short_run(4);
    // histogram targets matched once, from the starting image: the whole objective matches relu4_1 one
    // evaluation late and the tiled one to the image itself, which would make them two objectives
    opts.hist_every = 0;
    let whole = stylize(&mut model, &content, std::slice::from_ref(&style), &opts, &mut NoHooks).unwrap();
    // 32-pixel tiles: 7 x 6 blocks on the canvas, every 32nd row and column of pixels borders two tiles
    let side = 32;
    opts.tile = Some(side);
    let tiled = stylize(&mut model, &content, std::slice::from_ref(&style), &opts, &mut NoHooks).unwrap();
    // against where the optimisation started (the photo carried into the painting's colours), not the photo: the
    // carry alone moves it by 0.26
    let start = tiled.colour_map.as_ref().map_or_else(|| content.clone(), |m| m.apply(&content));
    let changed: f64 = tiled.image.data.iter().zip(&start.data).map(|(a, b)| (a - b).abs() as f64).sum::<f64>()
        / content.data.len() as f64;
    assert!(changed > 0.005, "the optimisation hardly moved the image ({changed}): the test would see nothing");
    let (across, inside) = across_and_inside(&tiled.image, side);
    let (w_across, w_inside) = across_and_inside(&whole.image, side);
    println!("tiled: across borders {across:.5}, inside {inside:.5}; whole: {w_across:.5}, {w_inside:.5}");
    // no seam: the steps across the tile borders are those of the whole image's optimisation at the same places
    let (ratio, w_ratio) = (across / inside, w_across / w_inside);
    assert!((ratio / w_ratio - 1.0).abs() < 0.01, "across / inside borders: tiled {ratio}, untiled {w_ratio}");
    // the tiled objective is the whole one: the optimisations end at the same image up to float32 rounding carried
    // through 4 L-BFGS iterations (measured: 2.8e-6 at most). Longer, the two part where float32 rounding (1e-7 of
    // the loss) tips one of the projected optimiser's decisions: on the canvas (`transfer::canvas`) 9.5e-4 at 6
    // iterations, 5.4e-3 at 8, 3e-2 at 12, the losses still within 1.2e-3 of each other (3e-6 at 12 before the
    // canvas)
    let diff = tiled.image.data.iter().zip(&whole.image.data).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    let mean = tiled.image.data.iter().zip(&whole.image.data).map(|(a, b)| (a - b).abs() as f64).sum::<f64>()
        / content.data.len() as f64;
    println!("tiled against whole: max pixel difference {diff:.2e}, mean {mean:.2e}, moved {changed:.3}");
    assert!(diff <= 1e-3, "tiled and whole optimisations differ by up to {diff} (mean {mean})");
}

#[test]
fn style_targets_in_tiles_are_the_whole_images() {
    let mut model = load(&common::test_model());
    let limits = Limits::default();
    let style = imageio::load_path(&common::example("fuchun.jpg"), &limits).unwrap().resize(301, 160);
    let m = model.manifest.clone();
    let whole = StyleTargets::from_features(&m, &model.features(&style.data, 160, 301).unwrap()).unwrap();
    let tiled = tiled::style::style_targets(&mut model, &style.data, (160, 301), 48).unwrap();
    assert_eq!(whole.tensors.keys().collect::<Vec<_>>(), tiled.tensors.keys().collect::<Vec<_>>());
    for (name, t) in &whole.tensors {
        let u = &tiled.tensors[name];
        let scale = t.data.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let err = t.data.iter().zip(&u.data).fold(0.0f32, |a, (x, y)| a.max((x - y).abs()));
        assert!(err <= 1e-5 * scale, "{name}: max error {err} of {scale}");
    }
}

#[test]
fn inputs_built_from_owned_activations_are_the_copied_ones() {
    use fuchun::transfer::inputs::objective_inputs_owned;
    let mut model = load(&common::test_model());
    let limits = Limits::default();
    let content = imageio::load_path(&common::example("tubingen.jpg"), &limits).unwrap().resize(120, 90);
    let style_img = imageio::load_path(&common::example("fuchun.jpg"), &limits).unwrap().resize(120, 64);
    let m = model.manifest.clone();
    let style = StyleTargets::from_features(&m, &model.features(&style_img.data, 64, 120).unwrap()).unwrap();
    let cf = model.features(&content.data, 90, 120).unwrap();
    let weights = Weights::defaults(&m);
    let copied = objective_inputs(&m, (120, 90), &cf, &style, &weights, &cf).unwrap();
    let owned = objective_inputs_owned(&m, (120, 90), cf, &style, &weights).unwrap();
    let mut names: Vec<&str> = copied.names().collect();
    let mut other: Vec<&str> = owned.names().collect();
    names.sort();
    other.sort();
    assert_eq!(names, other);
    for n in names {
        assert_eq!(copied.view(n), owned.view(n), "{n}");
    }
}

/// A tiled scale's first histogram targets are gathered into the targets' own buffers and matched there
/// (`tiled::features::match_start`, no second image-sized map): the same targets as the whole image's activations
/// matched by `histmatch::update_targets`, on every histogram layer, with odd-sized border blocks.
#[test]
fn first_histogram_targets_matched_in_place_are_the_whole_images() {
    use fuchun::transfer::histmatch;
    let mut model = load(&common::test_model());
    let (w, h) = (131, 97);
    let (x, style, mut in_place) = setup(&mut model, w, h, 5);
    let (_, _, mut whole) = setup(&mut model, w, h, 5);
    let m = model.manifest.clone();
    assert!(!m.hist_layers.is_empty(), "the test graph has no histogram layer: the test would see nothing");
    let xf = model.features(&x.data, h, w).unwrap();
    // the targets of another image than `x`'s first, so that matching to x must change them
    let other = model.features(&x.data.iter().map(|v| 1.0 - v).collect::<Vec<_>>(), h, w).unwrap();
    histmatch::update_targets(&m, &other, &style, &mut whole).unwrap();
    histmatch::update_targets(&m, &other, &style, &mut in_place).unwrap();
    let stale: Vec<Vec<f32>> =
        m.hist_layers.iter().map(|l| in_place.view(&format!("hist_target_{l}")).unwrap().1.to_vec()).collect();
    histmatch::update_targets(&m, &xf, &style, &mut whole).unwrap();
    tiled::features::match_start(&mut model, &x.data, (h, w), 32, &style, &mut in_place).unwrap();
    for (l, stale) in m.hist_layers.iter().zip(&stale) {
        let name = format!("hist_target_{l}");
        let (a, b) = (whole.view(&name).unwrap().1, in_place.view(&name).unwrap().1);
        let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let err = a.iter().zip(b).fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
        println!("{l}: largest difference {err:.2e} of {scale:.2e}");
        assert!(err <= 1e-5 * scale, "{l}: matched in place differs by {err} (scale {scale})");
        let moved = b.iter().zip(stale).fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(moved > 1e-2 * scale, "{l}: the targets hardly changed ({moved}): the test would see nothing");
    }
}

/// Under a memory budget the two hot sessions take turns (`Model::release_idle`): before tiled evaluations the whole
/// objective's session is dropped if it ran (its ONNX Runtime arena with it), before whole ones the tile graph's,
/// and each is created again when next needed, evaluating exactly as before. Without a budget nothing is dropped.
#[test]
fn the_hot_sessions_take_turns_under_a_budget() {
    let mut model = load(&common::test_model());
    let (w, h) = (96, 80);
    let (x, style, mut inputs) = setup(&mut model, w, h, 3);
    let mut g = vec![0.0f32; x.data.len()];
    let first = model.evaluate(&x.data, h, w, &mut inputs, &mut g, None).unwrap();
    assert!(model.release_idle(true), "the whole objective ran: its session is dropped before tiles");
    assert!(!model.release_idle(true), "nothing ran since: nothing to drop");
    let mut g2 = vec![0.0f32; x.data.len()];
    let again = model.evaluate(&x.data, h, w, &mut inputs, &mut g2, None).unwrap();
    assert_eq!((first.total, &g), (again.total, &g2), "the re-created session evaluates bit for bit as before");
    // the whole objective is not dropped before whole evaluations, nor the tile graph before tiled ones
    assert!(!model.release_idle(false));
    tiled::evaluate(&mut model, &x.data, (h, w), &mut inputs, &mut g, &style, false, 32).unwrap();
    assert!(model.release_idle(false), "tile_grad.onnx ran: dropped before whole evaluations");
    tiled::evaluate(&mut model, &x.data, (h, w), &mut inputs, &mut g2, &style, false, 32).unwrap();
    assert_eq!(g, g2, "the re-created tile graph evaluates bit for bit as before");
    // without a budget the sessions stay (nothing plans memory there, and re-creating costs time)
    let mut plain = Model::load(&common::test_model(), &RuntimeOptions::default()).unwrap();
    plain.evaluate(&x.data, h, w, &mut inputs, &mut g, None).unwrap();
    assert!(!plain.release_idle(true));
}

/// When the memory budget runs the last scale in tiles and no taper is given, the large-image schedule puts the
/// evaluations at the coarse scales (a third per scale, at least a twentieth of the coarsest's); a run whose last
/// scale fits whole keeps the same iterations at every scale, and an explicit taper is always followed.
#[test]
fn a_tiled_last_scale_gets_the_large_image_schedule() {
    use fuchun::transfer::{stylize, NoHooks, StylizeOptions};
    // 640x360 needs about 1077 MiB whole by the budget's model of this graph, 320x180 about 584: under 800 the
    // coarse scale runs whole and the last in tiles
    let opts = RuntimeOptions { memory_budget_mb: Some(800), ..Default::default() };
    let mut model = Model::load(&common::test_model(), &opts).unwrap();
    let limits = Limits::default();
    let content = imageio::load_path(&common::example("tubingen.jpg"), &limits).unwrap().resize(640, 360);
    let style = imageio::load_path(&common::example("fuchun.jpg"), &limits).unwrap();
    let mut opts = StylizeOptions::new(Weights::defaults(&model.manifest));
    opts.image_size = 640;
    opts.scales = vec![320, 640];
    opts.iterations = 6;
    opts.tol = 0.0;
    assert_eq!((opts.iterations_at(0, true), opts.iterations_at(1, true)), (6, 2));
    assert_eq!((opts.iterations_at(0, false), opts.iterations_at(1, false)), (6, 6));
    let out = stylize(&mut model, &content, std::slice::from_ref(&style), &opts, &mut NoHooks).unwrap();
    let plan: Vec<(Option<usize>, usize)> = out.scales.iter().map(|s| (s.tile, s.iterations)).collect();
    println!("large-image schedule: (tile, iterations) per scale {plan:?}");
    assert!(plan[0].0.is_none() && plan[1].0.is_some(), "the budget should run only the last scale in tiles: {plan:?}");
    assert!(plan[0].1 > 2 && plan[1].1 <= 2, "a third of the coarse scale's iterations at the last: {plan:?}");
    assert_eq!((out.image.width, out.image.height), (640, 360));
    // explicit taper 1: the last (tiled) scale gets as many as the first
    opts.taper = Some(1.0);
    opts.scales = vec![640];
    opts.iterations = 3;
    let out = stylize(&mut model, &content, std::slice::from_ref(&style), &opts, &mut NoHooks).unwrap();
    assert!(out.scales[0].tile.is_some() && out.scales[0].iterations == 3, "{:?}", out.scales[0].iterations);
    // large-image floor: from 600 iterations, the published 600/200/67/30
    opts.taper = None;
    opts.iterations = 600;
    assert_eq!((0..4).map(|i| opts.iterations_at(i, true)).collect::<Vec<_>>(), vec![600, 200, 67, 30]);
}

/// A tiled evaluation reports progress before each block (a kiosk frame's evaluation takes minutes on a CPU: the
/// daemon's watchdog beats on it) and stops within the evaluation when the run is cancelled (a shutdown).
#[test]
fn a_tiled_evaluation_beats_per_block_and_stops_mid_evaluation_when_cancelled() {
    use fuchun::transfer::schedule::Cancelled;
    use fuchun::transfer::{stylize, EvalRecord, Hooks};
    struct Count {
        evaluations: usize,
        blocks: usize,
        cancel_after_blocks: Option<usize>,
    }
    impl Hooks for Count {
        fn evaluation(&mut self, _rec: &EvalRecord) {
            self.evaluations += 1;
        }
        fn progress(&mut self) {
            self.blocks += 1;
        }
        fn cancelled(&self) -> bool {
            self.cancel_after_blocks.is_some_and(|n| self.blocks >= n)
        }
    }
    let (mut model, content, style, mut opts) = short_run(2);
    // 32-pixel tiles on the 219 x 173 canvas (the 203 x 157 image and its margin): 7 x 6 blocks, each visited by
    // both passes of every evaluation
    assert_eq!((content.width + 2 * MARGIN, content.height + 2 * MARGIN), (219, 173));
    opts.tile = Some(32);
    let mut count = Count { evaluations: 0, blocks: 0, cancel_after_blocks: None };
    stylize(&mut model, &content, std::slice::from_ref(&style), &opts, &mut count).unwrap();
    assert!(count.evaluations >= 2, "{} evaluations", count.evaluations);
    assert_eq!(
        count.blocks,
        2 * 42 * count.evaluations,
        "{} blocks in {} evaluations",
        count.blocks,
        count.evaluations
    );
    // cancelled after 10 blocks: the first evaluation stops there, not at its end
    let mut count = Count { evaluations: 0, blocks: 0, cancel_after_blocks: Some(10) };
    let e = stylize(&mut model, &content, std::slice::from_ref(&style), &opts, &mut count).unwrap_err();
    assert!(e.downcast_ref::<Cancelled>().is_some(), "{e:#}");
    assert_eq!((count.evaluations, count.blocks), (0, 10));
}
