//! Camera streams (Ruder, Dosovitskiy & Brox 2016, "Artistic style transfer for videos"): a per-pixel change mask
//! between a camera's consecutive frames decides how each frame starts —
//! - nothing changed: from the previous result, stopping as soon as it is as good;
//! - part of the scene changed: from the previous result where it did not and the content where it did, with the
//!   temporal term (the previous result as a target, weighted per pixel, 0 where the scene changed) holding the
//!   still background in place, so that it does not repaint differently on every frame (flicker);
//! - most of the scene changed (lights on, camera moved), or no usable previous frame: a cold run.
//!
//! The daemon's workers and `fuchun stylize` on a frame sequence use the same `Stream`.

use serde::{Deserialize, Serialize};

use super::color;
use super::inputs::TemporalInputs;
use anyhow::Result;

use super::schedule::{stylize_with, Hooks, Init, Outcome, Palette, ScaleReport, StyleSource, StylizeOptions};
use super::targets::StyleTargets;
use super::tiled::plan::crop;
use crate::engine::Model;
use crate::imageio::Planar;

/// How consecutive frames are compared (at the result's size, on luminance in [0, 1]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChangeParams {
    /// A pixel changed when its blurred luminance differs by more than this (0–1). Sensor noise and JPEG
    /// re-compression stay well below it once blurred.
    pub threshold: f32,
    /// Radius (pixels) of the box blur applied twice to both frames before comparing.
    pub blur_px: usize,
    /// Changed regions grow by this many pixels (square), to cover the soft edges of a moving object.
    pub dilate_px: usize,
    /// Width (pixels) of the ramp of the temporal weight and of the blend of the starting image around changed
    /// regions: no hard seam where the previous result meets the newly painted part.
    pub feather_px: usize,
    /// Above this changed fraction the frame is a new scene: a cold run.
    pub scene_change: f32,
}

impl Default for ChangeParams {
    fn default() -> Self {
        ChangeParams::DEFAULT
    }
}

impl ChangeParams {
    pub const DEFAULT: ChangeParams =
        ChangeParams { threshold: 0.06, blur_px: 2, dilate_px: 6, feather_px: 4, scene_change: 0.5 };

    pub fn validate(&self) -> Result<(), String> {
        if !(self.threshold.is_finite() && self.threshold > 0.0 && self.threshold < 1.0) {
            return Err(format!("threshold must be in (0, 1), got {}", self.threshold));
        }
        if !(self.scene_change.is_finite() && self.scene_change > 0.0 && self.scene_change <= 1.0) {
            return Err(format!("scene_change must be in (0, 1], got {}", self.scene_change));
        }
        if self.blur_px > 64 || self.dilate_px > 256 || self.feather_px > 256 {
            return Err("blur_px (≤ 64), dilate_px and feather_px (≤ 256) are pixel radii".into());
        }
        Ok(())
    }
}

/// Which pixels changed between two frames of the same size.
#[derive(Debug, Clone)]
pub struct ChangeMask {
    pub width: usize,
    pub height: usize,
    /// Row-major; true where the scene changed (after dilation).
    pub changed: Vec<bool>,
    /// Fraction of changed pixels.
    pub fraction: f64,
    /// Row-major, in [0, 1]: 1 far from any change, 0 on changed pixels, a ramp of `feather_px` between.
    pub unchanged: Vec<f32>,
}

/// Box filter of radius `r` (mean over the (2r+1)² window clipped to the image), separable, O(1) per pixel.
fn box_blur(v: &[f32], w: usize, h: usize, r: usize) -> Vec<f32> {
    if r == 0 {
        return v.to_vec();
    }
    let pass = |src: &[f32], len: usize, lines: usize, at: &dyn Fn(usize, usize) -> usize| -> Vec<f32> {
        let mut out = vec![0.0f32; src.len()];
        let mut prefix = vec![0.0f64; len + 1];
        for line in 0..lines {
            for i in 0..len {
                prefix[i + 1] = prefix[i] + src[at(line, i)] as f64;
            }
            for i in 0..len {
                let (a, b) = (i.saturating_sub(r), (i + r + 1).min(len));
                out[at(line, i)] = ((prefix[b] - prefix[a]) / (b - a) as f64) as f32;
            }
        }
        out
    };
    let rows = pass(v, w, h, &|y, x| y * w + x);
    pass(&rows, h, w, &|x, y| y * w + x)
}

/// Grow the true pixels by `r` (square window), separably.
fn dilate(m: &[bool], w: usize, h: usize, r: usize) -> Vec<bool> {
    if r == 0 {
        return m.to_vec();
    }
    let pass = |src: &[bool], len: usize, lines: usize, at: &dyn Fn(usize, usize) -> usize| -> Vec<bool> {
        let mut out = vec![false; src.len()];
        for line in 0..lines {
            // distance to the last true pixel seen, forwards then backwards
            let mut last: Option<usize> = None;
            for i in 0..len {
                if src[at(line, i)] {
                    last = Some(i);
                }
                out[at(line, i)] = last.is_some_and(|j| i - j <= r);
            }
            let mut next: Option<usize> = None;
            for i in (0..len).rev() {
                if src[at(line, i)] {
                    next = Some(i);
                }
                if next.is_some_and(|j| j - i <= r) {
                    out[at(line, i)] = true;
                }
            }
        }
        out
    };
    let rows = pass(m, w, h, &|y, x| y * w + x);
    pass(&rows, h, w, &|x, y| y * w + x)
}

/// The change mask between `prev` and `cur` (same size): both blurred, compared per colour channel, thresholded,
/// dilated; the soft `unchanged` map ramps over `feather_px` pixels outside the changed region.
pub fn change_mask(prev: &Planar, cur: &Planar, p: &ChangeParams) -> ChangeMask {
    assert_eq!((prev.width, prev.height), (cur.width, cur.height), "frames of different sizes");
    compare(&blurred_colour(prev, p), &blurred_colour(cur, p), cur.width, cur.height, p)
}

/// The change mask from blurred planes of two frames of `w × h` (`blurred_colour`: a pixel changed where any plane
/// moved by more than the threshold).
fn compare(a: &[f32], b: &[f32], w: usize, h: usize, p: &ChangeParams) -> ChangeMask {
    let n = w * h;
    let planes = a.len() / n.max(1);
    let raw: Vec<bool> =
        (0..n).map(|i| (0..planes).any(|c| (a[c * n + i] - b[c * n + i]).abs() > p.threshold)).collect();
    let changed = dilate(&raw, w, h, p.dilate_px);
    let fraction = changed.iter().filter(|c| **c).count() as f64 / (w * h).max(1) as f64;
    // the ramp: unchanged pixels within feather_px of a change get a weight growing with the distance (from a box
    // filter of the changed region grown by feather_px, so changed pixels themselves stay at exactly 0)
    let unchanged = if p.feather_px == 0 {
        changed.iter().map(|c| if *c { 0.0 } else { 1.0 }).collect()
    } else {
        let grown = dilate(&changed, w, h, p.feather_px);
        let g: Vec<f32> = grown.iter().map(|c| if *c { 1.0 } else { 0.0 }).collect();
        let soft = box_blur(&g, w, h, p.feather_px);
        changed.iter().zip(&soft).map(|(c, s)| if *c { 0.0 } else { (1.0 - s).clamp(0.0, 1.0) }).collect()
    };
    ChangeMask { width: w, height: h, changed, fraction, unchanged }
}

/// Blurred luminance, as the motion search and the pan search compare it (row-major, one value per pixel).
#[cfg(test)]
fn blurred_grey(img: &Planar, p: &ChangeParams) -> Vec<f32> {
    grey(&blurred_colour(img, p))
}

/// The luminance of colour planes (R, G, B, row-major): of `blurred_colour`'s, the blurred luminance the motion and
/// pan searches compare (the blur and the luminance are both linear, so the order does not matter).
fn grey(colour: &[f32]) -> Vec<f32> {
    let n = colour.len() / 3;
    (0..n).map(|i| color::rgb_to_ycbcr(colour[i], colour[n + i], colour[2 * n + i]).0).collect()
}

/// Blurred colour planes (R, G, B, row-major), as the change mask compares them. On colour, not luminance: where a
/// moving object had about the background's luminance, a mask on luminance called the pixels it left (or reached)
/// unchanged, and the temporal term held them to the previous result — at 512 px a ring of the first frame's object
/// stayed in the background after it had gone (issue 20).
fn blurred_colour(img: &Planar, p: &ChangeParams) -> Vec<f32> {
    let (w, h) = (img.width, img.height);
    img.data.chunks(w * h).flat_map(|c| box_blur(&box_blur(c, w, h, p.blur_px), w, h, p.blur_px)).collect()
}

/// Side of the blocks of the motion search, in pixels.
const BLOCK: usize = 8;

/// Block-matching motion of the changed region (a coarse dense optical flow): for each `BLOCK`² block holding a
/// changed pixel, the displacement (dx, dy), |dx|, |dy| ≤ `radius`, such that `prev` at (x + dx, y + dy) best
/// matches `cur` at (x, y) (mean absolute difference of the blurred luminances `a`, `b`). Returns, per pixel, the
/// source position in `prev` when the match holds at that pixel (difference ≤ `threshold`), else None.
fn motion(
    a: &[f32],
    b: &[f32],
    w: usize,
    h: usize,
    changed: &[bool],
    radius: usize,
    threshold: f32,
) -> Vec<Option<usize>> {
    let mut src = vec![None; w * h];
    let r = radius as isize;
    for by in (0..h).step_by(BLOCK) {
        for bx in (0..w).step_by(BLOCK) {
            let (ye, xe) = ((by + BLOCK).min(h), (bx + BLOCK).min(w));
            if !(by..ye).any(|y| (bx..xe).any(|x| changed[y * w + x])) {
                continue;
            }
            let mut best = (f32::INFINITY, 0isize, 0isize);
            for dy in -r..=r {
                for dx in -r..=r {
                    let (mut sum, mut count) = (0.0f32, 0usize);
                    for y in by..ye {
                        let sy = y as isize + dy;
                        if sy < 0 || sy >= h as isize {
                            continue;
                        }
                        for x in bx..xe {
                            let sx = x as isize + dx;
                            if sx < 0 || sx >= w as isize {
                                continue;
                            }
                            sum += (b[y * w + x] - a[sy as usize * w + sx as usize]).abs();
                            count += 1;
                        }
                    }
                    // a displacement must see most of the block; ties go to the smaller displacement
                    if count * 2 >= (ye - by) * (xe - bx) {
                        let cost = sum / count as f32 + 1e-4 * (dx.abs() + dy.abs()) as f32;
                        if cost < best.0 {
                            best = (cost, dx, dy);
                        }
                    }
                }
            }
            if !best.0.is_finite() {
                continue;
            }
            for y in by..ye {
                for x in bx..xe {
                    let (sx, sy) = (x as isize + best.1, y as isize + best.2);
                    if changed[y * w + x] && sx >= 0 && sy >= 0 && (sx as usize) < w && (sy as usize) < h {
                        let j = sy as usize * w + sx as usize;
                        if (b[y * w + x] - a[j]).abs() <= threshold {
                            src[y * w + x] = Some(j);
                        }
                    }
                }
            }
        }
    }
    src
}

/// How a frame was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// No usable previous frame, or a new scene: the full coarse-to-fine schedule from the content.
    Cold,
    /// Nothing changed: from the previous result.
    Previous,
    /// Part of the scene changed: the previous result where it did not, the content where it did.
    Partial,
}

impl Start {
    pub fn as_str(self) -> &'static str {
        match self {
            Start::Cold => "cold",
            Start::Previous => "previous",
            Start::Partial => "partial",
        }
    }
}

/// Settings of a stream (a camera, a clip).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamSettings {
    /// Use the previous frame at all (false: every frame is a cold run).
    pub enabled: bool,
    pub change: ChangeParams,
    /// Weight of the temporal term (0: frames start from the previous result but nothing holds them to it).
    pub temporal_weight: f32,
    /// Evaluation budget of a frame that starts from the previous result.
    pub max_evaluations: usize,
    /// Search radius (pixels) of the motion search that carries the previous result along with what moved
    /// (0: no motion search; what moved starts from the content).
    pub motion_px: usize,
}

impl StreamSettings {
    pub fn new(temporal_weight: f32) -> StreamSettings {
        StreamSettings {
            enabled: true,
            change: ChangeParams::default(),
            temporal_weight,
            max_evaluations: DEFAULT_MAX_EVALUATIONS,
            motion_px: DEFAULT_MOTION_PX,
        }
    }
}

/// Default search radius of the motion search (pixels of the result: 16 px between frames at 256 px).
pub const DEFAULT_MOTION_PX: usize = 16;

/// Default evaluation budget of a frame started from the previous result (a cold 256 px frame takes 150–300).
pub const DEFAULT_MAX_EVALUATIONS: usize = 60;

/// The palette of camera streams and frame sequences unless one is given: the painting's, as for single images
/// (issue 18: with the photo's own palette a daemon style missed the painting's colours on all 12 bench pairs,
/// palette 3.91 against 1.16). It used to be the photo's because the carried frames cost partly changed frames
/// more; with the plate compared per pixel (issue 20) the real weights measure, at 192 px, evaluations 0.17 of a
/// cold frame, flicker 0.17 of cold runs' and a trail of 4.5/255 on the crossing clip (the photo's palette: 0.09,
/// 0.12, 3.7): inside the targets (docs/performance.md).
pub const STREAM_PALETTE: Palette = Palette::Style;

/// Default weight of the temporal term (with the default, normalised term weights; docs/performance.md).
pub const DEFAULT_TEMPORAL_WEIGHT: f32 = 200.0;

/// The objective's term that holds a frame to the previous result (its inputs: `inputs::set_temporal`).
pub const TEMPORAL_TERM: &str = "temporal";

/// What is kept of a stream's last frame.
#[derive(Debug, Clone)]
pub struct Previous {
    /// What must match for the previous frame to be used (style and its settings).
    pub key: String,
    /// The content at the result's size, as the change mask compares it: its blurred colour planes (and, through
    /// `grey`, the motion and pan searches: their luminance).
    pub colour: Vec<f32>,
    pub result: Planar,
    /// The result with the margin it was optimised in (`Outcome::canvas`): the next frame starts with that margin.
    /// None after a camera pan (what lies beyond the view moved).
    pub canvas: Option<Planar>,
    /// The total loss the result reached, without the temporal term.
    pub loss: f64,
    /// The loss of the last cold run of this stream: what a frame started from the previous one must come close to
    /// (anchored there, so that small shortfalls do not add up from frame to frame).
    pub reference: f64,
    /// The evaluations of the last cold run (all scales): a frame's new content gets at least a share of them
    /// (`FRESH_SHARE`).
    pub reference_evaluations: usize,
    /// The background plate: per pixel, the result of the last frame in which the pixel's scene had not changed
    /// since the frame before (so not covered by something moving), and that frame's content (blurred luminance).
    pub plate: Planar,
    /// The frame's own colours where the plate was taken (compared with each new frame: `shows`).
    pub plate_content: Planar,
    /// What the plate held before something settled over it (an object that stopped for `SETTLE_FRAMES`), with its
    /// colours: when the object leaves, the background it uncovers comes back from here.
    pub underlay: Planar,
    pub underlay_content: Planar,
    /// Per pixel, for how many frames in a row its scene has not changed (0: it changed in the last frame).
    pub still_frames: Vec<u16>,
    /// Per pixel: the frame showed the plate's scene there (the still background, not something moving over it).
    pub on_plate: Vec<bool>,
    /// Per pixel, for how many frames the result there has been painted since it was new content (followed along
    /// what moved; `YOUNG_FRAMES` and more: settled — a cold run's pixels, the plate's).
    pub age: Vec<u16>,
    /// The colour map of the last cold run (`Palette::Style`): the frames after it are carried by it.
    pub colour_map: Option<color::ColourMap>,
}

impl Previous {
    /// The previous frame as seen after the camera moved by (dx, dy): every kept image `v` becomes
    /// `v(x + dx, y + dy)`; what was outside the view is unknown (luminance +inf: changed whatever the frame shows;
    /// images 0, never held since its weight is 0).
    fn shifted(&self, w: usize, h: usize, dx: isize, dy: isize) -> Previous {
        let shifted = |p: &Planar, fill: f32| Planar {
            width: w,
            height: h,
            data: p.data.chunks(w * h).flat_map(|c| shift_values(c, w, h, dx, dy, fill)).collect(),
        };
        // images 0 outside the view (never held: weight 0), colours +inf (never matched)
        let planar = |p: &Planar| shifted(p, 0.0);
        Previous {
            key: self.key.clone(),
            colour: self.colour.chunks(w * h).flat_map(|c| shift_values(c, w, h, dx, dy, f32::INFINITY)).collect(),
            result: planar(&self.result),
            canvas: None,
            loss: self.loss,
            reference: self.reference,
            reference_evaluations: self.reference_evaluations,
            plate: planar(&self.plate),
            plate_content: shifted(&self.plate_content, f32::INFINITY),
            underlay: planar(&self.underlay),
            underlay_content: shifted(&self.underlay_content, f32::INFINITY),
            // what came into view has not been still, and has shown no plate
            still_frames: shift_values(&self.still_frames, w, h, dx, dy, 0),
            on_plate: shift_values(&self.on_plate, w, h, dx, dy, false),
            // what came into view is new
            age: shift_values(&self.age, w, h, dx, dy, 0),
            colour_map: self.colour_map.clone(),
        }
    }
}

/// `out(x, y) = v(x + dx, y + dy)` over a `w × h` image, `fill` where that falls outside.
fn shift_values<T: Copy>(v: &[T], w: usize, h: usize, dx: isize, dy: isize, fill: T) -> Vec<T> {
    let mut out = vec![fill; w * h];
    for y in 0..h {
        let sy = y as isize + dy;
        if sy < 0 || sy >= h as isize {
            continue;
        }
        for x in 0..w {
            let sx = x as isize + dx;
            if sx >= 0 && sx < w as isize {
                out[y * w + x] = v[sy as usize * w + sx as usize];
            }
        }
    }
    out
}

/// The translation (dx, dy), |dx|, |dy| ≤ `radius`, that best maps `a` onto `b` — b(x, y) ≈ a(x + dx, y + dy):
/// how far a panning camera turned between two frames. Mean absolute difference over every other pixel of the
/// overlap, which must cover half the frame; ties go to the smaller shift.
fn global_shift(a: &[f32], b: &[f32], w: usize, h: usize, radius: usize) -> (isize, isize) {
    let r = radius as isize;
    let (wi, hi) = (w as isize, h as isize);
    let mut best = (f32::INFINITY, 0, 0);
    for dy in -r..=r {
        for dx in -r..=r {
            let (x0, x1, y0, y1) = ((-dx).max(0), (wi - dx).min(wi), (-dy).max(0), (hi - dy).min(hi));
            if x1 <= x0 || y1 <= y0 || ((x1 - x0) * (y1 - y0) * 2) < wi * hi {
                continue;
            }
            let (mut sum, mut count) = (0.0f32, 0usize);
            for y in (y0..y1).step_by(2) {
                for x in (x0..x1).step_by(2) {
                    sum += (b[(y * wi + x) as usize] - a[((y + dy) * wi + x + dx) as usize]).abs();
                    count += 1;
                }
            }
            let cost = sum / count as f32 + 1e-4 * (dx.abs() + dy.abs()) as f32;
            if cost < best.0 {
                best = (cost, dx, dy);
            }
        }
    }
    (best.1, best.2)
}

/// A frame against the previous one differs over more than this fraction before a camera pan is looked for.
const PAN_FROM: f64 = 0.2;

/// A camera that panned: the previous frame moved by the translation that best explains the new one (searched
/// within `motion_px`), with the change mask against it, when the previous frame as it was (`still`, its change
/// mask) differs from the new one over more than `PAN_FROM` of the pixels and the moved one over less than half as
/// many. None otherwise.
fn panned(
    prev: &Previous,
    still: &ChangeMask,
    (cur, cur_colour): (&[f32], &[f32]),
    s: &StreamSettings,
) -> Option<(Previous, ChangeMask, (isize, isize))> {
    let (w, h) = (still.width, still.height);
    if s.motion_px == 0 || still.fraction <= PAN_FROM {
        return None;
    }
    let (dx, dy) = global_shift(&grey(&prev.colour), cur, w, h, s.motion_px);
    if (dx, dy) == (0, 0) {
        return None;
    }
    let moved = prev.shifted(w, h, dx, dy);
    let mask = compare(&moved.colour, cur_colour, w, h, &s.change);
    (mask.fraction < still.fraction / 2.0).then_some((moved, mask, (dx, dy)))
}

/// The decision for one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    pub start: Start,
    /// Changed fraction against the previous frame (None: no usable previous frame); after a camera pan, against
    /// the previous frame moved by `pan`.
    pub changed_fraction: Option<f64>,
    /// The camera panned: the previous frame, moved by (dx, dy) pixels of the result (the view now shows at (x, y)
    /// what the previous frame showed at (x + dx, y + dy)), is what the frame started from.
    pub pan: Option<(isize, isize)>,
    /// Fraction of the pixels that show the still background again this frame (the plate's or the underlay's scene,
    /// where the previous frame showed something else: what a moving object has left).
    pub uncovered: Option<f64>,
    /// Over those pixels, the mean |Δ| (0–1) of the result to the background's last result before the object came
    /// (the plate): the trail of issue 20 as the stream itself sees it (the bench measures it against the clip's
    /// known object masks).
    pub trail: Option<f64>,
    /// Fraction of the pixels still being painted: new this frame or painted for fewer than `YOUNG_FRAMES` frames
    /// (held at `settle` of the temporal weight).
    pub young: Option<f64>,
}

/// A frame started from the previous one stops once its loss is within this fraction of the last cold run's.
pub const TARGET_SLACK: f64 = 0.05;

/// A partly changed frame with new content runs at least 1/`FRESH_SHARE` of the last cold run's evaluations.
pub const FRESH_SHARE: usize = 10;

/// Below this changed fraction a frame counts as unchanged (isolated pixels that pass the threshold).
const UNCHANGED: f64 = 0.002;

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
fn settle(age: u16) -> f32 {
    let t = (age.min(YOUNG_FRAMES) as f32) / YOUNG_FRAMES as f32;
    t * t
}

/// Decide how the frame `content` (at the result's size) starts, and set `opts` (the cold run's options)
/// accordingly. `prev`: the usable previous frame (if any) with the change mask of the frame against it. Also
/// returns, for a frame started from the previous one, what the background plate is updated from (`Held`).
fn plan(
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
fn shows(prev: &Previous, frame: &Planar, threshold: f32) -> Vec<Shows> {
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
enum Shows {
    Plate,
    Underlay,
    Other,
}

/// Per pixel, for a frame started from the previous one: the weight of "the scene did not change since the previous
/// frame" and of "the frame shows the plate's scene" (1: yes).
struct Held {
    unchanged: Vec<f32>,
    shows: Vec<Shows>,
    /// The pixels that show the still background again, with the colour they are held to.
    uncovered: Vec<(usize, [f32; 3])>,
    /// The result's `Previous::age` once the frame is painted.
    age: Vec<u16>,
    /// Per pixel, how much of the starting image is held (the previous result, the plate, what moved along; before
    /// `settle`): below one half the content is new.
    keep: Vec<f32>,
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

/// One frame of a stream, end to end: decide how it starts, stylise it, and return what to keep for the next
/// frame. `content` is the frame at the result's size; `opts` the cold run's options.
#[allow(clippy::too_many_arguments)]
pub fn stylize_frame(
    model: &mut Model,
    prev: Option<&Previous>,
    key: &str,
    content: &Planar,
    settings: &StreamSettings,
    opts: &StylizeOptions,
    styles: &mut dyn StyleSource,
    hooks: &mut dyn Hooks,
) -> Result<(Outcome, Plan, Previous)> {
    let cold = opts;
    let mut opts = cold.clone();
    let cur_colour = blurred_colour(content, &settings.change);
    let cur = grey(&cur_colour);
    let (w, h) = (content.width, content.height);
    // the previous frame is used for the same style and size; compared as it was, or moved along a camera pan
    let usable = prev.filter(|p| {
        settings.enabled
            && p.key == key
            && (p.result.width, p.result.height) == (w, h)
            && p.colour.len() == cur_colour.len()
    });
    let still = usable.map(|p| compare(&p.colour, &cur_colour, w, h, &settings.change));
    let (moved, mask, pan) =
        match usable.zip(still.as_ref()).and_then(|(p, m)| panned(p, m, (&cur, &cur_colour), settings)) {
            Some((p, m, d)) => (Some(p), Some(m), Some(d)),
            None => (None, still, None),
        };
    let prev = moved.as_ref().or(usable);
    let (mut plan, held) = plan(prev.zip(mask), content, &cur, settings, &mut opts);
    plan.pan = pan.filter(|_| plan.start != Start::Cold);
    if plan.start != Start::Cold {
        opts.colour_map = prev.and_then(|p| p.colour_map.clone());
    }
    // what is new is painted first in a crop around it, then the frame as a whole
    let mut first = Vec::new();
    if let (Some(h), Init::Image(init)) = (held.as_ref().filter(|_| plan.start == Start::Partial), &opts.init) {
        // the crop and the frame share the frame's budget (`max_evaluations`): the crop at most half of it, the frame
        // what is left
        let budget = (settings.max_evaluations / 2).max(1);
        if let Some((image, scales)) = paint_new(model, content, init, &h.keep, cold, &opts, budget, styles, hooks)? {
            opts.init = Init::Image(image);
            let spent: usize = scales.iter().map(|s| s.evaluations).sum();
            let left = settings.max_evaluations.saturating_sub(spent).max(1);
            opts.max_evaluations = Some(left);
            opts.iterations = opts.iterations.min(left);
            first = scales;
        }
    }
    if plan.start != Start::Cold {
        // the margin as the previous frame left it: started from a reflection, the frame's loss would first have to
        // come down by what painting the margin again takes before it could reach the cold run's (target_loss)
        opts.margin = prev.and_then(|p| p.canvas.clone());
    }
    let mut outcome = stylize_with(model, content, styles, &opts, hooks)?;
    first.append(&mut outcome.scales);
    outcome.scales = first;
    let l = outcome.final_losses();
    let loss = l.total - opts.weights.term(TEMPORAL_TERM) as f64 * l.term(TEMPORAL_TERM);
    if let Some(h) = held.as_ref().filter(|h| !h.uncovered.is_empty()) {
        let n = content.width * content.height;
        let sum: f64 = h
            .uncovered
            .iter()
            .map(|(i, held)| (0..3).map(|c| (outcome.image.data[c * n + i] - held[c]).abs() as f64).sum::<f64>())
            .sum();
        plan.trail = Some(sum / (3 * h.uncovered.len()) as f64);
    }
    let kept = match (prev, held) {
        // the plate takes the result where the scene did not change since the previous frame
        (Some(p), Some(held)) => {
            let (mut plate, mut plate_content) = (p.plate.clone(), p.plate_content.clone());
            let (mut underlay, mut underlay_content) = (p.underlay.clone(), p.underlay_content.clone());
            let n = content.width * content.height;
            let still_frames: Vec<u16> = (0..n)
                .map(|i| if held.unchanged[i] >= 1.0 { p.still_frames[i].saturating_add(1) } else { 0 })
                .collect();
            for (i, still) in still_frames.iter().enumerate() {
                // the result enters the plate where it painted the plate's (or the underlay's) scene, held from the
                // frame before, or where the scene has settled into something else — the plate then goes under it
                let shown = held.shows[i] != Shows::Other;
                if held.unchanged[i] < 1.0 || !(shown || *still >= SETTLE_FRAMES) {
                    continue;
                }
                for c in 0..3 {
                    let j = c * n + i;
                    if !shown {
                        underlay.data[j] = plate.data[j];
                        underlay_content.data[j] = plate_content.data[j];
                    }
                    plate_content.data[j] = content.data[j];
                    plate.data[j] = outcome.image.data[j];
                }
            }
            Previous {
                key: key.to_string(),
                result: outcome.image.clone(),
                canvas: Some(outcome.canvas.clone()),
                loss,
                reference: p.reference,
                reference_evaluations: p.reference_evaluations,
                plate,
                plate_content,
                underlay,
                underlay_content,
                still_frames,
                on_plate: held.shows.iter().map(|s| *s != Shows::Other).collect(),
                age: held.age,
                colour: cur_colour,
                colour_map: p.colour_map.clone(),
            }
        }
        _ => Previous {
            key: key.to_string(),
            result: outcome.image.clone(),
            canvas: Some(outcome.canvas.clone()),
            loss,
            reference: loss,
            reference_evaluations: outcome.evaluations(),
            plate: outcome.image.clone(),
            plate_content: content.clone(),
            underlay: outcome.image.clone(),
            underlay_content: content.clone(),
            still_frames: vec![0; cur.len()],
            on_plate: vec![true; cur.len()],
            age: vec![YOUNG_FRAMES; cur.len()],
            colour: cur_colour,
            colour_map: outcome.colour_map.clone(),
        },
    };
    Ok((outcome, plan, kept))
}

/// The margin around new content in the crop it is painted in (`paint_new`), as a fraction of the frame's longest
/// side (64 px at 512): context enough for the strokes around it to continue into it.
const NEW_MARGIN: f64 = 1.0 / 8.0;

/// A crop of new content is painted apart only while it is at most this fraction of the frame; beyond it the frame's
/// own loss sees the new content well enough.
const NEW_CROP_MAX: f64 = 0.5;

/// Style targets for the frame's own size whatever the size asked for: a crop of the frame takes the frame's targets
/// (Gram matrices and histograms are per position, so they hold for any crop), so its strokes have the frame's scale.
struct AtSize<'a> {
    inner: &'a mut dyn StyleSource,
    longest: usize,
}

impl StyleSource for AtSize<'_> {
    fn targets(&mut self, model: &mut Model, _longest: usize) -> Result<StyleTargets> {
        self.inner.targets(model, self.longest)
    }
    fn colours(&self) -> Option<color::ColourSample> {
        self.inner.colours()
    }
}

/// New content (`keep` below one half: held by nothing) over more than isolated pixels, painted as a cold run's last
/// scale paints, in a crop around each separate region of it (`new_regions`: its bounding box with a margin of
/// `NEW_MARGIN`), the rest of the crop held by the frame's temporal term; the crops share `budget` evaluations.
/// Returns the frame's starting image `init` with the new content from the crops, and the crops' scale reports. The
/// frame's style loss is the whole image's: where the rest of the frame is painted, its statistics already match the
/// painting's and hardly pull on a region of a few percent of the pixels, so a new region started from the frame in
/// the painting's colours stayed pale and unpainted for the frames it took to be held (at 512 px a disc where the
/// approaching object had stood in the first frame: issue 20). In the crop the new region is a large part of the
/// statistics. None when there is nothing new, or the crops would be most of the frame.
#[allow(clippy::too_many_arguments)]
fn paint_new(
    model: &mut Model,
    content: &Planar,
    init: &Planar,
    keep: &[f32],
    cold: &StylizeOptions,
    frame: &StylizeOptions,
    budget: usize,
    styles: &mut dyn StyleSource,
    hooks: &mut dyn Hooks,
) -> Result<Option<(Planar, Vec<ScaleReport>)>> {
    let (w, h) = (content.width, content.height);
    let n = w * h;
    let new: Vec<bool> = keep.iter().map(|k| *k < 0.5).collect();
    if new.iter().filter(|v| **v).count() as f64 <= UNCHANGED * n as f64 {
        return Ok(None);
    }
    let margin = ((w.max(h) as f64 * NEW_MARGIN).round() as usize).max(16);
    let min = model.manifest.min_size;
    // grown by the margin, and to the model's smallest side, within the frame
    let grow = |a: usize, b: usize, side: usize| {
        let (a, b) = (a.saturating_sub(margin), (b + margin).min(side));
        let short = min.saturating_sub(b - a);
        let a = a.saturating_sub(short.div_ceil(2));
        (a, (a + (b - a).max(min)).min(side))
    };
    let crops: Vec<[usize; 4]> = new_regions(&new, w, h, margin)
        .into_iter()
        .map(|[x0, y0, x1, y1]| {
            let ((x0, x1), (y0, y1)) = (grow(x0, x1, w), grow(y0, y1, h));
            [x0, y0, x1, y1]
        })
        .collect();
    let area: usize = crops.iter().map(|[x0, y0, x1, y1]| (x1 - x0) * (y1 - y0)).sum();
    if crops.iter().any(|[x0, y0, x1, y1]| x1 - x0 < min || y1 - y0 < min) || area as f64 > NEW_CROP_MAX * n as f64 {
        return Ok(None);
    }
    let mut out = init.clone();
    let mut reports = Vec::new();
    let mut at = AtSize { inner: styles, longest: w.max(h) };
    for (k, &[x0, y0, x1, y1]) in crops.iter().enumerate() {
        // what the earlier crops did not spend is left to the later ones
        let spent: usize = reports.iter().map(|r: &ScaleReport| r.evaluations).sum();
        let share = (budget.saturating_sub(spent) / (crops.len() - k)).max(1);
        let (cw, ch) = (x1 - x0, y1 - y0);
        let cut = |p: &Planar| Planar { width: cw, height: ch, data: crop(&p.data, [3, h, w], (y0, ch, x0, cw)) };
        let mut opts = cold.clone();
        opts.iterations = opts.iterations.min(share);
        opts.max_evaluations = Some(share);
        opts.image_size = cw.max(ch);
        opts.scales = vec![cw.max(ch)];
        opts.init = Init::Image(cut(&out));
        opts.weights = frame.weights.clone();
        opts.colour_map = frame.colour_map.clone();
        opts.temporal = frame.temporal.as_ref().map(|t| TemporalInputs {
            previous: cut(&t.previous),
            weights: crop(&t.weights, [1, h, w], (y0, ch, x0, cw)),
        });
        let outcome = stylize_with(model, &cut(content), &mut at, &opts, hooks)?;
        for y in y0..y1 {
            for x in x0..x1 {
                let (i, k) = (y * w + x, (y - y0) * cw + (x - x0));
                for c in 0..3 {
                    let j = c * n + i;
                    out.data[j] = keep[i] * init.data[j] + (1.0 - keep[i]) * outcome.image.data[c * cw * ch + k];
                }
            }
        }
        reports.extend(outcome.scales);
    }
    Ok(Some((out, reports)))
}

/// The bounding boxes ([x0, y0, x1, y1), pixels) of the separate regions of `new`: connected once each is grown by
/// `margin` (regions nearer than that share a crop, whose margins would overlap anyway). Two people crossing a
/// camera's view apart, one box around both would be most of the frame and get no crop.
fn new_regions(new: &[bool], w: usize, h: usize, margin: usize) -> Vec<[usize; 4]> {
    let grown = dilate(new, w, h, margin.div_ceil(2));
    let mut label = vec![usize::MAX; w * h];
    let mut boxes = Vec::new();
    let mut stack = Vec::new();
    for seed in 0..w * h {
        if !grown[seed] || label[seed] != usize::MAX {
            continue;
        }
        let id = boxes.len();
        let mut b = [w, h, 0, 0];
        label[seed] = id;
        stack.push(seed);
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            if new[i] {
                b = [b[0].min(x), b[1].min(y), b[2].max(x + 1), b[3].max(y + 1)];
            }
            let near = [(x > 0, i.wrapping_sub(1)), (x + 1 < w, i + 1), (y > 0, i.wrapping_sub(w)), (y + 1 < h, i + w)];
            for (inside, j) in near {
                if inside && grown[j] && label[j] == usize::MAX {
                    label[j] = id;
                    stack.push(j);
                }
            }
        }
        boxes.push(b);
    }
    boxes
}

/// Mean absolute difference of two images over the pixels where `keep` is true (all channels), in [0, 1].
pub fn masked_difference(a: &Planar, b: &Planar, keep: &[bool]) -> f64 {
    let n = a.width * a.height;
    let (mut sum, mut count) = (0.0f64, 0usize);
    for (i, k) in keep.iter().enumerate().take(n) {
        if *k {
            for c in 0..3 {
                sum += (a.data[c * n + i] - b.data[c * n + i]).abs() as f64;
            }
            count += 3;
        }
    }
    if count == 0 {
        0.0
    } else {
        sum / count as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::inputs::Weights;

    fn grey_of(img: &Planar, i: usize) -> f32 {
        color::luma(img)[i]
    }

    fn flat(w: usize, h: usize, v: f32) -> Planar {
        Planar { width: w, height: h, data: vec![v; 3 * w * h] }
    }

    #[test]
    fn blur_keeps_a_constant_and_dilation_grows_by_the_radius() {
        let v = vec![0.3f32; 20 * 10];
        assert!(box_blur(&v, 20, 10, 3).iter().all(|x| (x - 0.3).abs() < 1e-6));
        let mut m = vec![false; 20 * 10];
        m[5 * 20 + 10] = true;
        let d = dilate(&m, 20, 10, 2);
        assert_eq!(d.iter().filter(|x| **x).count(), 25);
        assert!(d[3 * 20 + 8] && d[7 * 20 + 12] && !d[2 * 20 + 10] && !d[5 * 20 + 13]);
    }

    #[test]
    fn a_moving_square_is_found_and_noise_is_not() {
        let (w, h) = (64, 48);
        let a = flat(w, h, 0.5);
        let mut b = a.clone();
        let mut rng = 12345u64;
        for v in b.data.iter_mut() {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            *v += ((rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04; // ±0.02 noise
        }
        let p = ChangeParams::default();
        let m = change_mask(&a, &b, &p);
        assert_eq!(m.fraction, 0.0, "noise alone is not a change");
        assert!(m.unchanged.iter().all(|u| *u == 1.0));
        for y in 20..30 {
            for x in 30..40 {
                for c in 0..3 {
                    b.data[c * w * h + y * w + x] = 0.9;
                }
            }
        }
        let m = change_mask(&a, &b, &p);
        // the square (10×10) is inside the mask; the mask is no larger than the square grown by blur and dilation
        for y in 20..30 {
            for x in 30..40 {
                assert!(m.changed[y * w + x] && m.unchanged[y * w + x] == 0.0);
            }
        }
        let grown = 10 + 2 * (2 * p.blur_px + p.dilate_px);
        assert!(m.fraction * (w * h) as f64 <= (grown * grown) as f64, "{}", m.fraction);
        assert!(m.fraction > 100.0 / (w * h) as f64);
        // the weight ramps: 0 at the border of the mask, 1 beyond feather_px, in between strictly between
        assert_eq!(m.unchanged[5 * w + 5], 1.0);
        let edge = (20..30).map(|y| (0..w).filter(|&x| m.changed[y * w + x]).min().unwrap()).min().unwrap();
        assert!(m.unchanged[25 * w + edge - 1] > 0.0 && m.unchanged[25 * w + edge - 1] < 1.0);
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
            plate: flat(w, h, 0.5),
            plate_content: grey.clone(),
            underlay: flat(w, h, 0.7),
            underlay_content: flat(w, h, 0.9),
            still_frames: vec![0; n],
            on_plate: vec![true; n],
            age: vec![YOUNG_FRAMES; n],
            colour_map: None,
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
    fn separate_new_regions_get_boxes_of_their_own() {
        let (w, h) = (100, 60);
        let mut new = vec![false; w * h];
        let mut mark = |x0: usize, y0: usize, x1: usize, y1: usize| {
            for y in y0..y1 {
                new[y * w + x0..y * w + x1].iter_mut().for_each(|v| *v = true);
            }
        };
        mark(5, 5, 15, 20);
        mark(70, 30, 90, 50);
        // 6 px from the first: one region with it under a margin of 10 (grown by 5 each)
        mark(21, 10, 25, 12);
        let boxes = new_regions(&new, w, h, 10);
        assert_eq!(boxes, vec![[5, 5, 25, 20], [70, 30, 90, 50]]);
        // under a margin of 4 the small one is apart
        assert_eq!(new_regions(&new, w, h, 4).len(), 3);
        assert!(new_regions(&vec![false; w * h], w, h, 10).is_empty());
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

    fn y_x(y: usize, x: usize, w: usize) -> usize {
        y * w + x
    }

    #[test]
    fn lights_on_is_a_new_scene() {
        let a = flat(40, 30, 0.3);
        let b = flat(40, 30, 0.6);
        let m = change_mask(&a, &b, &ChangeParams::default());
        assert_eq!(m.fraction, 1.0);
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
            plate: flat(w, h, 0.5),
            plate_content: scene.clone(),
            underlay: flat(w, h, 0.5),
            underlay_content: scene.clone(),
            still_frames: vec![1; n],
            on_plate: vec![true; n],
            age: (0..n).map(|i| if square(i) { 1 } else { YOUNG_FRAMES }).collect(),
            colour_map: None,
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

    #[test]
    fn a_change_of_colour_at_the_same_luminance_is_a_change() {
        // a red square of the grey background's luminance: a mask on luminance saw nothing there
        let (w, h) = (48, 32);
        let n = w * h;
        let grey = flat(w, h, 0.3);
        let mut frame = grey.clone();
        let (r, b) = (0.6f32, 0.0f32);
        let g = (0.3 - 0.299 * r - 0.114 * b) / 0.587;
        for i in (0..n).filter(|&i| (20..30).contains(&(i % w)) && (10..20).contains(&(i / w))) {
            (frame.data[i], frame.data[n + i], frame.data[2 * n + i]) = (r, g, b);
        }
        let p = ChangeParams::default();
        let lum = compare(&blurred_grey(&grey, &p), &blurred_grey(&frame, &p), w, h, &p);
        assert_eq!(lum.fraction, 0.0, "the same luminance");
        let m = change_mask(&grey, &frame, &p);
        assert!(m.changed[15 * w + 25] && m.unchanged[15 * w + 25] == 0.0);
        assert!(m.fraction >= 100.0 / n as f64);
        assert_eq!(m.unchanged[2 * w + 2], 1.0, "far from the square");
    }
}
