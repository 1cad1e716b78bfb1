//! The memory budget (`--max-memory`, `[model] memory_budget_mb`): for an image size, whether the objective runs
//! whole or block by block, the tile side, and the L-BFGS history (each pair is two image-sized vectors), so that
//! the process's peak RSS stays under the budget.
//!
//! The estimate is a model of what is resident during one scale, calibrated by measured peak RSS of `fuchun
//! stylize` on the CPU (docs/performance.md, "Tiled evaluation"):
//! * the model's sessions and the runtime: `BASE_MB`;
//! * image-sized buffers: the content targets and the histogram layers' global maps (their floats per pixel
//!   follow from the manifest's layers), the temporal inputs, and about `VECTORS` image vectors of the optimiser
//!   (x, gradient, trial point and its gradient, direction, best point), 12 bytes a pixel each;
//! * the L-BFGS history: 24 bytes a pixel per pair;
//! * one evaluation's working memory, per pixel of what it runs on: the whole image (`WHOLE_BYTES_PER_PX`) or the
//!   largest block (`BLOCK_BYTES_PER_PX`).

use anyhow::{bail, Result};

use super::plan::largest_block;
use crate::engine::manifest::MAX_TILE;
use crate::engine::Manifest;

/// Resident before any image: the sessions (weights) and ONNX Runtime (measured: see the module's documentation).
pub const BASE_MB: f64 = 420.0;
/// Image-sized vectors of the optimiser besides its history.
pub const VECTORS: f64 = 6.0;
/// One whole-image evaluation's working memory per pixel (objective.onnx's arena, prelude, matching scratch).
/// Measured: 1024×768 whole peaked at 2877 MiB (the estimate says 3000).
pub const WHOLE_BYTES_PER_PX: f64 = 2600.0;
/// One block's working memory per pixel of the block (tile_grad.onnx's arena and the block's copies). Measured
/// (peak RSS of `fuchun stylize`, the history counted in full): the whole objective at 1920×1080 in 544-px tiles
/// (704² blocks) 3127 MiB, at 1024×768 in 288-px tiles (448²) after released coarse scales 1524 MiB — 3400 bytes
/// a block pixel covered both; the refinement (`refine/`, to relu3_1) at 1920×1080 in 588-px tiles (644² blocks)
/// 3152 MiB where 3400 estimated 2995: ONNX Runtime's CPU arena grows in steps, so a block costs more per pixel
/// at some sizes than at others. 3800 covers every measured peak (estimates 3355, 1651 and 3153).
pub const BLOCK_BYTES_PER_PX: f64 = 3800.0;
/// The fewest L-BFGS pairs a budget may cut the history to (fewer: many more iterations for the same loss).
pub const MIN_HISTORY: usize = 3;
/// The smallest tile side tried (below it the margins cost several times the tile's own work).
pub const MIN_TILE: usize = 64;

/// How one scale runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// None: the whole image at once; Some(side): tiles of this side.
    pub tile: Option<usize>,
    /// L-BFGS pairs kept.
    pub history: usize,
    /// The estimated peak, MiB.
    pub estimate_mb: u64,
}

/// Floats per image pixel of the image-sized targets: content layers and histogram layers (C / stride²), the
/// temporal term's previous frame and weights (4).
fn target_floats_per_px(m: &Manifest) -> f64 {
    let per = |l: &String| m.layer(l).map_or(0.0, |x| x.channels as f64 / (x.stride * x.stride) as f64);
    m.content_layers.iter().map(per).sum::<f64>() + m.hist_layers.iter().map(per).sum::<f64>() + 4.0
}

/// The estimated peak in MiB of a scale of `height × width` run whole (`tile` None) or in tiles of side `tile`.
pub fn estimate_mb(m: &Manifest, height: usize, width: usize, tile: Option<usize>, history: usize) -> f64 {
    let px = (height * width) as f64;
    let image = px * (4.0 * target_floats_per_px(m) + 12.0 * VECTORS + 24.0 * history as f64);
    let working = match (tile, m.tiling) {
        (Some(side), Some(t)) => {
            let [bh, bw] = largest_block(height, width, side, t.margin, t.align);
            (bh * bw) as f64 * BLOCK_BYTES_PER_PX
        }
        _ => px * WHOLE_BYTES_PER_PX,
    };
    BASE_MB + (image + working) / (1024.0 * 1024.0)
}

/// The choice for a scale under `budget_mb` (None: no budget, the whole image and the history asked for).
/// Whole when it fits with the history asked for; otherwise the largest tile that fits with a history of at least
/// `MIN_HISTORY`, and the longest history beside it; an error naming the least that would do when nothing fits.
/// Of `sizes` ([height, width] each), those the budget runs whole: the shapes the whole-image graphs see (their
/// TensorRT profile, the warm-up). A size it runs in tiles never reaches them, and a profile up to a 3840-px kiosk
/// frame would have TensorRT build engines for shapes that are never run, if it could build them at all.
pub fn whole_sizes(m: &Manifest, sizes: &[[usize; 2]], budget_mb: Option<u64>) -> Vec<[usize; 2]> {
    sizes.iter().copied().filter(|s| choose(m, s[0], s[1], 0, budget_mb).is_ok_and(|c| c.tile.is_none())).collect()
}

pub fn choose(m: &Manifest, height: usize, width: usize, history: usize, budget_mb: Option<u64>) -> Result<Choice> {
    let whole = |h| Choice { tile: None, history: h, estimate_mb: estimate_mb(m, height, width, None, h) as u64 };
    let Some(budget) = budget_mb else { return Ok(whole(history)) };
    let fits = |c: &Choice| c.estimate_mb <= budget;
    if fits(&whole(history)) {
        return Ok(whole(history));
    }
    let Some(t) = m.tiling else {
        bail!(
            "a {width}x{height} image needs about {} MiB whole, over the memory budget of {budget} MiB, and the \
             model has no tile graphs: re-export it with `make models`, raise --max-memory or lower --image-size",
            whole(history).estimate_mb
        );
    };
    // at most MAX_TILE: the tile graphs' TensorRT profile ends there (`Manifest::tile_profile`)
    let largest = height.max(width).min(MAX_TILE);
    let mut sides: Vec<usize> =
        (1..=largest.div_ceil(t.align)).map(|k| k * t.align).filter(|s| *s >= MIN_TILE).collect();
    sides.reverse();
    // the largest tile first, with the longest history that fits beside it: a tile half as wide costs more than
    // twice the time per evaluation (its margins), a history of 3 pairs instead of 10 some more iterations
    for &side in &sides {
        for h in (MIN_HISTORY.min(history)..=history).rev() {
            let c = Choice {
                tile: Some(side),
                history: h,
                estimate_mb: estimate_mb(m, height, width, Some(side), h) as u64,
            };
            if fits(&c) {
                return Ok(c);
            }
        }
    }
    let least = estimate_mb(m, height, width, Some(MIN_TILE.max(t.align)), MIN_HISTORY.min(history)) as u64;
    bail!(
        "a {width}x{height} image needs at least about {least} MiB even in {}-pixel tiles with an L-BFGS history of \
         {}: the memory budget of {budget} MiB is too small; raise --max-memory (memory_budget_mb) or lower \
         --image-size",
        MIN_TILE.max(t.align),
        MIN_HISTORY.min(history)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(name: &str) -> Manifest {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/out").join(name);
        Manifest::load(&dir).expect("make models test-models first")
    }

    #[test]
    fn whole_when_it_fits_tiles_under_the_budget_and_an_error_naming_the_fix() {
        let m = manifest("vgg16-max");
        for (w, h, budget) in
            [(1024, 1024, 4000), (1024, 1024, 2000), (1920, 1080, 2000), (1920, 1080, 3000), (3840, 2160, 8000)]
        {
            let c = choose(&m, h, w, 10, Some(budget)).unwrap();
            println!("{w}x{h} under {budget} MiB: {c:?}");
            assert!(c.estimate_mb <= budget);
            assert!(c.tile.is_none_or(|t| t % 16 == 0 && (MIN_TILE..=MAX_TILE).contains(&t)));
        }
        // no budget: whole, the history asked for
        assert_eq!(choose(&m, 1080, 1920, 10, None).unwrap().tile, None);
        // a small image under a large budget: whole
        assert_eq!(
            choose(&m, 256, 256, 10, Some(4000)).unwrap(),
            Choice { tile: None, history: 10, estimate_mb: estimate_mb(&m, 256, 256, None, 10) as u64 }
        );
        let err = format!("{:#}", choose(&m, 2160, 3840, 10, Some(3000)).unwrap_err());
        assert!(err.contains("--max-memory") && err.contains("3840x2160") && err.contains("at least"), "{err}");
    }
}
