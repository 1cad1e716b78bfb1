//! Camera streams (issue 12): synthetic clips made here from the bundled images — a still background, an object
//! crossing it, per-frame sensor noise and JPEG re-encoding, a new scene half-way — stylised frame by frame with
//! `fuchun stylize --content 'dir/*.jpg'` and through the library, with and without temporal consistency.

mod common;

use std::path::Path;

use fuchun::engine::{Model, RuntimeOptions};
use fuchun::imageio::{self, Limits, Planar};
use fuchun::lab::clip::Clip;
use fuchun::lab::stream_bench::{flicker, frames, run_pass};
use fuchun::settings::transfer::DEFAULT_PALETTE_FINISH;
use fuchun::transfer::temporal::{Start, StreamSettings, DEFAULT_TEMPORAL_WEIGHT};
use fuchun::transfer::{StylizeOptions, Weights};

fn clip(longest: usize, frames: usize, object: usize) -> Clip {
    common::example_clip(longest, frames, object)
}

fn write_frames(clip: &Clip, dir: &Path) {
    for (i, f) in clip.frames.iter().enumerate() {
        std::fs::write(dir.join(format!("frame_{i:03}.jpg")), f).unwrap();
    }
}

fn read_log(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("frames.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn the_clip_has_noise_jpeg_a_moving_object_and_a_new_scene() {
    let c = clip(96, 20, 24);
    let f = frames(&c).unwrap();
    assert_eq!(f.len(), 20);
    // noise and re-encoding: two frames are never identical, even where the scene is still
    let still = c.still_between(3).unwrap();
    let d = fuchun::transfer::temporal::masked_difference(&f[3], &f[2], &still);
    assert!(d > 0.002 && d < 0.03, "still pixels differ by {d}");
    // the object moves: its masks differ from frame to frame and cover a few percent of the frame
    assert_ne!(c.object[3], c.object[4]);
    let fr = c.changed_fraction(4).unwrap();
    assert!(fr > 0.03 && fr < 0.25, "{fr}");
    // the new scene
    assert!(c.still_between(10).is_none());
    let all = vec![true; 96 * 72];
    assert!(fuchun::transfer::temporal::masked_difference(&f[10], &f[9], &all) > 0.1);
}

fn run_sequence(extra: &[&str], content: &Path, out: &Path) -> Vec<serde_json::Value> {
    run_frames(extra, content, out, 20)
}

fn run_frames(extra: &[&str], content: &Path, out: &Path, count: usize) -> Vec<serde_json::Value> {
    let model = common::test_model();
    let pattern = content.join("frame_*.jpg");
    let mut args = vec![
        "stylize",
        "--model",
        model.to_str().unwrap(),
        "--content",
        pattern.to_str().unwrap(),
        "--style",
        common::example("fuchun.jpg").to_str().unwrap().to_owned().leak(),
        "-o",
        out.to_str().unwrap(),
        "--image-size",
        "96",
        "--iterations",
        "60",
        "--provider",
        "cpu",
        // the photo's palette: on the random-weight graph frames carried into the painting's colours (the default)
        // do not settle within a frame's budget (a_moving_object_leaves_no_trail), so the evaluation ratios below
        // would measure the graph, not the method; the real weights hold the default palette's ratios
        "--palette",
        "content",
    ];
    args.extend_from_slice(extra);
    let o = common::fuchun(&args);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains(&format!("wrote {count} frames")), "{stdout}");
    read_log(out)
}

#[test]
fn a_panning_camera_starts_each_frame_from_the_previous_result_moved_along() {
    // 12 frames of 96x72, the view moving 4 px right and 1 px down per frame, with noise and JPEG re-encoding
    let scene = imageio::load_path(&common::example("tubingen.jpg"), &Limits::default()).unwrap().resize(160, 120);
    let frames = fuchun::lab::clip::panning(&scene, 96, 72, 12, (4, 1), &fuchun::lab::clip::ClipSpec::default());
    let dir = tempfile::tempdir().unwrap();
    for (i, f) in frames.iter().enumerate() {
        std::fs::write(dir.path().join(format!("frame_{i:03}.jpg")), f).unwrap();
    }
    let (on, off) = (dir.path().join("on"), dir.path().join("off"));
    let a = run_frames(&[], dir.path(), &on, 12);
    let b = run_frames(&["--no-temporal"], dir.path(), &off, 12);
    assert_eq!(a[0]["start"], "cold");
    for (i, r) in a.iter().enumerate().skip(1) {
        assert_eq!(r["start"], "partial", "frame {i}: {r}");
        assert_eq!(r["pan"], serde_json::json!([4, 1]), "frame {i}: {r}");
        // what came into view (a 4 px column and a 1 px row, grown by the dilation) changed; the rest did not
        let f = r["changed_fraction"].as_f64().unwrap();
        assert!(f > 0.04 && f < 0.4, "frame {i}: changed {f}");
        // what came into view is still being painted (young) for a few frames, the rest is settled
        let y = r["young"].as_f64().unwrap();
        assert!(y > 0.0 && y < 0.5, "frame {i}: young {y}");
    }
    assert!(a[0]["young"].is_null());
    assert!(b.iter().all(|r| r["start"] == "cold" && r["pan"].is_null()));
    let mean = |v: &[serde_json::Value], from: usize| -> f64 {
        v[from..].iter().map(|r| r["evaluations"].as_f64().unwrap()).sum::<f64>() / (v.len() - from) as f64
    };
    let (panned, cold) = (mean(&a, 1), mean(&b, 0));
    assert!(panned * 2.0 <= cold, "panned frames took {panned} evaluations, cold ones {cold}");
    // flicker: consecutive results compared where they show the same place (frame i at (x, y), frame i - 1 at
    // (x + 4, y + 1))
    let load =
        |d: &Path, i: usize| imageio::load_path(&d.join(format!("frame_{i:03}.png")), &Limits::default()).unwrap();
    let flicker = |d: &Path| -> f64 {
        let (w, h) = (96usize, 72usize);
        let mut sum = 0.0;
        for i in 1..12 {
            let (cur, prev) = (load(d, i), load(d, i - 1));
            let (mut s, mut n) = (0.0f64, 0usize);
            for c in 0..3 {
                for y in 0..h - 1 {
                    for x in 0..w - 4 {
                        s +=
                            (cur.data[c * w * h + y * w + x] - prev.data[c * w * h + (y + 1) * w + x + 4]).abs() as f64;
                        n += 1;
                    }
                }
            }
            sum += s / n as f64;
        }
        sum / 11.0
    };
    let (fa, fb) = (flicker(&on), flicker(&off));
    assert!(fa * 3.0 <= fb, "flicker following the pan {fa}, cold runs {fb}");
}

#[test]
fn frame_sequence_command_starts_partly_changed_frames_from_the_previous_result_and_holds_the_background() {
    let c = clip(96, 20, 24);
    let dir = tempfile::tempdir().unwrap();
    write_frames(&c, dir.path());
    // a file that is not a frame of the pattern is ignored
    std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
    let (on, off) = (dir.path().join("on"), dir.path().join("off"));
    let a = run_sequence(&[], dir.path(), &on);
    let b = run_sequence(&["--no-temporal"], dir.path(), &off);
    assert_eq!(a.len(), 20);
    let start = |r: &serde_json::Value| r["start"].as_str().unwrap().to_string();
    assert_eq!(start(&a[0]), "cold");
    assert!(a[0]["changed_fraction"].is_null());
    assert_eq!(start(&a[10]), "cold", "the new scene is a cold run");
    assert!(a[10]["changed_fraction"].as_f64().unwrap() > 0.5);
    for (i, r) in a.iter().enumerate().filter(|(i, _)| *i != 0 && *i != 10) {
        assert_eq!(start(r), "partial", "frame {i}: {r}");
        let f = r["changed_fraction"].as_f64().unwrap();
        assert!(f > c.changed_fraction(i).unwrap() * 0.9 && f < 0.6, "frame {i}: changed {f}");
    }
    assert!(b.iter().all(|r| start(r) == "cold"));
    let evals = |v: &[serde_json::Value], idx: &mut dyn Iterator<Item = usize>| -> f64 {
        let e: Vec<f64> = idx.map(|i| v[i]["evaluations"].as_f64().unwrap()).collect();
        e.iter().sum::<f64>() / e.len() as f64
    };
    let partial = evals(&a, &mut (1..20).filter(|i| *i != 10));
    let cold = evals(&b, &mut (0..20));
    assert!(partial * 2.0 <= cold, "partly changed frames took {partial} evaluations, cold ones {cold}");
    // flicker over the still pixels: the outputs as written
    let load = |d: &Path| -> Vec<Planar> {
        (0..20).map(|i| imageio::load_path(&d.join(format!("frame_{i:03}.png")), &Limits::default()).unwrap()).collect()
    };
    let (fa, fb) = (flicker(&c, &load(&on)), flicker(&c, &load(&off)));
    assert!(fa * 3.0 <= fb, "flicker with temporal consistency {fa}, cold runs {fb}");
}

#[test]
fn frame_sequence_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::test_model();
    let style = common::example("fuchun.jpg");
    let run = |content: &Path, out: &Path, extra: &[&str]| {
        let mut args = vec![
            "stylize",
            "--model",
            model.to_str().unwrap(),
            "--content",
            content.to_str().unwrap(),
            "--style",
            style.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--provider",
            "cpu",
        ];
        args.extend_from_slice(extra);
        let o = common::fuchun(&args);
        assert!(!o.status.success());
        common::stderr(&o)
    };
    let e = run(&dir.path().join("*.jpg"), &dir.path().join("out"), &[]);
    assert!(e.contains("no JPEG, PNG or WebP frames"), "{e}");
    std::fs::write(dir.path().join("a.jpg"), &clip(64, 4, 16).frames[0]).unwrap();
    let e = run(&dir.path().join("*.jpg"), &dir.path().join("out.png"), &[]);
    assert!(e.contains("give a directory"), "{e}");
    let e = run(&dir.path().join("*.jpg"), &dir.path().join("out"), &["--change-threshold", "3"]);
    assert!(e.contains("threshold must be in (0, 1)"), "{e}");
    let e = run(&dir.path().join("*.jpg"), &dir.path().join("out"), &["--luminance-only"]);
    assert!(e.contains("--original-colors"), "{e}");
    let e = run(&dir.path().join("*.jpg"), &dir.path().join("out"), &["--palette-finish", "1.5"]);
    assert!(e.contains("--palette-finish must be between 0 and 1"), "{e}");
}

/// On the real weights: what the bench measures ([5]), on a short clip at a small size.
#[test]
fn real_weights_partly_changed_frames_cost_less_and_flicker_less() {
    let c = clip(96, 6, 24);
    let f = frames(&c).unwrap();
    let mut model = Model::load(&common::real_model(), &RuntimeOptions::default()).unwrap();
    let style = imageio::load_path(&common::example("fuchun.jpg"), &Limits::default()).unwrap();
    let mut opts = StylizeOptions::new(Weights::defaults(&model.manifest));
    opts.image_size = 96;
    opts.iterations = 100;
    // what the daemon and frame sequences use
    opts.palette = fuchun::transfer::temporal::STREAM_PALETTE;
    opts.palette_finish = fuchun::settings::transfer::CAMERA.palette_finish;
    let on = StreamSettings::new(DEFAULT_TEMPORAL_WEIGHT);
    let off = StreamSettings { enabled: false, ..on };
    let a = run_pass(&mut model, &f, &style, &opts, &on).unwrap();
    let b = run_pass(&mut model, &f[..3], &style, &opts, &off).unwrap();
    assert_eq!(a.starts, [Start::Cold, Start::Partial, Start::Partial, Start::Cold, Start::Partial, Start::Partial]);
    let pe = [1, 2, 4, 5].iter().map(|&i| a.evaluations[i]).sum::<usize>() as f64 / 4.0;
    let ce = (b.evaluations.iter().sum::<usize>() + a.evaluations[0] + a.evaluations[3]) as f64 / 5.0;
    eprintln!("partial {pe:.1} evaluations, cold {ce:.1}; evaluations {:?} vs {:?}", a.evaluations, b.evaluations);
    // at 96 px a cold frame is a single scale (at 192-256 px two, and the bench's [5] holds partly changed frames to
    // a third of a cold frame: 0.15-0.17 with the painting's palette at 192 px): here at most 45 % (measured 0.40
    // with the painting's palette, the daemon's since issue 18; the photo's took less: its cold runs' loss is
    // higher, so the frames' 5 % slack is wider)
    assert!(pe <= 0.45 * ce, "partial {pe} vs cold {ce}");
    // the same frames, 0..3: cold runs every time against temporal consistency
    let (fa, fb) = (flicker(&c, &a.images[..3]), flicker(&c, &b.images));
    eprintln!("flicker {fa:.4} vs {fb:.4}");
    // the 1/5 is measured by the bench at 192-256 px (0.11-0.17 of cold); at 96 px the 6-px dilation and the
    // 4-px ramp around a 24-px object are a larger part of the frame (measured 0.24)
    assert!(fa * 3.5 <= fb, "flicker {fa} vs cold {fb}");
}

/// Issue 20 on the random-weight graph: an object crossing a still scene leaves no trail — where it has been, the
/// results stay as close to the background's last result before it came as the untouched pixels stay to theirs —
/// while partly changed frames still cost a third of a cold frame and flicker a fifth of cold runs. And an object
/// that stops long enough to become part of the background, then leaves, uncovers the background it had covered.
/// With the photo's palette: on this graph the frames carried into the painting's colours (the daemon's palette) do
/// not settle within a frame's budget (49.6 of 60 evaluations against 101 for a cold frame at 100 iterations, where
/// the real weights take 0.15-0.17 of a cold frame: docs/performance.md), so the ratios would measure the random
/// graph, not the method; the trail itself is held with the daemon's palette too (≤ 8/255, the target).
#[test]
fn a_moving_object_leaves_no_trail() {
    use fuchun::lab::clip::{synthetic, ClipSpec, Motion};
    use fuchun::lab::stream_bench::trail;
    use fuchun::transfer::Palette;
    let mut model = Model::load(&common::test_model(), &RuntimeOptions::default()).unwrap();
    let style = imageio::load_path(&common::example("fuchun.jpg"), &Limits::default()).unwrap();
    let bg = imageio::load_path(&common::example("tubingen.jpg"), &Limits::default()).unwrap();
    let obj = imageio::load_path(&common::example("astronaut.jpg"), &Limits::default()).unwrap();
    let (w, h) = imageio::fit_size(bg.width, bg.height, 128);
    let mut opts = StylizeOptions::new(Weights::defaults(&model.manifest));
    opts.image_size = 128;
    opts.iterations = 30;
    let on = StreamSettings::new(DEFAULT_TEMPORAL_WEIGHT);
    let off = StreamSettings { enabled: false, ..on };
    let runs = [(Motion::Crossing, 12, Palette::Content), (Motion::StopAndGo, 24, Palette::Content)];
    let daemon = (Motion::Crossing, 12, fuchun::transfer::temporal::STREAM_PALETTE);
    for (motion, frames, palette) in runs.into_iter().chain([daemon]) {
        opts.palette = palette;
        // the daemon publishes its frames finished in the painting's colours (`--palette-finish`)
        opts.palette_finish = if palette == Palette::Content { 0.0 } else { DEFAULT_PALETTE_FINISH };
        let spec = ClipSpec { motion, frames, scene_change: Some(frames / 2), ..ClipSpec::default() };
        let c = synthetic(&bg.resize(w, h), &obj, &spec);
        let f = fuchun::lab::stream_bench::frames(&c).unwrap();
        let a = run_pass(&mut model, &f, &style, &opts, &on).unwrap();
        let (t, u) = trail(&c, &a.images).unwrap();
        eprintln!("{motion:?}, {palette:?} palette: trail {:.2}/255, untouched {:.2}/255", 255.0 * t, 255.0 * u);
        if palette != Palette::Content {
            // measured 3.8-4.0/255 against 2.0-2.3 untouched (the photo's palette: 1.9 against 1.0)
            assert!(255.0 * t <= 8.0 && t <= 3.0 * u.max(1.0 / 255.0), "{palette:?}: trail {t} against {u}");
            continue;
        }
        // before the fix: 15.8/255 against 3.3 on the crossing clip; now about 2 against 1. Without the underlay the
        // object that stopped left 3.9/255 (the background it had covered painted anew)
        assert!(255.0 * t <= 3.0 && t <= 3.0 * u.max(1.0 / 255.0), "{motion:?}: trail {t} against untouched {u}");
        if motion != Motion::Crossing {
            continue;
        }
        let b = run_pass(&mut model, &f[..3], &style, &opts, &off).unwrap();
        let partial: Vec<usize> = (1..frames).filter(|&i| a.starts[i] == Start::Partial).collect();
        assert!(partial.len() >= frames - 3, "{:?}", a.starts);
        let pe = partial.iter().map(|&i| a.evaluations[i]).sum::<usize>() as f64 / partial.len() as f64;
        let ce = b.evaluations.iter().sum::<usize>() as f64 / 3.0;
        assert!(pe <= ce / 3.0, "partly changed frames {pe} evaluations, cold {ce}");
        let (fa, fb) = (flicker(&c, &a.images[..3]), flicker(&c, &b.images));
        assert!(fa <= fb / 5.0, "flicker {fa} against cold runs {fb}");
    }
}

/// `--palette-finish` on a stream: every frame is published through its cold frame's finish, while the next frame
/// goes on from the unfinished result — so a frame started from the previous one neither starts from colours the
/// optimiser must first undo, nor gets a map of its own (what did not change keeps its colour).
#[test]
fn stream_frames_are_published_through_their_cold_frame_finish() {
    use fuchun::transfer::temporal::stylize_frame;
    use fuchun::transfer::{CachedTargets, NoHooks, Palette, StyleImages};
    let mut model = Model::load(&common::test_model(), &RuntimeOptions::default()).unwrap();
    let style = imageio::load_path(&common::example("starry_night.jpg"), &Limits::default()).unwrap();
    // the scene changes at frame 3: the first three are one cold frame and two partly changed ones
    let c = clip(96, 6, 20);
    let f = frames(&c).unwrap()[..3].to_vec();
    let mut opts = StylizeOptions::new(Weights::defaults(&model.manifest));
    opts.image_size = 96;
    opts.iterations = 20;
    opts.palette = Palette::Style;
    opts.palette_finish = DEFAULT_PALETTE_FINISH;
    let settings = StreamSettings::new(DEFAULT_TEMPORAL_WEIGHT);
    let images = std::slice::from_ref(&style);
    let mut source = CachedTargets::new(StyleImages { images, blend: Vec::new(), style_scale: 1.0 });
    let mut prev = None;
    let mut finishes = Vec::new();
    for (i, frame) in f.iter().enumerate() {
        let (w, h) = imageio::fit_size(frame.width, frame.height, 96);
        let content = frame.resize(w, h);
        let (outcome, plan, kept) =
            stylize_frame(&mut model, prev.as_ref(), "k", &content, &settings, &opts, &mut source, &mut NoHooks)
                .unwrap();
        assert_eq!(plan.start, if i == 0 { Start::Cold } else { Start::Partial }, "frame {i}");
        let finish = kept.finish.clone().expect("a stream carried into the painting's colours is finished");
        // published finished; kept (what the next frame starts from and is held to) unfinished
        assert_eq!(outcome.image.data, finish.apply(&kept.result).data, "frame {i}");
        let moved = outcome.image.data.iter().zip(&kept.result.data).map(|(a, b)| (a - b).abs()).sum::<f32>();
        assert!(moved / outcome.image.data.len() as f32 > 1e-3, "frame {i}: the finish changed nothing");
        finishes.push(finish);
        prev = Some(kept);
    }
    // the partly changed frames reuse the cold frame's map: the same colour comes out the same in every frame
    let probe = f[0].resize(32, 24);
    let a = finishes[0].apply(&probe);
    assert!(finishes[1..].iter().all(|m| m.apply(&probe).data == a.data));
    // without the finish the frames are published as optimised
    opts.palette_finish = 0.0;
    let (outcome, _, kept) =
        stylize_frame(&mut model, None, "k", &f[0].resize(96, 64), &settings, &opts, &mut source, &mut NoHooks)
            .unwrap();
    assert!(kept.finish.is_none());
    assert_eq!(outcome.image.data, kept.result.data);
}

/// Issue 20: what a partly changed frame shows for the first time (held by nothing: not the background plate, not the
/// previous result, not moved along) is painted first in a crop around it, where it is a large part of the style
/// statistics, then the frame as a whole within its budget — while what the previous frame painted stays.
#[test]
fn new_content_is_painted_in_a_crop_around_it_first() {
    use fuchun::transfer::temporal::stylize_frame;
    use fuchun::transfer::{CachedTargets, NoHooks, StyleImages};
    let c = clip(256, 4, 48);
    let f = frames(&c).unwrap();
    let mut model = Model::load(&common::test_model(), &RuntimeOptions::default()).unwrap();
    let style = imageio::load_path(&common::example("fuchun.jpg"), &Limits::default()).unwrap();
    let mut opts = StylizeOptions::new(Weights::defaults(&model.manifest));
    opts.image_size = 256;
    opts.iterations = 30;
    let settings = StreamSettings::new(DEFAULT_TEMPORAL_WEIGHT);
    let images = std::slice::from_ref(&style);
    let mut source = CachedTargets::new(StyleImages { images, blend: Vec::new(), style_scale: 1.0 });
    let mut frame = |prev: Option<&fuchun::transfer::temporal::Previous>, i: usize| {
        stylize_frame(&mut model, prev, "k", &f[i], &settings, &opts, &mut source, &mut NoHooks).unwrap()
    };
    let (cold, plan, prev) = frame(None, 0);
    assert_eq!(plan.start, Start::Cold);
    let (next, plan, _) = frame(Some(&prev), 1);
    assert_eq!(plan.start, Start::Partial);
    let sizes: Vec<(usize, usize)> = next.scales.iter().map(|s| (s.width, s.height)).collect();
    eprintln!("scales {sizes:?}, evaluations {:?}", next.scales.iter().map(|s| s.evaluations).collect::<Vec<_>>());
    assert_eq!(sizes.len(), 2, "new content: a crop first, then the frame");
    let (crop, whole) = (sizes[0], sizes[1]);
    assert_eq!(whole, (f[1].width, f[1].height));
    // the crop holds what is new with its margin (the object of 48 px moved: the two positions and 32 px around
    // them), and is well under the frame
    assert!(crop.0 >= 48 && crop.1 >= 48 && crop.0 * crop.1 * 2 <= whole.0 * whole.1, "crop {crop:?}");
    // painted as a cold run's scale is (its iterations and early stop) within half the frame's budget and a share of
    // the cold run's evaluations (`CROP_SHARE`), the frame then within the budget
    let share = (settings.max_evaluations / 2).min(cold.evaluations() / fuchun::transfer::temporal::CROP_SHARE).max(1);
    let crop_evals = next.scales[0].evaluations;
    assert!(crop_evals <= share && crop_evals * 2 >= share, "crop {crop_evals} evaluations, its share {share}");
    assert!(next.scales[1].evaluations <= settings.max_evaluations);
    // what nothing touched stays as the previous frame painted it
    let still = c.still_between(1).unwrap();
    let d = fuchun::transfer::temporal::masked_difference(&next.image, &cold.image, &still);
    eprintln!("still pixels moved {:.2}/255", 255.0 * d);
    assert!(255.0 * d < 1.5, "still pixels moved {:.2}/255", 255.0 * d);
}

/// Two objects crossing the view apart: what each left new is painted in a crop of its own (one box around both
/// would be most of the frame, and get none), within the frame's half of the budget together.
#[test]
fn separate_new_regions_are_painted_in_crops_of_their_own() {
    use fuchun::lab::clip::{synthetic, ClipSpec, Motion};
    use fuchun::transfer::temporal::stylize_frame;
    use fuchun::transfer::{CachedTargets, NoHooks, StyleImages};
    let bg = imageio::load_path(&common::example("tubingen.jpg"), &Limits::default()).unwrap();
    let obj = imageio::load_path(&common::example("astronaut.jpg"), &Limits::default()).unwrap();
    let (w, h) = imageio::fit_size(bg.width, bg.height, 256);
    let spec = ClipSpec {
        motion: Motion::TwoCrossing,
        frames: 10,
        scene_change: None,
        object_size: 28,
        ..ClipSpec::default()
    };
    let f = frames(&synthetic(&bg.resize(w, h), &obj, &spec)).unwrap();
    let mut model = Model::load(&common::test_model(), &RuntimeOptions::default()).unwrap();
    let style = imageio::load_path(&common::example("fuchun.jpg"), &Limits::default()).unwrap();
    let mut opts = StylizeOptions::new(Weights::defaults(&model.manifest));
    opts.image_size = 256;
    opts.iterations = 30;
    let settings = StreamSettings::new(DEFAULT_TEMPORAL_WEIGHT);
    let images = std::slice::from_ref(&style);
    let mut source = CachedTargets::new(StyleImages { images, blend: Vec::new(), style_scale: 1.0 });
    let (_, _, prev) =
        stylize_frame(&mut model, None, "k", &f[0], &settings, &opts, &mut source, &mut NoHooks).unwrap();
    let (next, plan, _) =
        stylize_frame(&mut model, Some(&prev), "k", &f[1], &settings, &opts, &mut source, &mut NoHooks).unwrap();
    assert_eq!(plan.start, Start::Partial);
    let sizes: Vec<(usize, usize)> = next.scales.iter().map(|s| (s.width, s.height)).collect();
    let evals: Vec<usize> = next.scales.iter().map(|s| s.evaluations).collect();
    eprintln!("scales {sizes:?}, evaluations {evals:?}");
    assert_eq!(sizes.len(), 3, "two crops, then the frame: {sizes:?}");
    assert_eq!(sizes[2], (w, h));
    let crops = sizes[0].0 * sizes[0].1 + sizes[1].0 * sizes[1].1;
    assert!(crops * 2 <= w * h, "crops {sizes:?} in a {w}x{h} frame");
    assert!(
        evals[0] + evals[1] <= settings.max_evaluations / 2 && evals.iter().sum::<usize>() <= settings.max_evaluations
    );
}
