//! Both front doors read the same knobs: every transfer, stream and runtime setting, given on the command line and
//! in TOML, gives the same options, and every one of them changes something.

mod common;

use clap::{Args, Command};
use fuchun::engine::Manifest;
use fuchun::imageio::Limits;
use fuchun::settings::transfer::{CAMERA, SINGLE_IMAGE};
use fuchun::settings::{Door, Runtime, Stream, Transfer};

fn cli<T: Args + clap::FromArgMatches>(args: &[String]) -> T {
    let cmd = T::augment_args(Command::new("fuchun"));
    let m = cmd.try_get_matches_from(std::iter::once("fuchun".to_string()).chain(args.iter().cloned()));
    T::from_arg_matches(&m.unwrap_or_else(|e| panic!("{args:?}: {e}"))).unwrap()
}

fn toml_of<T: serde::de::DeserializeOwned>(text: &str) -> T {
    toml::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// The knobs a family declares (clap ids = TOML keys), the hidden deprecated spellings left out.
fn knobs<T: Args>() -> Vec<String> {
    T::augment_args(Command::new("k"))
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .map(|a| a.get_id().to_string())
        .collect()
}

/// A sample value for each knob: (command-line value, TOML value), both meaning the same, none the default.
fn transfer_sample(knob: &str, m: &Manifest) -> Option<(String, String)> {
    let s = |c: &str, t: &str| Some((c.to_string(), t.to_string()));
    let init = common::example("tubingen.jpg").display().to_string();
    match knob {
        "image_size" => s("300", "300"),
        "scales" => s("100,200", "[100, 200]"),
        "iterations" => s("7", "7"),
        "taper" => s("1.5", "1.5"),
        "tol" => s("0.5", "0.5"),
        "tol_window" => s("3", "3"),
        "hist_every" => s("4", "4"),
        "content_weight" | "style_weight" | "shift_weight" | "hist_weight" | "tv_weight" | "temporal_weight" => {
            s("2.5", "2.5")
        }
        "term_weight" => s("tv=5", "[\"tv=5\"]"),
        "strength" => s("2", "2.0"),
        "content_layers" => Some((m.content_layers[0].clone(), format!("{:?}", m.content_layers[0]))),
        "style_layers" => Some((format!("{}:1", m.style_layers[0]), format!("\"{}:1\"", m.style_layers[0]))),
        "shift_layers" => Some((m.shift_layers[0].layer.clone(), format!("{:?}", m.shift_layers[0].layer))),
        "hist_layers" => Some((m.hist_layers[0].clone(), format!("{:?}", m.hist_layers[0]))),
        "layer_norm" | "refine" => s("false", "false"),
        "style_blend_weights" => s("1,2", "[1.0, 2.0]"),
        "style_scale" => s("0.5", "0.5"),
        "init" => Some((init.clone(), format!("{init:?}"))),
        "optimizer" => s("adam", "\"adam\""),
        "lbfgs_history" => s("4", "4"),
        "learning_rate" => s("0.1", "0.1"),
        "original_colors" | "luminance_only" => s("true", "true"),
        "palette" => s("content", "\"content\""),
        "palette_finish" => s("0.25", "0.25"),
        "seed" => s("9", "9"),
        _ => None,
    }
}

fn flag(knob: &str) -> String {
    format!("--{}", knob.replace('_', "-"))
}

#[test]
fn every_transfer_knob_means_the_same_at_both_doors() {
    let m = Manifest::load(&common::test_model()).unwrap();
    let limits = Limits::default();
    let summary = |t: &Transfer, profile| {
        let mut o = t.options(&m, profile, &limits, &Door::Cli).unwrap_or_else(|e| panic!("{t:?}: {e:#}"));
        // the learning rate only reaches the options with adam; the sample for it picks adam too
        o.temporal = None;
        format!("{o:?} temporal_weight={}", t.temporal_weight())
    };
    let knobs = knobs::<Transfer>();
    assert!(knobs.len() >= 30, "{knobs:?}");
    for profile in [&SINGLE_IMAGE, &CAMERA] {
        let default = summary(&Transfer::default(), profile);
        assert_eq!(default, summary(&cli::<Transfer>(&[]), profile), "clap's and serde's defaults are one");
        assert_eq!(default, summary(&toml_of::<Transfer>(""), profile));
        for k in &knobs {
            let (mut c, mut t) =
                transfer_sample(k, &m).unwrap_or_else(|| panic!("no sample for the knob {k}: add one"));
            if k == "palette" && profile.palette == fuchun::transfer::Palette::Content {
                (c, t) = ("style".into(), "\"style\"".into());
            }
            let mut args = vec![flag(k), c];
            let mut text = format!("{k} = {t}\n");
            if k == "learning_rate" {
                args.extend(["--optimizer".into(), "adam".into()]);
                text.push_str("optimizer = \"adam\"\n");
            }
            let (a, b) = (cli::<Transfer>(&args), toml_of::<Transfer>(&text));
            assert_eq!(a, b, "{k}: the doors read different settings");
            let got = summary(&a, profile);
            assert_eq!(got, summary(&b, profile), "{k}");
            assert_ne!(got, default, "{k} changes nothing");
        }
    }
}

#[test]
fn every_stream_knob_means_the_same_at_both_doors() {
    let samples = [
        ("temporal", "false", "false"),
        ("change_threshold", "0.1", "0.1"),
        ("blur_px", "3", "3"),
        ("dilate_px", "2", "2"),
        ("feather_px", "9", "9"),
        ("scene_change", "0.7", "0.7"),
        ("frame_evaluations", "12", "12"),
        ("motion_px", "5", "5"),
    ];
    let view = |s: &Stream| format!("{:?}", s.settings(200.0, &Door::Cli).unwrap());
    assert_eq!(view(&Stream::default()), view(&cli::<Stream>(&[])));
    same_at_both_doors(&samples, &[], &view);
}

/// Every knob of a family (but `skip`) given at both doors through its sample (knob, command line, TOML): the
/// same settings, whose `view` differs from the defaults'.
fn same_at_both_doors<T>(samples: &[(&str, &str, &str)], skip: &[&str], view: &dyn Fn(&T) -> String)
where
    T: Args + clap::FromArgMatches + serde::de::DeserializeOwned + Default + PartialEq + std::fmt::Debug,
{
    let default = view(&T::default());
    for k in knobs::<T>().into_iter().filter(|k| !skip.contains(&k.as_str())) {
        let (_, c, t) = samples.iter().find(|s| s.0 == k).unwrap_or_else(|| panic!("no sample for {k}: add one"));
        let a = cli::<T>(&[flag(&k), c.to_string()]);
        let b = toml_of::<T>(&format!("{k} = {t}"));
        assert_eq!(a, b, "{k}");
        assert_ne!(view(&a), default, "{k} changes nothing");
    }
}

#[test]
fn every_runtime_knob_means_the_same_at_both_doors() {
    let samples = [
        ("model", "m", "\"m\""),
        ("pooling", "avg", "\"avg\""),
        ("ort_library", "lib.so", "\"lib.so\""),
        ("provider", "cpu", "\"cpu\""),
        ("threads", "3", "3"),
        ("device_id", "1", "1"),
        ("tensorrt_fp16", "true", "true"),
        ("tensorrt_cache", "c", "\"c\""),
        ("tensorrt_timing_cache", "false", "false"),
        ("tensorrt_profile_min", "32x32", "\"32x32\""),
        ("tensorrt_profile_opt", "64x48", "\"64x48\""),
        ("tensorrt_profile_max", "640x640", "\"640x640\""),
        ("tensorrt_max_workspace_mb", "512", "512"),
        ("cudnn_conv_algo_search", "exhaustive", "\"exhaustive\""),
        ("cuda_arena_extend_strategy", "next_power_of_two", "\"next_power_of_two\""),
        ("gpu_mem_limit_mb", "100", "100"),
        ("memory_budget_mb", "2048", "2048"),
    ];
    let here = |p: &std::path::Path| p.to_path_buf();
    let view = |r: &Runtime| format!("{:?} {:?} {:?}", r.options(&Door::Cli, &here).unwrap(), r.model, r.pooling);
    // tensorrt_profile: the command line's MIN,OPT,MAX, tested below
    same_at_both_doors(&samples, &["tensorrt_profile"], &view);
    let three = cli::<Runtime>(&["--tensorrt-profile".into(), "32x32,64x48,640x640".into()]);
    let apart = toml_of::<Runtime>(
        "tensorrt_profile_min = \"32x32\"\ntensorrt_profile_opt = \"64x48\"\ntensorrt_profile_max = \"640x640\"",
    );
    assert_eq!(three.options(&Door::Cli, &here).unwrap().tensorrt, apart.options(&Door::Cli, &here).unwrap().tensorrt);
}

#[test]
fn the_old_spellings_are_still_read() {
    let t = |a: &[&str]| cli::<Transfer>(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let m = Manifest::load(&common::test_model()).unwrap();
    let o = |x: &Transfer| format!("{:?}", x.options(&m, &SINGLE_IMAGE, &Limits::default(), &Door::Cli).unwrap());
    assert_eq!(o(&t(&["--no-layer-norm"])), o(&t(&["--layer-norm", "false"])));
    assert_eq!(o(&t(&["--no-layer-norm"])), o(&toml_of::<Transfer>("layer_norm = false")));
    assert_eq!(toml_of::<Transfer>("blend_weights = [1.0, 3.0]"), t(&["--style-blend-weights", "1,3"]));
    let s = |a: &[&str]| cli::<Stream>(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let door = Door::Cli;
    let off = |x: &Stream| x.settings(1.0, &door).unwrap().enabled;
    assert!(!off(&s(&["--no-temporal"])) && !off(&toml_of::<Stream>("enabled = false")) && off(&s(&[])));
    assert_eq!(toml_of::<Stream>("max_evaluations = 9"), s(&["--frame-evaluations", "9"]));
    let r = cli::<Runtime>(&["--tensorrt-no-timing-cache".into()]);
    assert!(!r.options(&Door::Cli, &|p| p.to_path_buf()).unwrap().tensorrt.timing_cache);
    assert_eq!(toml_of::<Runtime>("dir = \"m\"").model, Some("m".into()));
}

#[test]
fn a_bad_value_is_refused_at_both_doors_naming_the_knob_as_written() {
    let m = Manifest::load(&common::test_model()).unwrap();
    let cases = [
        ("taper", "9"),
        ("tol", "-1"),
        ("strength", "0"),
        ("style_weight", "-1"),
        ("style_scale", "0"),
        ("learning_rate", "0"),
        ("lbfgs_history", "0"),
        ("iterations", "0"),
    ];
    for (k, v) in cases {
        let a = cli::<Transfer>(&[format!("{}={v}", flag(k))]);
        let b = toml_of::<Transfer>(&format!("{k} = {v}"));
        let err = |x: &Transfer, door: &Door| {
            x.options(&m, &SINGLE_IMAGE, &Limits::default(), door).map(|_| ()).unwrap_err().to_string()
        };
        let e = err(&a, &Door::Cli);
        assert!(e.contains(&flag(k)), "{k}: {e}");
        let e = err(&b, &Door::Toml("styles.ink".into()));
        assert!(e.contains(&format!("styles.ink.{k}")), "{k}: {e}");
    }
    let e = cli::<Transfer>(&["--content-layers".into(), "relu9_9".into()])
        .options(&m, &SINGLE_IMAGE, &Limits::default(), &Door::Cli)
        .unwrap_err();
    assert!(format!("{e:#}").contains("--content-layers") && format!("{e:#}").contains("relu9_9"), "{e:#}");
    let e = cli::<Transfer>(&["--term-weight".into(), "colour=1".into()])
        .options(&m, &SINGLE_IMAGE, &Limits::default(), &Door::Cli)
        .unwrap_err();
    assert!(format!("{e:#}").contains("--term-weight") && format!("{e:#}").contains("not a term"), "{e:#}");
    let stream = toml_of::<Stream>("motion_px = 65");
    let e = stream.validate(&Door::Toml("daemon.temporal".into())).unwrap_err().to_string();
    assert!(e.contains("daemon.temporal.motion_px"), "{e}");
}
