//! Camera streams (Ruder, Dosovitskiy & Brox 2016, "Artistic style transfer for videos"): a per-pixel change mask
//! between a camera's consecutive frames decides how each frame starts —
//! - nothing changed: from the previous result, stopping as soon as it is as good;
//! - part of the scene changed: from the previous result where it did not and the content where it did, with the
//!   temporal term (the previous result as a target, weighted per pixel, 0 where the scene changed) holding the
//!   still background in place, so that it does not repaint differently on every frame (flicker);
//! - most of the scene changed (lights on, camera moved), or no usable previous frame: a cold run.
//!
//! The daemon's workers, `fuchun stylize` on a frame sequence and the stream bench use the same `stylize_frame`.
//! Its parts: `change` (what differs between two frames: the change mask, motion, a camera pan), `plan` (how a
//! partly changed frame starts and what holds each pixel: the background plate, the previous result, new content),
//! `new_content` (new content painted in a crop around it first); this file keeps the stream's state and the frame.

mod change;
mod new_content;
mod plan;

use anyhow::Result;

pub use change::{change_mask, dilate, ChangeMask, ChangeParams};
pub use plan::{SETTLE_FRAMES, YOUNG_FRAMES};

use super::color;
use super::schedule::{fit_finish, stylize_with, Hooks, Init, Outcome, Palette, StyleSource, StylizeOptions};
use crate::engine::Model;
use crate::imageio::Planar;
use change::{blurred_colour, compare, global_shift, grey, shift_values};
use new_content::paint_new;
use plan::{plan, Shows};

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
    /// The last cold run's finest scale ran the model's refinement (`StylizeOptions::refine`): a frame started from
    /// the previous one runs the same objective, whose loss it compares with `reference`.
    pub reference_refined: bool,
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
    /// The last cold run's finish (`StylizeOptions::palette_finish`): every frame's result is published through it,
    /// while `result`, the plate and the canvas stay the optimiser's own (the next frame starts from them).
    pub finish: Option<color::Finish>,
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
            reference_refined: self.reference_refined,
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
            finish: self.finish.clone(),
        }
    }
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

/// Below this changed fraction a frame counts as unchanged (isolated pixels that pass the threshold).
const UNCHANGED: f64 = 0.002;

/// The margin around new content in the crop it is painted in (`paint_new`), as a fraction of the frame's longest
/// side (64 px at 512): context enough for the strokes around it to continue into it.
const NEW_MARGIN: f64 = 1.0 / 8.0;

/// A frame started from the previous one stops once its loss is within this fraction of the last cold run's.
pub const TARGET_SLACK: f64 = 0.05;

/// The crop that paints a partly changed frame's new content first (`new_content::paint_new`) runs at most
/// 1/`CROP_SHARE` of the last cold run's evaluations. Measured on the crossing clip at 256 px (real weights): with
/// half the frame's budget (30) it ran all 30 and the frame 10, 0.37 of a cold frame's evaluations (0.47 weighted
/// by pixels); with 1/8 (13) 0.21 (0.33; 0.34 on the lights clip, over the target), the object's and the uncovered
/// region's strokes the same (0.88 and 0.79–0.80 of a cold run's), trail and flicker the same. 1/10: as much as
/// the frame itself gets after it (`FRESH_SHARE`).
pub const CROP_SHARE: usize = 10;

/// A partly changed frame with new content runs at least 1/`FRESH_SHARE` of the last cold run's evaluations.
pub const FRESH_SHARE: usize = 10;

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
    // the frame is optimised unfinished (the next one starts from it and is held to it) and finished below, by the
    // cold frame's map, for publishing only
    opts.palette_finish = 0.0;
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
        // and at most 1/`CROP_SHARE` of the last cold run's evaluations: a cold frame that costs less (the
        // refinement: 108 evaluations at 256 px instead of 188) makes a crop of half the budget a third of it
        let budget = (settings.max_evaluations / 2)
            .min(prev.map_or(usize::MAX, |p| p.reference_evaluations / CROP_SHARE))
            .max(1);
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
                reference_refined: p.reference_refined,
                plate,
                plate_content,
                underlay,
                underlay_content,
                still_frames,
                on_plate: held.shows.iter().map(|s| *s != Shows::Other).collect(),
                age: held.age,
                colour: cur_colour,
                colour_map: p.colour_map.clone(),
                finish: p.finish.clone(),
            }
        }
        _ => Previous {
            key: key.to_string(),
            result: outcome.image.clone(),
            canvas: Some(outcome.canvas.clone()),
            loss,
            reference: loss,
            reference_evaluations: outcome.evaluations(),
            reference_refined: outcome.scales.last().is_some_and(|s| s.refined),
            plate: outcome.image.clone(),
            plate_content: content.clone(),
            underlay: outcome.image.clone(),
            underlay_content: content.clone(),
            still_frames: vec![0; cur.len()],
            on_plate: vec![true; cur.len()],
            age: vec![YOUNG_FRAMES; cur.len()],
            colour: cur_colour,
            colour_map: outcome.colour_map.clone(),
            finish: fit_finish(&outcome.image, outcome.colour_map.is_some(), &*styles, cold),
        },
    };
    if let Some(f) = &kept.finish {
        outcome.image = f.apply(&outcome.image);
    }
    Ok((outcome, plan, kept))
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
