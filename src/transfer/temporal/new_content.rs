//! New content of a partly changed frame (held by nothing) painted first in a crop around each separate region of
//! it, where it is a large part of the style statistics, before the frame as a whole.

use anyhow::Result;

use super::change::dilate;
use super::{NEW_MARGIN, UNCHANGED};
use crate::engine::Model;
use crate::imageio::Planar;
use crate::transfer::color;
use crate::transfer::inputs::TemporalInputs;
use crate::transfer::schedule::{stylize_with, Hooks, Init, ScaleReport, StyleSource, StylizeOptions};
use crate::transfer::targets::StyleTargets;
use crate::transfer::tiled::plan::crop;

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
    fn colours(&self, side: usize) -> Option<color::ColourSample> {
        self.inner.colours(side)
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
pub(super) fn paint_new(
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
        // merged into the frame's unfinished state (`stylize_frame` finishes the frame)
        opts.palette_finish = 0.0;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
