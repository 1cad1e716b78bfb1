//! `fuchun bench`, figure [5]: a camera stream (issue 12). A synthetic clip (`clip::synthetic`: the content image
//! as a still background, an object crossing it, sensor noise, JPEG re-encoding, a new scene in the middle) is
//! stylised twice frame by frame — every frame a cold run (the behaviour before temporal consistency) and with
//! `transfer::temporal` — and compared: evaluations of partly changed frames against cold ones, flicker over the
//! pixels that did not change, and the scene change.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use super::clip::{synthetic, Clip, ClipSpec, Motion};
use crate::engine::Model;
use crate::imageio::{self, fit_size, Limits, Planar};
use crate::transfer::color::luma;
use crate::transfer::schedule::Palette;
use crate::transfer::temporal::{self, dilate, masked_difference, Previous, Start, StreamSettings};
use crate::transfer::{CachedTargets, NoHooks, StyleImages, StylizeOptions};

/// One pass over the clip.
pub struct Pass {
    pub images: Vec<Planar>,
    pub starts: Vec<Start>,
    pub changed: Vec<Option<f64>>,
    pub evaluations: Vec<usize>,
    /// The evaluations in full-size evaluations: each scale's evaluations × its pixels over the frame's (an
    /// evaluation of a coarse scale or of a crop costs a fraction of a full-size one; `work`).
    pub work: Vec<f64>,
    pub seconds: Vec<f64>,
}

/// The evaluations of a run in full-size evaluations: each scale's × its pixels over the last scale's (at 512 px an
/// evaluation at 128 px counts 1/16).
pub fn work(outcome: &crate::transfer::Outcome) -> f64 {
    let Some(last) = outcome.scales.last() else { return 0.0 };
    let full = (last.width * last.height).max(1) as f64;
    outcome.scales.iter().map(|s| s.evaluations as f64 * (s.width * s.height) as f64 / full).sum()
}

/// The clip's frames, decoded.
pub fn frames(clip: &Clip) -> Result<Vec<Planar>> {
    clip.frames.iter().map(|f| imageio::decode(f, &Limits::default()).map_err(Into::into)).collect()
}

/// Stylise every frame of `frames` in order, as the daemon does for one camera.
pub fn run_pass(
    model: &mut Model,
    frames: &[Planar],
    style: &Planar,
    opts: &StylizeOptions,
    settings: &StreamSettings,
) -> Result<Pass> {
    let images = std::slice::from_ref(style);
    let mut source = CachedTargets::new(StyleImages { images, blend: Vec::new(), style_scale: opts.style_scale });
    let mut prev: Option<Previous> = None;
    let mut pass =
        Pass { images: vec![], starts: vec![], changed: vec![], evaluations: vec![], work: vec![], seconds: vec![] };
    for f in frames {
        let t = Instant::now();
        let (w, h) = fit_size(f.width, f.height, opts.image_size);
        let content = f.resize(w, h);
        let (outcome, plan, kept) = temporal::stylize_frame(
            model,
            prev.as_ref(),
            &format!("{w}x{h}"),
            &content,
            settings,
            opts,
            &mut source,
            &mut NoHooks,
        )?;
        tracing::info!(
            frame = pass.images.len(),
            start = plan.start.as_str(),
            changed = plan.changed_fraction,
            evaluations = outcome.evaluations(),
            loss = outcome.final_losses().total,
            seconds = t.elapsed().as_secs_f64(),
            "stream frame"
        );
        pass.evaluations.push(outcome.evaluations());
        pass.work.push(work(&outcome));
        pass.images.push(outcome.image);
        pass.starts.push(plan.start);
        pass.changed.push(plan.changed_fraction);
        pass.seconds.push(t.elapsed().as_secs_f64());
        prev = Some(kept);
    }
    Ok(pass)
}

/// Mean flicker (mean absolute difference of consecutive results over the still pixels, 0–1) of a pass.
pub fn flicker(clip: &Clip, images: &[Planar]) -> f64 {
    let v: Vec<f64> = (1..images.len())
        .filter_map(|i| clip.still_between(i).map(|still| masked_difference(&images[i], &images[i - 1], &still)))
        .collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// [5e] how much the moving object is painted in the frames started from the previous one, against the cold runs
/// of the same frames (frames 1..k): over the object's pixels, the mean |result − photo| of the temporal results
/// over that of the cold runs. 1: the object taken as far from the photo as a cold run takes it; 0: the photo left
/// as it came. It sees colour, not strokes: a pale object without the painting's lines can score 1 (issue 20: a
/// growing or turning object is new content in every frame, and a frame that stops on the whole image's loss leaves
/// it under-painted). None when the object shows in none of those frames.
pub fn object_paint(clip: &Clip, photos: &[Planar], warm: &[Planar], cold: &[Planar]) -> Option<f64> {
    let n = clip.width * clip.height;
    let (mut w_sum, mut c_sum) = (0.0f64, 0.0f64);
    for i in 1..cold.len().min(warm.len()).min(clip.object.len()) {
        for p in (0..n).filter(|&p| clip.object[i][p]) {
            for c in 0..3 {
                let (j, photo) = (c * n + p, photos[i].data[c * n + p]);
                w_sum += (warm[i].data[j] - photo).abs() as f64;
                c_sum += (cold[i].data[j] - photo).abs() as f64;
            }
        }
    }
    (c_sum > 0.0).then(|| w_sum / c_sum)
}

/// [5e] the moving object's strokes in the frames started from the previous one against the cold runs of the same
/// frames (1..k): over the object's pixels (one in from its edge, so the object's own outline is left out), the mean
/// luminance gradient magnitude (central differences) of the temporal results over that of the cold runs. 1: as
/// much line and texture as a cold run draws; below: paler, softer (what `object_paint`, on colour, does not see).
pub fn object_strokes(clip: &Clip, warm: &[Planar], cold: &[Planar]) -> Option<f64> {
    let frames = 1..cold.len().min(warm.len()).min(clip.object.len());
    strokes(clip.width, clip.height, frames.map(|i| (&clip.object[i][..], &warm[i], &cold[i])))
}

/// Over the inner pixels of each (mask, image, reference) — the mask's pixels whose four neighbours are in it too —
/// the summed luminance gradient magnitude of the images over that of the references; None where the references
/// have none.
fn strokes<'a>(w: usize, h: usize, frames: impl Iterator<Item = (&'a [bool], &'a Planar, &'a Planar)>) -> Option<f64> {
    let grad = |l: &[f32], p: usize| -> f64 {
        let (gx, gy) = ((l[p + 1] - l[p - 1]) as f64, (l[p + w] - l[p - w]) as f64);
        (gx * gx + gy * gy).sqrt()
    };
    let (mut w_sum, mut c_sum) = (0.0f64, 0.0f64);
    for (mask, image, reference) in frames {
        let (li, lr) = (luma(image), luma(reference));
        for y in 1..h.saturating_sub(1) {
            for x in 1..w.saturating_sub(1) {
                let p = y * w + x;
                if mask[p] && mask[p - 1] && mask[p + 1] && mask[p - w] && mask[p + w] {
                    w_sum += grad(&li, p);
                    c_sum += grad(&lr, p);
                }
            }
        }
    }
    (c_sum > 0.0).then(|| w_sum / c_sum)
}

/// Per frame i ≥ 1 (before a scene change), the pixels the object covered in the first frame and no longer covers:
/// background the stream never saw before the object left it (the trail measure cannot see them).
pub fn revealed_masks(clip: &Clip) -> Vec<(usize, Vec<bool>)> {
    let end = clip.scene_change.unwrap_or(clip.object.len()).min(clip.object.len());
    (1..end)
        .map(|i| (i, clip.object[0].iter().zip(&clip.object[i]).map(|(a, b)| *a && !b).collect::<Vec<bool>>()))
        .filter(|(_, m)| m.iter().any(|v| *v))
        .collect()
}

/// [5f] what the first frame's object left, painted as a cold run paints the empty scene (issue 20: at 512 px a grey
/// disc stayed where the approaching object had been in the first frame): over the revealed pixels of every frame
/// (`revealed_masks`), (paint, strokes) of the temporal results against `empty`, a cold run of the scene without the
/// object — paint as `object_paint` (mean |result − photo| over that of the cold run), strokes as `object_strokes`.
/// 1: painted as a cold run paints it; the disc scored low on both. None where the object revealed nothing.
pub fn revealed(
    clip: &Clip,
    photos: &[Planar],
    warm: &[Planar],
    empty_photo: &Planar,
    empty: &Planar,
) -> Option<(f64, f64)> {
    let masks: Vec<(usize, Vec<bool>)> = revealed_masks(clip).into_iter().filter(|(i, _)| *i < warm.len()).collect();
    let n = clip.width * clip.height;
    let (mut w_sum, mut c_sum) = (0.0f64, 0.0f64);
    for (i, mask) in &masks {
        for p in (0..n).filter(|&p| mask[p]) {
            for c in 0..3 {
                let j = c * n + p;
                w_sum += (warm[*i].data[j] - photos[*i].data[j]).abs() as f64;
                c_sum += (empty.data[j] - empty_photo.data[j]).abs() as f64;
            }
        }
    }
    let paint = (c_sum > 0.0).then(|| w_sum / c_sum)?;
    let lines = strokes(clip.width, clip.height, masks.iter().map(|(i, m)| (&m[..], &warm[*i], empty)))?;
    Some((paint, lines))
}

/// The width (px) of the ring `rim_masks` takes outside the first frame's object: the ink outline a painting's strokes
/// draw around an object lies a few pixels outside it (issue 20: at 512 px a thin dark ring stayed where the
/// approaching object had stood), about a hundredth of the frame's longest side, at least 3 so that the ring has
/// inner pixels for `strokes`.
pub fn rim_px(w: usize, h: usize) -> usize {
    (w.max(h) as f64 / 96.0).round().max(3.0) as usize
}

/// Per frame i ≥ 1 (before a scene change), the ring of `r` pixels just outside the first frame's object, where
/// frame i shows background: not covered by the object now nor within `r` of it (its own outline there is the
/// painting's, not a residue). Background in the first frame too, so neither the trail nor `revealed` looks there.
pub fn rim_masks(clip: &Clip, r: usize) -> Vec<(usize, Vec<bool>)> {
    let (w, h) = (clip.width, clip.height);
    let end = clip.scene_change.unwrap_or(clip.object.len()).min(clip.object.len());
    let Some(first) = clip.object.first() else { return Vec::new() };
    let ring: Vec<bool> = dilate(first, w, h, r).iter().zip(first).map(|(g, o)| *g && !o).collect();
    (1..end)
        .map(|i| {
            let near = dilate(&clip.object[i], w, h, r);
            (i, ring.iter().zip(&near).map(|(a, b)| *a && !b).collect::<Vec<bool>>())
        })
        .filter(|(_, m)| m.iter().any(|v| *v))
        .collect()
}

/// [5g] the rim the first frame's object left (issue 20): over `rim_masks` of the frames `images` has (from frame
/// 1), (how much darker the images are than `empty` — a cold run of the scene without the object — in mean
/// luminance, 0–1; their strokes over the empty scene's, as `object_strokes`). An outline held from the first
/// frame reads as darker and as more strokes than the empty scene painted cold; a cold run of the frame, whose
/// object is elsewhere, is the comparison. None where the ring is empty in every frame.
pub fn rim(clip: &Clip, images: &[Planar], empty: &Planar) -> Option<(f64, f64)> {
    let masks: Vec<(usize, Vec<bool>)> =
        rim_masks(clip, rim_px(clip.width, clip.height)).into_iter().filter(|(i, _)| *i < images.len()).collect();
    let le = luma(empty);
    let (mut dark, mut count) = (0.0f64, 0usize);
    for (i, mask) in &masks {
        let li = luma(&images[*i]);
        for p in (0..mask.len()).filter(|&p| mask[p]) {
            dark += (le[p] - li[p]) as f64;
            count += 1;
        }
    }
    let lines = strokes(clip.width, clip.height, masks.iter().map(|(i, m)| (&m[..], &images[*i], empty)))?;
    (count > 0).then(|| (dark / count as f64, lines))
}

/// [5d] of the bench: the trail of the temporal results over the whole clip, and of the cold runs over their frames,
/// printed against the target (≤ 8/255, and ≤ 3× the untouched pixels' drift where that is larger).
fn trail_figure(clip: &Clip, warm: &[Planar], cold: &[Planar]) -> (Option<Trail>, Option<Trail>) {
    let trail_warm = trail(clip, warm);
    let trail_cold = trail(clip, cold);
    if let Some((t, u)) = trail_warm {
        let cold_t = trail_cold.map_or(f64::NAN, |c| c.0);
        println!(
            "    trail where the object has been (mean |Δ| to the background's last result before it came, 0–255): \
             temporal {:.2} against {:.2} over untouched pixels (cold runs over frames 0–{}: {:.2}; target ≤ 8 and ≤ 3× \
             the untouched drift where that is larger): {}",
            255.0 * t,
            255.0 * u,
            cold.len() - 1,
            255.0 * cold_t,
            super::report::verdict(255.0 * t <= 8.0_f64.max(3.0 * 255.0 * u))
        );
    }
    (trail_warm, trail_cold)
}

/// (trail, untouched drift), 0–1 units: see `trail`.
pub type Trail = (f64, f64);

/// The trail a moving object leaves (issue 20), as (trail, untouched), 0–1 units: over the pixels the object has left
/// — covered in an earlier frame of the scene, not now, and seen uncovered before it came — the mean distance of each
/// frame's result to the result of the last frame that showed that background before the object came; and the same
/// distance, to the same frames, over the pixels the object never covers in the scene (their drift). None when no
/// frame has such pixels. A result that repaints the background as it was has a trail near the untouched drift; a
/// result that keeps the object's paint where it has been has a trail as large as the paint's difference.
pub fn trail(clip: &Clip, images: &[Planar]) -> Option<Trail> {
    let n = clip.width * clip.height;
    let frames = images.len().min(clip.object.len());
    let starts: Vec<usize> = std::iter::once(0).chain(clip.scene_change.filter(|&c| c < frames)).collect();
    let (mut trail_sum, mut untouched_sum, mut count) = (0.0f64, 0.0f64, 0usize);
    for (si, &start) in starts.iter().enumerate() {
        let end = starts.get(si + 1).copied().unwrap_or(frames);
        let untouched: Vec<bool> = (0..n).map(|p| (start..end).all(|i| !clip.object[i][p])).collect();
        // per pixel: the last frame that showed it uncovered before the object first came (frozen from then on)
        let mut seen: Vec<Option<usize>> = vec![None; n];
        let mut covered = vec![false; n];
        for i in start..end {
            // the pixels left in frame i, grouped by the frame they are compared with
            let mut by_frame: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
            for p in 0..n {
                if clip.object[i][p] {
                    covered[p] = true;
                } else if covered[p] {
                    if let Some(k) = seen[p] {
                        by_frame.entry(k).or_default().push(p);
                    }
                } else {
                    seen[p] = Some(i);
                }
            }
            for (k, pixels) in by_frame {
                let mut left = vec![false; n];
                pixels.iter().for_each(|&p| left[p] = true);
                let weight = pixels.len();
                trail_sum += weight as f64 * masked_difference(&images[i], &images[k], &left);
                untouched_sum += weight as f64 * masked_difference(&images[i], &images[k], &untouched);
                count += weight;
            }
        }
    }
    (count > 0).then(|| (trail_sum / count as f64, untouched_sum / count as f64))
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        s / n as f64
    }
}

/// A strip of the frames `picks`, one row per sequence of `rows` (camera frames, results).
fn strip(rows: &[&[Planar]], picks: &[usize]) -> Planar {
    let (w, h) = (rows[0][0].width, rows[0][0].height);
    let (gap, count) = (4, picks.len());
    let (sw, sh) = (count * w + (count - 1) * gap, rows.len() * h + (rows.len() - 1) * gap);
    let mut out = Planar { width: sw, height: sh, data: vec![1.0; 3 * sw * sh] };
    for (r, row) in rows.iter().enumerate() {
        for (k, &pick) in picks.iter().enumerate() {
            let img = row[pick].resize(w, h);
            for c in 0..3 {
                for y in 0..h {
                    for x in 0..w {
                        let (ox, oy) = (k * (w + gap) + x, r * (h + gap) + y);
                        out.data[c * sw * sh + oy * sw + ox] = img.data[c * w * h + y * w + x];
                    }
                }
            }
        }
    }
    out
}

pub struct StreamArgs<'a> {
    pub motion: Motion,
    pub size: usize,
    pub frames: usize,
    pub background: &'a Path,
    pub object: &'a Path,
    pub strip: Option<&'a Path>,
    pub clip_dir: Option<&'a Path>,
    /// Frames of the all-cold pass (from the first).
    pub cold_frames: usize,
    /// Iterations per scale of a cold frame.
    pub iterations: usize,
    /// Also run the clip without the motion search.
    pub compare_motion: bool,
    /// The frames' palette (the daemon's: `temporal::STREAM_PALETTE`).
    pub palette: Palette,
    /// How far the frames are finished in the painting's colours (the daemon's: `settings::transfer::CAMERA`).
    pub palette_finish: f32,
}

/// Figure [5]: prints the lines with their targets and returns them as JSON.
pub fn figures(model: &mut Model, style: &Planar, opts: &StylizeOptions, a: &StreamArgs) -> Result<serde_json::Value> {
    let (clip, spec, (w, h)) = bench_clip(a)?;
    let frames = frames(&clip)?;
    let mut opts = opts.clone();
    opts.image_size = a.size;
    // a daemon style's default iteration budget per scale (`[styles.NAME] iterations`)
    opts.iterations = a.iterations;
    opts.palette = a.palette;
    opts.palette_finish = a.palette_finish;
    let settings = StreamSettings::new(temporal::DEFAULT_TEMPORAL_WEIGHT);
    let off = StreamSettings { enabled: false, ..settings };
    let cut = clip.scene_change;
    // every frame a cold run, on the first `cold_frames` (a cold frame costs several times a temporal one) and on
    // the new scene's first frame (the reference for the scene change)
    let k = a.cold_frames.clamp(2, cut.unwrap_or(frames.len()));
    let warm = run_pass(model, &frames, style, &opts, &settings)?;
    // the stream's first frame is a cold run with the same options (nothing before it): it is the cold pass's first
    // frame too, which saves a cold run (7–15 minutes at 512 px on a 2-core CPU)
    anyhow::ensure!(warm.starts[0] == Start::Cold, "the stream's first frame was not a cold run");
    let mut cold = run_pass(model, &frames[1..k], style, &opts, &off)?;
    cold.images.insert(0, warm.images[0].clone());
    cold.starts.insert(0, warm.starts[0]);
    cold.changed.insert(0, warm.changed[0]);
    cold.evaluations.insert(0, warm.evaluations[0]);
    cold.work.insert(0, warm.work[0]);
    cold.seconds.insert(0, warm.seconds[0]);
    let fresh = match cut {
        Some(c) => Some(run_pass(model, &frames[c..c + 1], style, &opts, &off)?),
        None => None,
    };
    // where the first frame's object has gone: the empty scene as a cold run paints it (one cold run more)
    let empty = match revealed_masks(&clip).is_empty() {
        true => None,
        false => {
            let photo = imageio::decode(&clip.empty, &Limits::default())?;
            let painted = run_pass(model, std::slice::from_ref(&photo), style, &opts, &off)?;
            Some((photo, painted.images.into_iter().next().context("no image")?))
        }
    };

    // [5a] evaluations: partly changed frames (≤ 20 % of the pixels truly changed) against cold frames
    let small: Vec<usize> = (1..frames.len()).filter(|&i| clip.changed_fraction(i).is_some_and(|f| f <= 0.2)).collect();
    let partial_evals = mean(small.iter().map(|&i| warm.evaluations[i] as f64));
    if let Some(f) = &fresh {
        cold.evaluations.extend(&f.evaluations);
        cold.work.extend(&f.work);
        cold.seconds.extend(&f.seconds);
    }
    let cold_evals = mean(cold.evaluations.iter().map(|&e| e as f64));
    let eval_ratio = partial_evals / cold_evals;
    // what a frame costs: a partly changed frame with new content paints a crop of it first, whose evaluations cost a
    // fraction of a full-size one — as a cold run's coarse scales do
    let (partial_work, cold_work) = (mean(small.iter().map(|&i| warm.work[i])), mean(cold.work.iter().copied()));
    let work_ratio = partial_work / cold_work;
    let starts: Vec<&str> = warm.starts.iter().map(|s| s.as_str()).collect();
    println!(
        "[5] camera stream at {}x{} ({} frames of the clip `{}`, noise σ {:.1}/255, JPEG q{}{}); starts with temporal \
         consistency: {}",
        w,
        h,
        frames.len(),
        spec.motion.as_str(),
        spec.noise * 255.0,
        spec.jpeg_quality,
        cut.map_or(String::new(), |c| format!(", new scene at frame {c}")),
        starts.join(" ")
    );
    println!(
        "    evaluations: partly changed frames (≤ 20 % changed: {} frames, mean changed {:.1} %) {:.1} per frame, \
         cold frames {:.1} = {:.2} of cold; in full-size evaluations (each scale's × its pixels over the frame's) \
         {:.1} against {:.1} = {:.2} of cold (target ≤ 0.33): {}",
        small.len(),
        100.0 * mean(small.iter().filter_map(|&i| clip.changed_fraction(i))),
        partial_evals,
        cold_evals,
        eval_ratio,
        partial_work,
        cold_work,
        work_ratio,
        super::report::verdict(work_ratio <= 1.0 / 3.0)
    );
    println!(
        "    seconds per frame: partly changed {:.1} with temporal consistency, cold {:.1}",
        mean(small.iter().map(|&i| warm.seconds[i])),
        mean(cold.seconds.iter().copied())
    );
    // [5b] flicker over the pixels that did not change, over the same frames 0..k
    let (f_cold, f_warm) = (flicker(&clip, &cold.images), flicker(&clip, &warm.images[..k]));
    let f_ratio = f_warm / f_cold;
    let f_all = flicker(&clip, &warm.images);
    println!(
        "    flicker (mean |Δ| between consecutive results over unchanged pixels, 0–255, frames 0–{}): cold runs \
         {:.2}, temporal {:.2} = {:.3} of cold (target ≤ 0.2): {}; temporal over all {} frames {:.2}",
        k - 1,
        255.0 * f_cold,
        255.0 * f_warm,
        f_ratio,
        super::report::verdict(f_ratio <= 0.2),
        frames.len(),
        255.0 * f_all
    );
    // [5d] the trail a moving object leaves (issue 20): where it has been against where it never was
    let (trail_warm, trail_cold) = trail_figure(&clip, &warm.images, &cold.images[..k]);
    let paint = object_paint(&clip, &frames, &warm.images, &cold.images[..k]);
    let strokes = object_strokes(&clip, &warm.images, &cold.images[..k]);
    if let (Some(p), Some(s)) = (paint, strokes) {
        println!(
            "    the moving object in frames 1–{}, temporal over cold runs: paint (mean |result − photo| over it) \
             {p:.2}, strokes (mean luminance gradient inside it) {s:.2} (1 = as a cold run)",
            k - 1
        );
    }
    // [5f] what the first frame's object left: background never seen before
    let uncovered = empty.as_ref().and_then(|(photo, painted)| revealed(&clip, &frames, &warm.images, photo, painted));
    if let Some((p, s)) = uncovered {
        println!(
            "    where the first frame's object has gone (never seen as background), temporal over a cold run of the \
             empty scene: paint {p:.2}, strokes {s:.2} (1 = as a cold run)"
        );
    }
    // [5g] the rim it left: the outline drawn around it in the first frame, outside its own pixels
    let rims =
        empty.as_ref().map(|(_, painted)| (rim(&clip, &warm.images, painted), rim(&clip, &cold.images[..k], painted)));
    if let Some((Some((dw, sw)), cold_rim)) = rims {
        let (dc, sc) = cold_rim.unwrap_or((f64::NAN, f64::NAN));
        println!(
            "    rim of the first frame's object ({} px outside it, background now), against a cold run of the empty \
             scene: temporal {:.2}/255 darker, strokes {sw:.2}; cold runs of frames 1–{} {:.2}/255, strokes {sc:.2}",
            rim_px(w, h),
            255.0 * dw,
            k - 1,
            255.0 * dc
        );
    }
    let (detected, ghost) = match (cut, &fresh) {
        (Some(c), Some(f)) => scene_change_figure(&warm, &f.images[0], c),
        _ => (None, None),
    };
    // is the motion search worth it? the same clip with it off
    let no_motion = if a.compare_motion {
        let with = (partial_evals, f_warm, f_all, trail_warm);
        without_motion(model, (&clip, &frames), style, &opts, &settings, (&small, k), with)?
    } else {
        serde_json::Value::Null
    };
    if let Some(path) = a.strip {
        // six frames spread over the clip: where an object has been shows in the later ones
        let last = frames.len() - 1;
        let picks: Vec<usize> = (0..6).map(|j| 1 + j * (last - 1) / 5).collect();
        let s = strip(&[&frames, &warm.images], &picks);
        imageio::save_path(&s, path).with_context(|| format!("writing the strip {}", path.display()))?;
        println!("    strip of frames {picks:?} (camera, temporal): {}", path.display());
    }
    Ok(serde_json::json!({
        "width": w, "height": h, "frames": frames.len(), "scene_change": cut, "starts": starts,
        "changed": warm.changed, "evaluations_temporal": warm.evaluations, "evaluations_cold": cold.evaluations,
        "cold_frames": k, "flicker_temporal_all_frames": f_all,
        "partial_evaluations": partial_evals, "cold_evaluations": cold_evals, "evaluation_ratio": eval_ratio,
        "partial_work": partial_work, "cold_work": cold_work, "work_ratio": work_ratio,
        "flicker_cold": f_cold, "flicker_temporal": f_warm, "flicker_ratio": f_ratio,
        "trail_temporal": trail_warm.map(|t| t.0), "trail_untouched": trail_warm.map(|t| t.1),
        "trail_cold": trail_cold.map(|t| t.0), "object_paint": paint, "object_strokes": strokes,
        "revealed_paint": uncovered.map(|r| r.0), "revealed_strokes": uncovered.map(|r| r.1),
        "rim_darker_temporal": rims.and_then(|r| r.0).map(|r| r.0), "rim_strokes_temporal": rims.and_then(|r| r.0).map(|r| r.1),
        "rim_darker_cold": rims.and_then(|r| r.1).map(|r| r.0), "rim_strokes_cold": rims.and_then(|r| r.1).map(|r| r.1),
        "motion": spec.motion, "scene_change_detected": detected, "scene_change_vs_fresh_cold": ghost,
        "without_motion": no_motion,
    }))
}

/// The bench's synthetic clip at `a.size` (an object crossing the background, a new scene half-way), written to
/// `a.clip_dir` as JPEG frames when asked; its spec and frame size.
fn bench_clip(a: &StreamArgs) -> Result<(Clip, ClipSpec, (usize, usize))> {
    let limits = Limits::default();
    let bg = imageio::load_path(a.background, &limits).with_context(|| format!("{}", a.background.display()))?;
    let obj = imageio::load_path(a.object, &limits).with_context(|| format!("{}", a.object.display()))?;
    let (w, h) = fit_size(bg.width, bg.height, a.size);
    let spec = ClipSpec {
        motion: a.motion,
        frames: a.frames.max(4),
        scene_change: Some(a.frames.max(4) / 2),
        ..ClipSpec::default()
    };
    let clip = synthetic(&bg.resize(w, h), &obj, &spec);
    if let Some(dir) = a.clip_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (i, f) in clip.frames.iter().enumerate() {
            let p = dir.join(format!("frame_{i:03}.jpg"));
            std::fs::write(&p, f).with_context(|| format!("writing {}", p.display()))?;
        }
    }
    Ok((clip, spec, (w, h)))
}

/// [5c] the new scene at frame `cut`: detected (a cold run) and no ghost of the old one — the result is the fresh
/// cold run's (`fresh`). Returns (detected, the difference to the fresh cold run).
fn scene_change_figure(warm: &Pass, fresh: &Planar, cut: usize) -> (Option<bool>, Option<f64>) {
    let all = vec![true; fresh.width * fresh.height];
    let detected = warm.starts.get(cut) == Some(&Start::Cold);
    let ghost = masked_difference(&warm.images[cut], fresh, &all);
    let old_new = masked_difference(&warm.images[cut], &warm.images[cut - 1], &all);
    println!(
        "    new scene at frame {cut}: changed {:.0} %, {} ; its result differs from a fresh cold run's by {:.2}/255 \
         (the old scene's result differs by {:.1}/255): {}",
        100.0 * warm.changed[cut].unwrap_or(f64::NAN),
        if detected { "cold run" } else { "NOT a cold run" },
        255.0 * ghost,
        255.0 * old_new,
        super::report::verdict(detected && ghost < 0.1 * old_new)
    );
    (Some(detected), Some(ghost))
}

/// Is the motion search worth it? The same clip with it off, against `with` (partly changed frames' evaluations,
/// flicker over frames 0..k, flicker over all frames) with it on.
fn without_motion(
    model: &mut Model,
    (clip, frames): (&Clip, &[Planar]),
    style: &Planar,
    opts: &StylizeOptions,
    settings: &StreamSettings,
    (small, k): (&[usize], usize),
    (partial_evals, f_warm, f_all_warm, trail_warm): (f64, f64, f64, Option<Trail>),
) -> Result<serde_json::Value> {
    let off = StreamSettings { motion_px: 0, ..*settings };
    let p = run_pass(model, frames, style, opts, &off)?;
    let e = mean(small.iter().map(|&i| p.evaluations[i] as f64));
    let (f, f_all) = (flicker(clip, &p.images[..k]), flicker(clip, &p.images));
    let t = trail(clip, &p.images);
    println!(
        "    without the motion search: partly changed frames {e:.1} evaluations (with it {partial_evals:.1}); \
         flicker frames 0–{} {:.2} (with it {:.2}), all frames {:.2} (with it {:.2}); trail {:.2} (with it {:.2})",
        k - 1,
        255.0 * f,
        255.0 * f_warm,
        255.0 * f_all,
        255.0 * f_all_warm,
        255.0 * t.map_or(f64::NAN, |t| t.0),
        255.0 * trail_warm.map_or(f64::NAN, |t| t.0)
    );
    Ok(serde_json::json!({"partial_evaluations": e, "flicker": f, "flicker_all_frames": f_all,
        "trail": t.map(|t| t.0)}))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `w × h` clip with no frames and no object.
    fn blank(w: usize, h: usize) -> Clip {
        Clip { width: w, height: h, frames: Vec::new(), object: Vec::new(), scene_change: None, empty: Vec::new() }
    }

    /// A 6×1 clip: the object covers pixel 2 in frame 1 and pixel 3 in frame 2, nothing in frames 0 and 3.
    fn clip() -> Clip {
        let mask = |p: Option<usize>| (0..6).map(|i| Some(i) == p).collect::<Vec<bool>>();
        Clip {
            width: 6,
            height: 1,
            frames: vec![Vec::new(); 4],
            object: vec![mask(None), mask(Some(2)), mask(Some(3)), mask(None)],
            scene_change: None,
            empty: Vec::new(),
        }
    }

    /// Results of 0.5 everywhere plus `drift` per frame, 0.9 where the object is, and where it has been `residue`.
    fn results(residue: Option<f32>, drift: f32) -> Vec<Planar> {
        let c = clip();
        let mut been = [false; 6];
        (0..4)
            .map(|i| {
                let px: Vec<f32> = (0..6)
                    .map(|p| {
                        let v = if c.object[i][p] {
                            0.9
                        } else if been[p] {
                            residue.unwrap_or(0.5)
                        } else {
                            0.5
                        };
                        v + drift * i as f32
                    })
                    .collect();
                (0..6).for_each(|p| been[p] |= c.object[i][p]);
                Planar { width: 6, height: 1, data: [px.clone(), px.clone(), px].concat() }
            })
            .collect()
    }

    #[test]
    fn the_trail_is_the_paint_left_where_the_object_was_against_the_untouched_drift() {
        let c = clip();
        // the background repainted as it was: no trail, no drift
        let (t, u) = trail(&c, &results(None, 0.0)).unwrap();
        assert!(t.abs() < 1e-6 && u.abs() < 1e-6, "{t} {u}");
        // the object's paint kept where it has been: a trail of 0.4, untouched pixels still
        let (t, u) = trail(&c, &results(Some(0.9), 0.0)).unwrap();
        assert!((t - 0.4).abs() < 1e-6 && u.abs() < 1e-6, "{t} {u}");
        // a uniform drift shows in both: left pixels are compared with frames 0 (pixel 2, in frames 2 and 3) and 1
        // (pixel 3, in frame 3), i.e. gaps of 2, 3 and 2 frames
        let (t, u) = trail(&c, &results(None, 0.01)).unwrap();
        let want = (0.02 + 0.03 + 0.02) / 3.0;
        assert!((t - want).abs() < 1e-5 && (u - want).abs() < 1e-5, "{t} {u} {want}");
        // no object: no trail to measure
        let still = Clip { object: vec![vec![false; 6]; 4], ..clip() };
        assert_eq!(trail(&still, &results(None, 0.0)), None);
    }

    #[test]
    fn the_objects_paint_is_its_distance_from_the_photo_against_the_cold_runs() {
        let c = clip();
        let flat = |v: f32| Planar { width: 6, height: 1, data: vec![v; 18] };
        let photos = vec![flat(0.5); 4];
        // cold runs move the object's pixels 0.4 from the photo; temporal ones 0.2, then as far: 0.5, 1.0
        let cold = vec![flat(0.9); 3];
        assert!((object_paint(&c, &photos, &[flat(0.7), flat(0.7), flat(0.7)], &cold).unwrap() - 0.5).abs() < 1e-6);
        assert!((object_paint(&c, &photos, &cold, &cold).unwrap() - 1.0).abs() < 1e-6);
        // frame 0 (a cold frame in both) is left out; only the object's pixels count
        let mut warm = vec![flat(0.9), flat(0.5), flat(0.5)];
        warm[1].data[2] = 0.9;
        warm[1].data[6 + 2] = 0.9;
        warm[1].data[12 + 2] = 0.9;
        warm[2].data[3] = 0.7;
        let got = object_paint(&c, &photos, &warm, &cold).unwrap();
        assert!((got - (3.0 * 0.4 + 0.2) / (6.0 * 0.4)).abs() < 1e-6, "{got}");
        // no object in the compared frames: nothing to measure
        let still = Clip { object: vec![vec![false; 6]; 4], ..clip() };
        assert_eq!(object_paint(&still, &photos, &cold, &cold), None);
    }

    #[test]
    fn the_objects_strokes_are_its_inner_gradient_against_the_cold_runs() {
        // a 5×5 object in the middle of 7×7 frames: its inner 3×3 pixels count
        let (w, h) = (7, 7);
        let obj: Vec<bool> = (0..w * h).map(|p| (1..6).contains(&(p % w)) && (1..6).contains(&(p / w))).collect();
        let c = Clip { frames: vec![Vec::new(); 2], object: vec![obj.clone(); 2], ..blank(w, h) };
        // a grey ramp rising by `a` a pixel from left to right: a luminance gradient of 2a at every inner pixel
        let ramp = |a: f32| {
            let px: Vec<f32> = (0..w * h).map(|p| 0.2 + a * (p % w) as f32).collect();
            Planar { width: w, height: h, data: [px.clone(), px.clone(), px].concat() }
        };
        let got = object_strokes(&c, &[ramp(0.1), ramp(0.05)], &[ramp(0.1), ramp(0.1)]).unwrap();
        assert!((got - 0.5).abs() < 1e-6, "{got}");
        // flat cold runs: nothing to compare with
        assert_eq!(object_strokes(&c, &[ramp(0.1), ramp(0.05)], &[ramp(0.0), ramp(0.0)]), None);
    }

    #[test]
    fn what_the_first_frames_object_left_is_compared_with_the_empty_scene_painted_cold() {
        // 7×7 frames: a 5×5 object in the middle of frame 0, gone in frames 1 and 2; its inner 3×3 pixels count
        let (w, h) = (7, 7);
        let obj: Vec<bool> = (0..w * h).map(|p| (1..6).contains(&(p % w)) && (1..6).contains(&(p / w))).collect();
        let c =
            Clip { frames: vec![Vec::new(); 3], object: vec![obj, vec![false; 49], vec![false; 49]], ..blank(w, h) };
        assert_eq!(revealed_masks(&c).len(), 2);
        let ramp = |a: f32, base: f32| {
            let px: Vec<f32> = (0..w * h).map(|p| base + a * (p % w) as f32).collect();
            Planar { width: w, height: h, data: [px.clone(), px.clone(), px].concat() }
        };
        let photo = ramp(0.0, 0.5);
        // the cold run paints lines (gradient 0.2) and moves the colours; the stream left a flat disc at the photo's
        // colour in frame 1 and painted it half as far in frame 2
        let empty = ramp(0.1, 0.2);
        let warm = vec![photo.clone(), photo.clone(), ramp(0.05, 0.35)];
        let (paint, strokes) =
            revealed(&c, &[photo.clone(), photo.clone(), photo.clone()], &warm, &photo, &empty).unwrap();
        assert!((strokes - 0.25).abs() < 1e-6, "{strokes}");
        assert!((0.0..1.0).contains(&paint), "{paint}");
        // painted as the cold run: 1 on both
        let same = vec![photo.clone(), empty.clone(), empty.clone()];
        let (p, s) = revealed(&c, &[photo.clone(), photo.clone(), photo.clone()], &same, &photo, &empty).unwrap();
        assert!((p - 1.0).abs() < 1e-6 && (s - 1.0).abs() < 1e-6, "{p} {s}");
        // nothing in the first frame: nothing revealed
        assert!(revealed_masks(&Clip { object: vec![vec![false; 49]; 3], ..c.clone() }).is_empty());
    }

    #[test]
    fn the_rim_is_the_ring_outside_the_first_frames_object_compared_with_the_empty_scene() {
        // 20×20 frames: a 6×6 object at (4..10, 4..10) in frame 0, at the right edge (14..20) in frame 1; the ring of
        // rim_px = 3 around the first object, away from the second
        let (w, h) = (20, 20);
        let square = |x0: usize, x1: usize| -> Vec<bool> {
            (0..w * h).map(|p| (x0..x1).contains(&(p % w)) && (4..10).contains(&(p / w))).collect()
        };
        let c = Clip { frames: vec![Vec::new(); 2], object: vec![square(4, 10), square(14, 20)], ..blank(w, h) };
        assert_eq!(rim_px(w, h), 3);
        let masks = rim_masks(&c, 3);
        assert_eq!(masks.len(), 1);
        let m = &masks[0].1;
        // a ring pixel, an object pixel, a pixel next to the second object, a far one
        assert!(m[3 * w + 3] && m[12 * w + 6] && !m[6 * w + 6] && !m[6 * w + 12] && !m[18 * w + 18]);
        // the ring (12² − 6²) less its two columns within 3 px of the second object (x 11, 12; y 1..13)
        assert_eq!(m.iter().filter(|v| **v).count(), 12 * 12 - 36 - 2 * 12);
        // the empty scene painted as a ramp (strokes everywhere); frame 1 as it, or with a dark outline on the ring
        let ramp: Vec<f32> = (0..w * h).map(|p| 0.5 + 0.01 * (p % w) as f32).collect();
        let empty = Planar { width: w, height: h, data: [ramp.clone(), ramp.clone(), ramp.clone()].concat() };
        let (d, s) = rim(&c, &[empty.clone(), empty.clone()], &empty).unwrap();
        assert!(d.abs() < 1e-9 && (s - 1.0).abs() < 1e-9, "{d} {s}");
        let mut inked = empty.clone();
        for p in (0..w * h).filter(|&p| m[p]) {
            for ch in 0..3 {
                inked.data[ch * w * h + p] -= 0.2;
            }
        }
        let (d, _) = rim(&c, &[empty.clone(), inked], &empty).unwrap();
        assert!((d - 0.2).abs() < 1e-5, "{d}");
        // no object in the first frame: no rim
        assert!(rim_masks(&Clip { object: vec![vec![false; w * h]; 2], ..c.clone() }, 3).is_empty());
    }
}
