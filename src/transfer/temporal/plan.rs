//! How a partly changed frame starts and what holds it: per pixel the background plate where the frame shows its
//! scene again, the previous result where nothing changed, what moved carried along, and new content in the tone of
//! the painted pixels around it; the temporal weights, the settled age of young content, and the frame's budget.

use super::change::{box_blur, grey, motion, ChangeMask};
use super::{Plan, Previous, Start, StreamSettings, FRESH_SHARE, NEW_MARGIN, TARGET_SLACK, TEMPORAL_TERM, UNCHANGED};
use crate::imageio::Planar;
use crate::transfer::inputs::TemporalInputs;
use crate::transfer::schedule::{Init, StylizeOptions};

/// New content is held by the temporal term only gradually over the frames after it was first painted: at
/// `settle(age)` of the hold's weight, `age` the frames it has been painted (1 after its first frame), fully from
/// `YOUNG_FRAMES` on. Held at full weight from its second frame, what a partly changed frame painted in its few
/// evaluations stayed so: at 512 px a grey disc where the approaching object had been in the first frame (painted
/// from the photo for a tenth of a cold run's evaluations, then frozen). Young pixels also keep their frame's
/// evaluations at `FRESH_SHARE` or more, so a region new at frame t is painted for about four tenths of a cold run
/// over frames t..t+3.
pub const YOUNG_FRAMES: u16 = 4;

/// The share of the temporal hold a pixel painted for `age` frames gets: (age / `YOUNG_FRAMES`)², 1 from then on —
/// 1/16, 1/4, 9/16, 1: nearly free while the region is still far from converged, held as it settles.
pub(super) fn settle(age: u16) -> f32 {
    let t = (age.min(YOUNG_FRAMES) as f32) / YOUNG_FRAMES as f32;
    t * t
}

/// Decide how the frame `content` (at the result's size) starts, and set `opts` (the cold run's options)
/// accordingly. `prev`: the usable previous frame (if any) with the change mask of the frame against it. Also
/// returns, for a frame started from the previous one, what the background plate is updated from (`Held`).
pub(super) fn plan(
    prev: Option<(&Previous, ChangeMask)>,
    content: &Planar,
    cur: &[f32],
    settings: &StreamSettings,
    opts: &mut StylizeOptions,
) -> (Plan, Option<Held>) {
    let cold =
        Plan { start: Start::Cold, changed_fraction: None, pan: None, uncovered: None, trail: None, young: None };
    let Some((prev, mask)) = prev else {
        return (cold, None);
    };
    let (w, h) = (content.width, content.height);
    if mask.fraction > settings.change.scene_change as f64 {
        return (Plan { changed_fraction: Some(mask.fraction), ..cold }, None);
    }
    let start = if mask.fraction < UNCHANGED { Start::Previous } else { Start::Partial };
    // Where the scene changed since the previous frame, the background plate (the stylised still scene, kept from
    // earlier frames) serves where the frame shows that scene again — background uncovered by a moving object —
    // and the content elsewhere. Held: the previous result (weight u) and, beyond it, the plate (weight p).
    // What moved is carried along from the previous result (block-matching motion, checked per pixel); the rest of
    // the changed region starts from the content.
    let shows = shows(prev, content, settings.change.threshold);
    let n = w * h;
    let moved = if start == Start::Partial && settings.motion_px > 0 {
        motion(&grey(&prev.colour), cur, w, h, &mask.changed, settings.motion_px, settings.change.threshold)
    } else {
        vec![None; n]
    };
    // what is new starts from the frame in the painting's colours, as a cold run does: by the last cold run's colour
    // map, or without one (the photo's palette) by an affine colour map from the frame to the previous result,
    // fitted where nothing changed — from the photo's own colours the few evaluations of a partly changed frame leave
    // it visibly unpainted, and the next frame would then hold it so
    let fresh = match (&prev.colour_map, start) {
        (_, Start::Previous | Start::Cold) => content.clone(),
        (Some(map), _) => map.apply(content),
        (None, _) => in_palette(content, &prev.result, &mask.unchanged),
    };
    let mut init = prev.result.clone();
    let mut target = prev.result.clone();
    let mut weights = mask.unchanged.clone();
    // the age of what holds each pixel: the previous result's there, or where it moved from; the plate is settled
    let mut held_age = prev.age.clone();
    if start == Start::Partial {
        for i in 0..n {
            let u = mask.unchanged[i];
            let (q, layer) = match shows[i] {
                Shows::Plate => (1.0, &prev.plate),
                Shows::Underlay => (1.0, &prev.underlay),
                Shows::Other => (0.0, &prev.plate),
            };
            // the plate first where the frame shows its scene (q), then the previous result where nothing changed
            // (u), then what moved along with it
            // what moved is carried only from where the previous frame showed something other than the still
            // scene: carrying the background from beside a passing object would drag its paint (and the object's,
            // where the luminance matches by chance) into the background behind it
            let moved_from = moved[i].filter(|&j| !prev.on_plate[j]);
            let v = if moved_from.is_some() { 1.0 } else { 0.0 };
            let m = q + (1.0 - q) * (u + (1.0 - u) * v);
            weights[i] = m;
            held_age[i] = match moved_from {
                _ if q > 0.0 => YOUNG_FRAMES,
                Some(k) if u < 0.5 => prev.age[k],
                _ => prev.age[i],
            };
            for c in 0..3 {
                let j = c * n + i;
                let mv = moved_from.map_or(0.0, |k| prev.result.data[c * n + k]);
                let rest = u * prev.result.data[j] + (1.0 - u) * v * mv;
                let held = if m > 0.0 { (q * layer.data[j] + (1.0 - q) * rest) / m } else { 0.0 };
                target.data[j] = held;
            }
        }
        // what is new starts in the tone of the painted pixels around it, not only in the painting's palette: the
        // cold run's colour map is a global one, and the strokes of the painting darken and lighten regions apart
        // (where the approaching object stood in the first frame of the 512-px clip, the trees behind it started
        // 0.3 lighter than the painted trees beside them and stayed a pale disc; issue 20)
        let settled: Vec<f32> =
            (0..n).map(|i| if weights[i] >= 1.0 && held_age[i] >= YOUNG_FRAMES { 1.0 } else { 0.0 }).collect();
        let radius = ((w.max(h) as f64 * NEW_MARGIN).round() as usize).max(4);
        let toned = local_tone(&fresh, &target, &settled, radius);
        for (i, m) in weights.iter().enumerate() {
            for c in 0..3 {
                let j = c * n + i;
                init.data[j] = m * target.data[j] + (1.0 - m) * toned.data[j];
            }
        }
    }
    // new content (held by nothing: weight below one half) starts its age; young content is held at `settle` of its
    // weight, so that it goes on being painted
    let mut young = 0usize;
    let keep = weights.clone();
    let age: Vec<u16> = (0..n)
        .map(|i| {
            let a = if weights[i] < 0.5 { 0 } else { held_age[i] };
            weights[i] *= settle(a);
            young += usize::from(a < YOUNG_FRAMES);
            (a + 1).min(YOUNG_FRAMES)
        })
        .collect();
    opts.init = Init::Image(init);
    opts.scales = vec![opts.image_size];
    // one scale from an image refines (`StylizeOptions::refine`) when the cold run's finest scale did: the frame's
    // loss is compared with that run's
    opts.refine = prev.reference_refined;
    opts.iterations = opts.iterations.min(settings.max_evaluations);
    // new and young content (not the plate, not the previous result, not moved along; or painted for fewer than
    // `YOUNG_FRAMES` frames), over more than isolated pixels, gets at least a share of a cold frame's evaluations
    // before the frame may stop on the whole image's loss: a small region barely moves that loss, and at 512 px a
    // frame whose object left 5 % of the pixels new stopped after 2.6 evaluations, which left what it uncovered
    // unpainted, held from then on
    if young as f64 > UNCHANGED * n as f64 {
        opts.min_evaluations = Some(prev.reference_evaluations / FRESH_SHARE);
    }
    opts.max_evaluations = Some(settings.max_evaluations);
    // within TARGET_SLACK of the last cold run's loss (without the temporal term); besides, the early stop and the
    // evaluation budget
    opts.target_loss = Some(prev.reference * (1.0 + TARGET_SLACK));
    // what shows the background again: held to its last result, which the trail is measured against
    let uncovered: Vec<(usize, [f32; 3])> = (0..n)
        .filter(|&i| start == Start::Partial && shows[i] != Shows::Other && !prev.on_plate[i])
        .map(|i| (i, [0, 1, 2].map(|c| target.data[c * n + i])))
        .collect();
    let fraction = uncovered.len() as f64 / n.max(1) as f64;
    if settings.temporal_weight > 0.0 {
        // every exported objective has the term (manifest.json); a model without it paints frames unheld
        if opts.weights.set_term(TEMPORAL_TERM, settings.temporal_weight).is_ok() {
            opts.temporal = Some(TemporalInputs { previous: target, weights });
        }
    }
    let held = Held { unchanged: mask.unchanged, shows, uncovered, age, keep };
    let plan = Plan {
        start,
        changed_fraction: Some(mask.fraction),
        pan: None,
        uncovered: Some(fraction),
        trail: None,
        young: Some(young as f64 / n.max(1) as f64),
    };
    (plan, Some(held))
}

/// Per pixel, whether `frame` shows the plate's scene — every channel within `threshold` of the colours the plate
/// was taken from (`plate_content`) —, else the underlay's, else something else. Compared pixel by pixel, without the
/// blur, the margin (`dilate_px`) and the ramp (`feather_px`) of the change mask between two frames: the plate holds a
/// still scene, and what differs from it is the moving object itself. With the change mask's margin the background
/// beside a moving object was repainted in every frame the object passed, in a frame's few evaluations, and held so
/// (the trail of issue 20: 17.7/255 at 192 px on the real weights; on the random-weight clip at 128 px 15.8, 8.2 with
/// a 2-px ramp on unblurred luminance, 1.1 without the ramp). On colour, not luminance, so that a red ball on a grey
/// road of the same luminance is not taken for the road.
pub(super) fn shows(prev: &Previous, frame: &Planar, threshold: f32) -> Vec<Shows> {
    let n = frame.width * frame.height;
    let same =
        |layer: &Planar, i: usize| (0..3).all(|c| (layer.data[c * n + i] - frame.data[c * n + i]).abs() <= threshold);
    (0..n)
        .map(|i| {
            if same(&prev.plate_content, i) {
                Shows::Plate
            } else if same(&prev.underlay_content, i) {
                Shows::Underlay
            } else {
                Shows::Other
            }
        })
        .collect()
}

/// What a frame shows at a pixel: the plate's scene, the scene under the plate (an object that had stopped there has
/// left), or something else (what moves, or what is new).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shows {
    Plate,
    Underlay,
    Other,
}

/// Per pixel, for a frame started from the previous one: the weight of "the scene did not change since the previous
/// frame" and of "the frame shows the plate's scene" (1: yes).
pub(super) struct Held {
    pub(super) unchanged: Vec<f32>,
    pub(super) shows: Vec<Shows>,
    /// The pixels that show the still background again, with the colour they are held to.
    pub(super) uncovered: Vec<(usize, [f32; 3])>,
    /// The result's `Previous::age` once the frame is painted.
    pub(super) age: Vec<u16>,
    /// Per pixel, how much of the starting image is held (the previous result, the plate, what moved along; before
    /// `settle`): below one half the content is new.
    pub(super) keep: Vec<f32>,
}

/// A pixel whose scene has not changed for this many frames in a row enters the plate even where the plate showed
/// something else (an object that stopped, a scene that changed for good). Fewer frames would let the band beside
/// a moving object — repainted in few evaluations while the object passed, then still for a frame or two — into the
/// plate, and from there back into the background behind the object: the trail of issue 20.
pub const SETTLE_FRAMES: u16 = 8;

/// The share of a window that must be settled, painted pixels for `local_tone` to carry the content fully into
/// their tone; below it the local map fades out towards the global one.
const TONE_SUPPORT: f32 = 0.1;

/// How far `local_tone`'s gain is drawn towards 1 (a variance, in [0, 1]² units: a standard deviation of 13/255):
/// where the painted pixels around are flat the map only shifts the tone, it does not flatten what is new.
const TONE_EPS: f32 = 2.5e-3;

/// `fresh` (the frame in the painting's palette) carried, channel by channel, into the tone of the painted pixels
/// around it: at each pixel, the gain and offset that best take `fresh` to `painted` over the pixels `held` marks
/// (1) within a square window of radius `r` — the local linear model of a guided filter (He et al. 2010) with its
/// gain drawn towards 1 by `TONE_EPS` — faded out where the window holds less than `TONE_SUPPORT` of such pixels.
fn local_tone(fresh: &Planar, painted: &Planar, held: &[f32], r: usize) -> Planar {
    let (w, h) = (fresh.width, fresh.height);
    let n = w * h;
    let share = box_blur(held, w, h, r);
    let mut out = fresh.clone();
    for c in 0..3 {
        let (x, y) = (&fresh.data[c * n..(c + 1) * n], &painted.data[c * n..(c + 1) * n]);
        let mean = |f: &dyn Fn(usize) -> f32| box_blur(&(0..n).map(|i| held[i] * f(i)).collect::<Vec<_>>(), w, h, r);
        let (sx, sy) = (mean(&|i| x[i]), mean(&|i| y[i]));
        let (sxx, sxy) = (mean(&|i| x[i] * x[i]), mean(&|i| x[i] * y[i]));
        for i in 0..n {
            let s = share[i];
            if s <= 0.0 {
                continue;
            }
            let (mx, my) = (sx[i] / s, sy[i] / s);
            let vxx = (sxx[i] / s - mx * mx).max(0.0);
            let vxy = sxy[i] / s - mx * my;
            let a = ((vxy + TONE_EPS) / (vxx + TONE_EPS)).clamp(0.0, 2.0);
            let t = (s / TONE_SUPPORT).min(1.0);
            out.data[c * n + i] = (t * (a * x[i] + my - a * mx) + (1.0 - t) * x[i]).clamp(0.0, 1.0);
        }
    }
    out
}

/// `content` mapped by the affine colour transform (3×3 and an offset) that best takes it to `painted` over the
/// pixels where `unchanged` is 1 (least squares), clamped to [0, 1]; `content` itself when too few pixels fit.
#[allow(clippy::needless_range_loop)] // a 4×4 linear system: indices read as the algebra
fn in_palette(content: &Planar, painted: &Planar, unchanged: &[f32]) -> Planar {
    let n = content.width * content.height;
    let (mut xtx, mut xty) = ([[0.0f64; 4]; 4], [[0.0f64; 3]; 4]);
    let mut count = 0usize;
    for i in (0..n).step_by(3).filter(|&i| unchanged[i] >= 1.0) {
        let x = [content.data[i] as f64, content.data[n + i] as f64, content.data[2 * n + i] as f64, 1.0];
        for a in 0..4 {
            for b in 0..4 {
                xtx[a][b] += x[a] * x[b];
            }
            for c in 0..3 {
                xty[a][c] += x[a] * painted.data[c * n + i] as f64;
            }
        }
        count += 1;
    }
    if count < 64 {
        return content.clone();
    }
    // ridge towards nothing, then Gauss-Jordan on the 4×4 system for the three right-hand sides
    for (a, row) in xtx.iter_mut().enumerate() {
        row[a] += 1e-3 * count as f64;
    }
    for col in 0..4 {
        let piv = (col..4).max_by(|&a, &b| xtx[a][col].abs().total_cmp(&xtx[b][col].abs())).unwrap_or(col);
        xtx.swap(col, piv);
        xty.swap(col, piv);
        let d = xtx[col][col];
        if d.abs() < 1e-12 {
            return content.clone();
        }
        for r in 0..4 {
            if r != col {
                let f = xtx[r][col] / d;
                for k in 0..4 {
                    xtx[r][k] -= f * xtx[col][k];
                }
                for k in 0..3 {
                    xty[r][k] -= f * xty[col][k];
                }
            }
        }
    }
    let coef: Vec<[f64; 3]> = (0..4).map(|r| [0, 1, 2].map(|k| xty[r][k] / xtx[r][r])).collect();
    let mut out = content.clone();
    for i in 0..n {
        let x = [content.data[i] as f64, content.data[n + i] as f64, content.data[2 * n + i] as f64, 1.0];
        for c in 0..3 {
            let v: f64 = (0..4).map(|r| coef[r][c] * x[r]).sum();
            out.data[c * n + i] = v.clamp(0.0, 1.0) as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::change::{blurred_colour, blurred_grey, compare, ChangeParams};
    use super::super::DEFAULT_TEMPORAL_WEIGHT;
    use super::*;
    use crate::transfer::color;
    use crate::transfer::inputs::Weights;

    fn grey_of(img: &Planar, i: usize) -> f32 {
        color::luma(img)[i]
    }

    fn flat(w: usize, h: usize, v: f32) -> Planar {
        Planar { width: w, height: h, data: vec![v; 3 * w * h] }
    }

    fn y_x(y: usize, x: usize, w: usize) -> usize {
        y * w + x
    }

    #[test]
    fn the_palette_map_recovers_an_affine_colour_transform() {
        let (w, h) = (32, 24);
        let n = w * h;
        let mut c = Planar::new(w, h);
        for i in 0..3 * n {
            c.data[i] = ((i * 37 % 101) as f32) / 101.0;
        }
        let mut painted = c.clone();
        for i in 0..n {
            let (r, g, b) = (c.data[i], c.data[n + i], c.data[2 * n + i]);
            painted.data[i] = 0.5 * r + 0.2 * g + 0.1;
            painted.data[n + i] = 0.3 * b + 0.4;
            painted.data[2 * n + i] = 0.6 * g + 0.1 * r;
        }
        let got = in_palette(&c, &painted, &vec![1.0; n]);
        let err = got.data.iter().zip(&painted.data).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(err < 0.01, "{err}");
        // nothing unchanged to fit on: the content itself
        assert_eq!(in_palette(&c, &painted, &vec![0.0; n]).data, c.data);
    }

    #[test]
    fn the_plate_is_matched_on_colour_pixel_by_pixel() {
        let (w, h) = (8, 4);
        let n = w * h;
        let grey = flat(w, h, 0.3);
        let prev = Previous {
            key: String::new(),
            colour: vec![0.3; 3 * n],
            result: flat(w, h, 0.5),
            canvas: None,
            loss: 1.0,
            reference: 1.0,
            reference_evaluations: 100,
            reference_refined: false,
            plate: flat(w, h, 0.5),
            plate_content: grey.clone(),
            underlay: flat(w, h, 0.7),
            underlay_content: flat(w, h, 0.9),
            still_frames: vec![0; n],
            on_plate: vec![true; n],
            age: vec![YOUNG_FRAMES; n],
            colour_map: None,
            finish: None,
        };
        let mut frame = grey.clone();
        // a red pixel of the grey's luminance (0.299 r + 0.587 g + 0.114 b = 0.3), a pixel showing the underlay,
        // noise within the threshold
        let (r, b) = (0.6f32, 0.0f32);
        let g = (0.3 - 0.299 * r - 0.114 * b) / 0.587;
        (frame.data[3], frame.data[n + 3], frame.data[2 * n + 3]) = (r, g, b);
        assert!((grey_of(&frame, 3) - 0.3).abs() < 1e-6);
        for c in 0..3 {
            frame.data[c * n + 5] = 0.9;
            frame.data[c * n + 6] += 0.04;
        }
        let s = shows(&prev, &frame, ChangeParams::DEFAULT.threshold);
        assert_eq!(s[3], Shows::Other, "a red pixel is not the grey plate, whatever its luminance");
        assert_eq!(s[5], Shows::Underlay);
        assert_eq!(s[6], Shows::Plate, "noise within the threshold");
        // no margin: the neighbours of what differs still show the plate
        assert!([2, 4, 11].iter().all(|&i| s[i] == Shows::Plate));
    }

    #[test]
    fn new_content_takes_the_tone_of_the_painted_pixels_around_it() {
        // a 40×30 frame painted darker than its palette map (0.5 x + 0.1 per channel) on the left, with a gradient
        // content; the right third is new (held by nothing)
        let (w, h) = (40, 30);
        let n = w * h;
        let mut fresh = flat(w, h, 0.0);
        for i in 0..n {
            for c in 0..3 {
                fresh.data[c * n + i] = 0.2 + 0.6 * ((i % w) as f32 / w as f32) * (1.0 + c as f32 / 4.0) / 1.5;
            }
        }
        let mut painted = fresh.clone();
        painted.data.iter_mut().for_each(|v| *v = 0.5 * *v + 0.1);
        let held: Vec<f32> = (0..n).map(|i| if i % w < 27 { 1.0 } else { 0.0 }).collect();
        let toned = local_tone(&fresh, &painted, &held, 10);
        // near the painted pixels the new ones go most of the way to the same map (the gain drawn towards 1 keeps
        // the rest); beyond the window's reach they keep the palette
        for y in 0..h {
            for c in 0..3 {
                let j = c * n + y * w + 30;
                let map = 0.5 * fresh.data[j] + 0.1;
                let (off, before) = ((toned.data[j] - map).abs(), (fresh.data[j] - map).abs());
                assert!(off < 0.3 * before, "{} at x 30: {off} of {before}", toned.data[j]);
            }
        }
        let far = local_tone(&fresh, &painted, &held, 1);
        assert_eq!(far.data[y_x(5, 35, w)], fresh.data[y_x(5, 35, w)]);
        // with nothing painted around, the palette map stays as it is
        assert_eq!(local_tone(&fresh, &painted, &vec![0.0; n], 10).data, fresh.data);
    }

    #[test]
    fn young_content_is_held_gradually_and_keeps_its_share_of_evaluations() {
        let (w, h) = (48, 32);
        let n = w * h;
        let scene = flat(w, h, 0.3);
        let settings = StreamSettings::new(DEFAULT_TEMPORAL_WEIGHT);
        // a settled result except a 10×10 square painted for one frame so far
        let square = |i: usize| (4..14).contains(&(i % w)) && (4..14).contains(&(i / w));
        let prev = Previous {
            key: String::new(),
            colour: blurred_colour(&scene, &settings.change),
            result: flat(w, h, 0.5),
            canvas: None,
            loss: 1.0,
            reference: 1.0,
            reference_evaluations: 100,
            reference_refined: false,
            plate: flat(w, h, 0.5),
            plate_content: scene.clone(),
            underlay: flat(w, h, 0.5),
            underlay_content: scene.clone(),
            still_frames: vec![1; n],
            on_plate: vec![true; n],
            age: (0..n).map(|i| if square(i) { 1 } else { YOUNG_FRAMES }).collect(),
            colour_map: None,
            finish: None,
        };
        let weights = Weights {
            terms: vec![(TEMPORAL_TERM.to_string(), 0.0)],
            layers: Vec::new(),
            style_side: Vec::new(),
            normalize: true,
        };
        let planned = |frame: &Planar, prev: &Previous| {
            let cur = blurred_grey(frame, &settings.change);
            let mask = compare(&prev.colour, &blurred_colour(frame, &settings.change), w, h, &settings.change);
            let mut opts = StylizeOptions::new(weights.clone());
            let (plan, held) = plan(Some((prev, mask)), frame, &cur, &settings, &mut opts);
            (plan, held.expect("started from the previous frame"), opts)
        };
        // nothing changed: the square is held at 1/16 of the weight, the rest fully; the frame keeps its share
        let (p, held, opts) = planned(&scene, &prev);
        assert_eq!(p.start, Start::Previous);
        assert_eq!(p.young, Some(100.0 / n as f64));
        let t = opts.temporal.as_ref().expect("the temporal term is on");
        assert_eq!(t.weights[5 * w + 5], settle(1));
        assert_eq!(t.weights[20 * w + 30], 1.0);
        assert_eq!((held.age[5 * w + 5], held.age[20 * w + 30]), (2, YOUNG_FRAMES));
        assert_eq!(opts.min_evaluations, Some(100 / FRESH_SHARE));
        // the ramp: nearly free at first, held fully from YOUNG_FRAMES on
        assert!(settle(0) == 0.0 && settle(1) < 0.1 && settle(2) < settle(3) && settle(3) < 1.0);
        assert_eq!(settle(YOUNG_FRAMES), 1.0);
        assert_eq!(settle(YOUNG_FRAMES + 3), 1.0);
        // settled everywhere: held fully, and free to stop on the loss alone
        let settled = Previous { age: vec![YOUNG_FRAMES; n], ..prev.clone() };
        let (_, held, opts) = planned(&scene, &settled);
        assert!(opts.temporal.as_ref().unwrap().weights.iter().all(|&m| m == 1.0));
        assert!(held.age.iter().all(|&a| a == YOUNG_FRAMES));
        assert_eq!(opts.min_evaluations, None);
        // something new (an unmatched patch of another colour): not held, its age starts at 1
        let mut frame = scene.clone();
        for i in (0..n).filter(|&i| (30..40).contains(&(i % w)) && (16..26).contains(&(i / w))) {
            frame.data[i] = 0.9;
        }
        let (p, held, opts) = planned(&frame, &settled);
        assert_eq!(p.start, Start::Partial);
        assert_eq!(opts.temporal.as_ref().unwrap().weights[20 * w + 35], 0.0);
        assert_eq!(held.age[20 * w + 35], 1);
        assert_eq!(opts.min_evaluations, Some(100 / FRESH_SHARE));
        assert_eq!((held.keep[20 * w + 35], held.keep[5 * w + 5]), (0.0, 1.0), "new, held");
    }
}
