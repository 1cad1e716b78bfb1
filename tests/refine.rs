//! The finest scale's refinement (`refine/`: the model's layers down to relu3_1): the same objective as the whole
//! model's with the deeper layers off, run at the last scale of a multi-scale run or a run that starts from an image.

mod common;

use fuchun::engine::{Model, RuntimeOptions};
use fuchun::imageio::{self, Limits, Planar};
use fuchun::transfer::histmatch;
use fuchun::transfer::inputs::objective_inputs;
use fuchun::transfer::{stylize, Init, NoHooks, StyleTargets, StylizeOptions, Weights};

fn image(name: &str, longest: usize) -> Planar {
    imageio::load_path(&common::example(name), &Limits::default()).unwrap().fit_longest(longest)
}

#[test]
fn the_refinement_is_the_objective_without_its_deeper_layers() {
    let mut model = Model::load(&common::test_model(), &RuntimeOptions::default()).unwrap();
    let main = model.manifest.clone();
    let refine = model.refine.as_ref().expect("the test model is exported with its refinement").manifest.clone();
    assert!(refine.style_layers.len() < main.style_layers.len(), "the refinement leaves layers out");
    let (content, style) = (image("tubingen.jpg", 72), image("fuchun.jpg", 64));
    let (w, h) = (content.width, content.height);
    let sf = model.features(&style.data, style.height, style.width).unwrap();
    let targets = StyleTargets::from_features(&main, &sf).unwrap();
    let cf = model.features(&content.data, h, w).unwrap();
    let full = Weights::defaults(&main);
    let restricted = full.restricted(&main, &refine).unwrap();
    // the whole model with every layer the refinement lacks at weight 0 and the others at the refinement's weights
    let mut off = full.clone();
    for (term, ws) in off.layers.iter_mut() {
        let (names, kept) = (main.group_layers(term).unwrap(), refine.group_layers(term).unwrap_or(&[]));
        for (i, l) in names.iter().enumerate() {
            ws[i] = kept.iter().position(|k| k == l).map_or(0.0, |j| restricted.layers(term)[j]);
        }
    }
    let mut x = content.data.clone();
    for (i, v) in x.iter_mut().enumerate() {
        *v = (*v + 0.2 * ((i * 7919 % 97) as f32 / 97.0 - 0.5)).clamp(0.0, 1.0);
    }
    let mut inputs_main = objective_inputs(&main, (w, h), &cf, &targets, &off, &cf).unwrap();
    let mut g_main = vec![0.0f32; x.len()];
    let (l_main, _) = histmatch::evaluate(&mut model, &x, h, w, &mut inputs_main, &mut g_main, &targets, true).unwrap();
    let r = model.refine.as_deref_mut().unwrap();
    let mut inputs_refine = objective_inputs(&refine, (w, h), &cf, &targets, &restricted, &cf).unwrap();
    let mut g_refine = vec![0.0f32; x.len()];
    let (l_refine, _) = histmatch::evaluate(r, &x, h, w, &mut inputs_refine, &mut g_refine, &targets, true).unwrap();
    for t in &main.terms {
        let (a, b) = (l_main.term(t), l_refine.term(t));
        assert!((a - b).abs() <= 1e-5 * a.abs().max(1e-12), "{t}: whole model {a}, refinement {b}");
    }
    assert!(l_main.total > 0.0 && (l_main.total - l_refine.total).abs() <= 1e-5 * l_main.total);
    let dot: f64 = g_main.iter().zip(&g_refine).map(|(a, b)| *a as f64 * *b as f64).sum();
    let norm = |g: &[f32]| g.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
    let cosine = dot / (norm(&g_main) * norm(&g_refine));
    let largest = g_main.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let worst = g_main.iter().zip(&g_refine).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(cosine >= 0.99999, "gradient cosine {cosine}");
    assert!(worst <= 1e-4 * largest, "largest gradient difference {worst} of {largest}");
}

#[test]
fn the_finest_scale_of_a_run_refines() {
    let mut model = Model::load(&common::test_model(), &RuntimeOptions::default()).unwrap();
    let (content, style) = (image("tubingen.jpg", 96), image("fuchun.jpg", 96));
    let deep = model.manifest.style_layers.len();
    let shallow = model.refine.as_ref().unwrap().manifest.style_layers.len();
    let mut opts = StylizeOptions::new(Weights::defaults(&model.manifest));
    (opts.image_size, opts.scales, opts.iterations) = (96, vec![48, 96], 6);
    let run = |model: &mut Model, opts: &StylizeOptions| {
        stylize(model, &content, std::slice::from_ref(&style), opts, &mut NoHooks).unwrap()
    };
    // two scales: the coarse one runs the whole objective, the finest the refinement (its losses name its layers)
    let two = run(&mut model, &opts);
    let refined: Vec<bool> = two.scales.iter().map(|s| s.refined).collect();
    assert_eq!(refined, [false, true]);
    assert_eq!(two.scales[0].last.layer_losses("style").len(), deep);
    assert_eq!(two.scales[1].last.layer_losses("style").len(), shallow);
    // switched off: the whole objective at every scale, and another picture
    let whole = run(&mut model, &StylizeOptions { refine: false, ..opts.clone() });
    assert!(whole.scales.iter().all(|s| !s.refined));
    assert_eq!(whole.scales[1].last.layer_losses("style").len(), deep);
    assert_ne!(whole.image.data, two.image.data);
    // one scale from the content: nothing laid out yet, the whole objective
    let one = StylizeOptions { scales: vec![96], ..opts.clone() };
    assert!(!run(&mut model, &one).scales[0].refined);
    // one scale from an image (a stream's frame from the previous result): refined, as its cold run's last scale
    let warm = StylizeOptions { init: Init::Image(two.image.clone()), ..one.clone() };
    assert!(run(&mut model, &warm).scales[0].refined);
    // layers chosen that the refinement lacks: the whole objective, not a refinement without a style term
    let mut deep_only = opts.clone();
    let last = model.manifest.style_layers.last().unwrap().clone();
    deep_only.weights.select_layers(&model.manifest, "style", &last).unwrap();
    assert!(run(&mut model, &deep_only).scales.iter().all(|s| !s.refined));
}

#[test]
fn a_refinement_from_another_export_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("model");
    common::copy_dir(&common::test_model(), &copy);
    let path = copy.join("refine/manifest.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{text} ")).unwrap();
    let err = format!("{:#}", Model::load(&copy, &RuntimeOptions::default()).err().expect("refused"));
    assert!(err.contains("does not match") && err.contains("make models"), "{err}");
    std::fs::remove_dir_all(copy.join("refine")).unwrap();
    let err = format!("{:#}", Model::load(&copy, &RuntimeOptions::default()).err().expect("refused"));
    assert!(err.contains("is missing") && err.contains("make models"), "{err}");
}
