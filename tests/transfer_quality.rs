//! The transfer loop's contract (issue 11): bounded optimisation (the image stays in [0, 1] and the loss reported
//! is that of the image returned), any aspect ratio, coarse-to-fine continuity, the style scale, the layer
//! selection. Each test fails when the behaviour it names is wrong.

mod common;

use std::cell::RefCell;

use fuchun::engine::{Model, RuntimeOptions};
use fuchun::imageio::{self, Limits, Planar};
use fuchun::transfer::schedule::fit_scales;
use fuchun::transfer::{
    stylize, EvalRecord, Hooks, Init, NoHooks, Optimizer, StyleImages, StyleSource, StylizeOptions, Weights,
};

fn images() -> (Planar, Planar) {
    let limits = Limits::default();
    (
        imageio::load_path(&common::example("tubingen.jpg"), &limits).unwrap(),
        imageio::load_path(&common::example("starry_night.jpg"), &limits).unwrap(),
    )
}

/// Style-only from noise with a strong style weight pushes pixels hard: unconstrained, L-BFGS leaves [0, 1] within
/// a few iterations. Bounded, every evaluated image and the result stay inside, with no clipping afterwards, and
/// the loss reported is the loss of the image returned (evaluated afresh with its own histogram targets).
#[test]
fn the_image_stays_in_range_and_the_reported_loss_is_that_of_the_result() {
    let mut model = Model::load(&common::test_model(), &RuntimeOptions::default()).unwrap();
    let (content, style) = images();
    for optimizer in [Optimizer::Lbfgs { history: 10 }, Optimizer::Adam { learning_rate: 0.05 }] {
        let mut opts = StylizeOptions::new(Weights::defaults(&model.manifest));
        opts.weights.only(&[("content", 0.05), ("style", 10.0), ("shift", 5.0), ("hist", 5.0)]).unwrap();
        opts.image_size = 64;
        opts.scales = vec![48, 64];
        opts.iterations = 25;
        opts.tol = 0.0;
        opts.init = Init::Noise;
        opts.optimizer = optimizer;
        opts.exact_losses = true;
        let out = stylize(&mut model, &content, std::slice::from_ref(&style), &opts, &mut NoHooks).unwrap();
        let (lo, hi) = out.image.data.iter().fold((f32::MAX, f32::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
        assert!(lo >= 0.0 && hi <= 1.0, "{optimizer:?}: values in [{lo}, {hi}]");
        assert!(lo == 0.0 || hi == 1.0, "{optimizer:?}: no value at a bound, the test does not exercise them");
        // the reported loss is the optimiser's evaluation of exactly the returned image; the fresh one differs only
        // in the deep histogram layer (relu4_1), which the optimiser matches from the evaluation before (a step
        // behind, see hist_every): measured 0.5-1.5 % (L-BFGS) and 1-2 % (Adam) here
        let tol = 0.03;
        for s in &out.scales {
            let (reported, exact) = (s.last.total, s.exact.as_ref().unwrap().total);
            assert!(
                (reported - exact).abs() <= tol * exact.abs(),
                "{optimizer:?}: reported {reported} vs a fresh evaluation {exact}"
            );
            assert!(reported < s.first.total, "{optimizer:?}: the loss did not fall");
        }
    }
}

/// Records the evaluations.
#[derive(Default)]
struct Rec(RefCell<Vec<EvalRecord>>);
impl Hooks for &Rec {
    fn evaluation(&mut self, r: &EvalRecord) {
        self.0.borrow_mut().push(r.clone());
    }
}

/// A 1024×120 or 120×1024 content at --image-size 512 (final 512×60, valid): the 128-px scale (15 px short side,
/// under the model's 24) is skipped instead of failing, and the result has the full size.
#[test]
fn wide_and_tall_contents_skip_the_scales_that_are_too_small() {
    let mut model = Model::load(&common::test_model(), &RuntimeOptions::default()).unwrap();
    let (content, style) = images();
    let min = model.manifest.min_size;
    assert_eq!(min, 24);
    for (w, h) in [(1024, 120), (120, 1024)] {
        let c = content.resize(w, h);
        assert_eq!(fit_scales(&[128, 256, 512], w, h, min).unwrap(), vec![256, 512]);
        let mut opts = StylizeOptions::new(Weights::defaults(&model.manifest));
        opts.image_size = 512;
        opts.iterations = 2;
        let out = stylize(&mut model, &c, std::slice::from_ref(&style), &opts, &mut NoHooks).unwrap();
        let sizes: Vec<(usize, usize)> = out.scales.iter().map(|s| (s.width, s.height)).collect();
        let want = if w > h { vec![(256, 30), (512, 60)] } else { vec![(30, 256), (60, 512)] };
        assert_eq!(sizes, want);
        assert_eq!((out.image.width, out.image.height), want[1]);
    }
    // too small even at the final size: the error names the side
    let e = fit_scales(&[128, 256], 1024, 60, min).unwrap_err().to_string();
    assert!(e.contains("its height would be 15 px"), "{e}");
}

/// Coarse-to-fine: the second scale starts from the first scale's result, not from the content: its first
/// evaluation has a content loss > 0 (the content itself has 0) and a style loss well below the first scale's start.
#[test]
fn coarse_to_fine_starts_from_the_previous_scale() {
    let mut model = Model::load(&common::test_model(), &RuntimeOptions::default()).unwrap();
    let (content, style) = images();
    let mut opts = StylizeOptions::new(Weights::defaults(&model.manifest));
    opts.image_size = 64;
    opts.scales = vec![48, 64];
    opts.iterations = 30;
    opts.tol = 0.0;
    // from the photo's own colours, so that the first scale's starting style loss is the photo's
    opts.palette = fuchun::transfer::Palette::Content;
    let rec = Rec::default();
    let out = stylize(&mut model, &content, std::slice::from_ref(&style), &opts, &mut &rec).unwrap();
    let (s0, s1) = (&out.scales[0], &out.scales[1]);
    // the content itself has a content loss of 0 (up to rounding)
    assert!(s0.first.term("content") < 1e-9, "the first scale starts at the content");
    assert!(s1.first.term("content") > 1e-4, "the second scale restarted from the content");
    assert!(
        s1.first.term("style") < 0.5 * s0.first.term("style"),
        "style at the start of scale 2 ({}) vs start of scale 1 ({})",
        s1.first.term("style"),
        s0.first.term("style")
    );
    let first_of_1 = rec.0.borrow().iter().find(|r| r.scale == 1).unwrap().losses.clone();
    assert_eq!(first_of_1.total, s1.first.total);
}

/// `--style-scale`: the style targets at a scale of longest side L come from the style image at
/// style_scale × L — the same targets as the style image resized there by hand.
#[test]
fn style_scale_takes_the_style_at_that_factor_of_the_scale() {
    let mut model = Model::load(&common::test_model(), &RuntimeOptions::default()).unwrap();
    let (_, style) = images();
    let targets = |model: &mut Model, scale: f32, longest: usize| {
        StyleImages { images: std::slice::from_ref(&style), blend: vec![], style_scale: scale }
            .targets(model, longest)
            .unwrap()
    };
    let by_hand = |model: &mut Model, longest: usize| {
        let s = style.fit_longest(longest);
        let f = model.features(&s.data, s.height, s.width).unwrap();
        fuchun::transfer::StyleTargets::from_features(&model.manifest, &f).unwrap()
    };
    let half = targets(&mut model, 0.5, 128);
    assert_eq!(half, by_hand(&mut model, 64));
    assert_eq!(targets(&mut model, 1.5, 64), by_hand(&mut model, 96));
    assert_ne!(half, by_hand(&mut model, 128), "the scale factor made no difference");
}

/// `--style-layers relu1_1,relu2_1:0.5` style: named layers get the weights (normalised to sum 1), others 0;
/// unknown layers and bad weights are errors naming the choices.
#[test]
fn layer_selection_and_weights() {
    let model = Model::load(&common::test_model(), &RuntimeOptions::default()).unwrap();
    let m = &model.manifest;
    let mut w = Weights::defaults(m);
    w.select_layers(m, "style", "relu1_1, relu3_1:3").unwrap();
    assert_eq!(w.layers("style"), [0.25, 0.0, 0.75, 0.0, 0.0]);
    let e = w.select_layers(m, "style", "relu9_9").unwrap_err().to_string();
    assert!(e.contains("relu9_9") && e.contains("relu1_1, relu2_1"), "{e}");
    assert!(w.select_layers(m, "content", "relu4_2:-1").is_err());
    assert!(w.select_layers(m, "hist", "relu1_1:0").unwrap_err().to_string().contains("no hist layer"));
    assert!(w.select_layers(m, "tv", "relu1_1").unwrap_err().to_string().contains("no tv term with layers"));
    // the strength knob scales the style side only (the manifest's style_side_terms)
    let base = Weights::defaults(m);
    let mut s = Weights::defaults(m);
    s.set_strength(2.0).unwrap();
    for (t, w) in &s.terms {
        let k = if ["style", "shift", "hist"].contains(&t.as_str()) { 2.0 } else { 1.0 };
        assert_eq!(*w, k * base.term(t), "{t}");
    }
    assert!(s.set_strength(0.0).is_err() && s.set_strength(f32::NAN).is_err());
    // the CLI takes them
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.png");
    let o = common::fuchun(&[
        "stylize",
        "--model",
        common::test_model().to_str().unwrap(),
        "--content",
        common::example("tubingen.jpg").to_str().unwrap(),
        "--style",
        common::example("fuchun.jpg").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--image-size",
        "48",
        "--iterations",
        "2",
        "--style-layers",
        "relu1_1,relu9_9",
        "--provider",
        "cpu",
    ]);
    assert!(!o.status.success());
    assert!(common::stderr(&o).contains("--style-layers"), "{}", common::stderr(&o));
}

/// Layer balance on the real weights, for the bundled pairs at 128 px, at the start of a run (the content as the
/// image): with the per-layer normalisation no layer dominates its term — each style layer's share of the style
/// term lies in [3 %, 60 %], each long-range and histogram layer's in [10 %, 90 %] — where the raw activations had
/// relu1_1 + relu2_1 at ~97 % of the style term.
#[test]
fn every_layer_counts_at_the_start_with_the_normalisation() {
    let mut model = Model::load(&common::real_model(), &RuntimeOptions::default()).unwrap();
    let limits = Limits::default();
    let load = |n: &str| imageio::load_path(&common::example(n), &limits).unwrap();
    for (c, s) in
        [("tubingen.jpg", "fuchun.jpg"), ("tubingen.jpg", "starry_night.jpg"), ("astronaut.jpg", "the_scream.jpg")]
    {
        let (content, style) = (load(c), load(s));
        for normalize in [false, true] {
            let w = if normalize { Weights::defaults(&model.manifest) } else { Weights::raw_defaults(&model.manifest) };
            let mut opts = StylizeOptions::new(w);
            opts.image_size = 128;
            opts.iterations = 1;
            opts.tol = 0.0;
            // the balance at the photo itself (the premise of the table in docs/quality.md)
            opts.palette = fuchun::transfer::Palette::Content;
            let out = stylize(&mut model, &content, std::slice::from_ref(&style), &opts, &mut NoHooks).unwrap();
            let start = out.scales[0].first.clone();
            let shares = |g: &str| start.layer_shares(g);
            let fmt = |v: &[f64]| v.iter().map(|x| format!("{:.1}%", 100.0 * x)).collect::<Vec<_>>().join(" ");
            eprintln!(
                "{c} + {s}, {}: style [{}]  shift [{}]  hist [{}]",
                if normalize { "normalised" } else { "raw" },
                fmt(&shares("style")),
                fmt(&shares("shift")),
                fmt(&shares("hist"))
            );
            if normalize {
                assert!(
                    shares("style").iter().all(|x| (0.03..=0.60).contains(x)),
                    "{c}+{s} style {:?}",
                    shares("style")
                );
                for g in ["shift", "hist"] {
                    assert!(shares(g).iter().all(|x| (0.10..=0.90).contains(x)), "{c}+{s} {g} {:?}", shares(g));
                }
            } else {
                let st = shares("style");
                assert!(st[0] + st[1] > 0.8, "raw: the shallow layers dominate ({st:?}); the test's premise changed");
            }
        }
    }
}

/// `--luminance-only`: the transfer runs on luminance (the style's matched to the content's statistics) and the
/// result has the content's chroma, while its luminance is the stylised one.
#[test]
fn luminance_only_keeps_the_content_chroma_and_changes_the_luminance() {
    use fuchun::transfer::color::rgb_to_ycbcr;
    let mut model = Model::load(&common::test_model(), &RuntimeOptions::default()).unwrap();
    let (content, style) = images();
    let mut opts = StylizeOptions::new(Weights::defaults(&model.manifest));
    opts.image_size = 64;
    opts.iterations = 20;
    opts.tol = 0.0;
    opts.luminance_only = true;
    let out = stylize(&mut model, &content, std::slice::from_ref(&style), &opts, &mut NoHooks).unwrap();
    let c = content.resize(out.image.width, out.image.height);
    let n = c.width * c.height;
    let ycc = |p: &Planar, i: usize| rgb_to_ycbcr(p.data[i], p.data[n + i], p.data[2 * n + i]);
    let (mut chroma, mut luma) = (0.0f32, 0.0f32);
    for i in 0..n {
        let ((yo, cbo, cro), (yc, cbc, crc)) = (ycc(&out.image, i), ycc(&c, i));
        chroma += (cbo - cbc).abs() + (cro - crc).abs();
        luma += (yo - yc).abs();
    }
    let (chroma, luma) = (chroma / n as f32, luma / n as f32);
    assert!(chroma < 0.02, "chroma moved by {chroma}");
    assert!(luma > 0.01, "luminance unchanged ({luma}): no transfer happened");
}

/// `--taper`: each finer scale gets the taper times the previous scale's iterations (the coarse scales do the
/// work, the fine ones refine).
#[test]
fn the_taper_gives_finer_scales_fewer_iterations() {
    let mut model = Model::load(&common::test_model(), &RuntimeOptions::default()).unwrap();
    let (content, style) = images();
    let mut opts = StylizeOptions::new(Weights::defaults(&model.manifest));
    opts.image_size = 64;
    opts.scales = vec![32, 48, 64];
    opts.iterations = 16;
    opts.taper = Some(0.5);
    opts.tol = 0.0;
    // an explicit taper is the schedule whether the last scale runs in tiles or not
    for tiled in [false, true] {
        assert_eq!((0..3).map(|i| opts.iterations_at(i, tiled)).collect::<Vec<_>>(), vec![16, 8, 4]);
    }
    let out = stylize(&mut model, &content, std::slice::from_ref(&style), &opts, &mut NoHooks).unwrap();
    let its: Vec<usize> = out.scales.iter().map(|s| s.iterations).collect();
    assert!(its[0] > 8 && its[0] <= 16 && its[1] <= 8 && its[2] <= 4 && its[2] >= 1, "{its:?}");
}

/// `--palette style` (the default): the content is carried into the style's colours before the transfer — the
/// content term's target and the starting image — so the result starts in the painting's palette; with
/// `--palette content` it starts in the photo's. Either way the first evaluation has no content loss.
#[test]
fn the_palette_carries_the_content_into_the_style_colours() {
    use fuchun::transfer::Palette;
    let mut model = Model::load(&common::test_model(), &RuntimeOptions::default()).unwrap();
    let (content, style) = images();
    let mean = |p: &Planar| -> [f64; 3] {
        let n = p.width * p.height;
        std::array::from_fn(|c| p.data[c * n..(c + 1) * n].iter().map(|v| *v as f64).sum::<f64>() / n as f64)
    };
    let dist = |a: [f64; 3], b: [f64; 3]| (0..3).map(|c| (a[c] - b[c]).powi(2)).sum::<f64>().sqrt();
    let target = mean(&style);
    let mut got = Vec::new();
    for palette in [Palette::Style, Palette::Content] {
        let mut opts = StylizeOptions::new(Weights::defaults(&model.manifest));
        opts.image_size = 64;
        opts.scales = vec![64];
        opts.iterations = 1;
        opts.palette = palette;
        let out = stylize(&mut model, &content, std::slice::from_ref(&style), &opts, &mut NoHooks).unwrap();
        assert!(out.scales[0].first.term("content") < 1e-9, "{palette:?}: the start is the content term's target");
        got.push(dist(mean(&out.image), target));
    }
    let photo = dist(mean(&content), target);
    assert!(
        got[0] < 0.02 && got[0] < 0.2 * photo,
        "style palette: {} from the style's mean colour (photo {photo})",
        got[0]
    );
    assert!(got[1] > 0.5 * photo, "content palette: {} from the style's mean colour (photo {photo})", got[1]);
}
