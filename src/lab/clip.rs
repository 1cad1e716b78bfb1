//! Synthetic camera clips for the tests and the bench (issue 12): a still background with an object moving across
//! it, per-frame sensor noise and JPEG re-encoding, and a whole-scene change (the camera turned and the lights went
//! up) in the middle. Each frame comes with the pixels the object covers, so that "the pixels that did not change"
//! between two frames are known exactly.

use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use crate::imageio::{self, OutputFormat, Planar};

#[derive(Debug, Clone)]
pub struct ClipSpec {
    pub frames: usize,
    /// The frame at which the scene changes (None: never).
    pub scene_change: Option<usize>,
    /// Side of the moving object's square (a disc with a soft edge is cut from it), in pixels.
    pub object_size: usize,
    /// Sensor noise, standard deviation in 0–1 units, per channel and pixel.
    pub noise: f32,
    pub jpeg_quality: u8,
    pub seed: u64,
}

impl Default for ClipSpec {
    fn default() -> Self {
        ClipSpec { frames: 24, scene_change: Some(12), object_size: 64, noise: 2.0 / 255.0, jpeg_quality: 85, seed: 7 }
    }
}

#[derive(Debug, Clone)]
pub struct Clip {
    pub width: usize,
    pub height: usize,
    /// JPEG bytes of each frame.
    pub frames: Vec<Vec<u8>>,
    /// Per frame, row-major: true where the object covers the pixel.
    pub object: Vec<Vec<bool>>,
    pub scene_change: Option<usize>,
}

impl Clip {
    /// Pixels where frame `i` shows the same still scene as frame `i - 1` (no object in either; not a scene change).
    pub fn still_between(&self, i: usize) -> Option<Vec<bool>> {
        if i == 0 || self.scene_change == Some(i) {
            return None;
        }
        Some(self.object[i - 1].iter().zip(&self.object[i]).map(|(a, b)| !a && !b).collect())
    }

    /// Fraction of the frame covered by the object in frame `i - 1` or `i` (what truly changed).
    pub fn changed_fraction(&self, i: usize) -> Option<f64> {
        self.still_between(i).map(|s| s.iter().filter(|v| !**v).count() as f64 / s.len() as f64)
    }
}

/// A clip of `background` (the frame size) with `object` (resized to `object_size`) crossing it left to right.
pub fn synthetic(background: &Planar, object: &Planar, spec: &ClipSpec) -> Clip {
    let (w, h) = (background.width, background.height);
    let n = w * h;
    let s = spec.object_size.min(w / 2).min(h / 2).max(4);
    let obj = object.resize(s, s);
    // the other scene: the view mirrored (the camera turned) and brighter (the lights went up)
    let mut other = background.clone();
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                other.data[c * n + y * w + x] = (background.data[c * n + y * w + (w - 1 - x)] * 1.35 + 0.05).min(1.0);
            }
        }
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(spec.seed);
    let (mut frames, mut masks) = (Vec::new(), Vec::new());
    let travel = (w - s) as f64;
    for i in 0..spec.frames {
        let scene = if spec.scene_change.is_some_and(|c| i >= c) { &other } else { background };
        let mut f = scene.clone();
        let t = if spec.frames > 1 { i as f64 / (spec.frames - 1) as f64 } else { 0.0 };
        let x0 = (t * travel).round() as usize;
        let y0 = ((h - s) as f64 * (0.55 + 0.1 * (t * std::f64::consts::TAU).sin())).round() as usize;
        let mut mask = vec![false; n];
        let r = s as f64 / 2.0;
        for oy in 0..s {
            for ox in 0..s {
                let d = ((ox as f64 + 0.5 - r).powi(2) + (oy as f64 + 0.5 - r).powi(2)).sqrt();
                let alpha = (r - d).clamp(0.0, 1.5) / 1.5; // a disc with a 1.5 px soft edge
                if alpha <= 0.0 {
                    continue;
                }
                let (x, y) = (x0 + ox, y0 + oy);
                mask[y * w + x] = true;
                for c in 0..3 {
                    let p = &mut f.data[c * n + y * w + x];
                    *p = (alpha as f32) * obj.data[c * s * s + oy * s + ox] + (1.0 - alpha as f32) * *p;
                }
            }
        }
        frames.push(camera_jpeg(f, &mut rng, spec));
        masks.push(mask);
    }
    Clip { width: w, height: h, frames, object: masks, scene_change: spec.scene_change }
}

/// A camera panning across `scene` (larger than the frame): frame i is the `w × h` window of `scene` at
/// (i·step.0, i·step.1), with `spec`'s sensor noise and JPEG re-encoding (its object and scene change are not used).
/// Frame i shows at (x, y) what frame i − 1 showed at (x + step.0, y + step.1). JPEG bytes per frame.
pub fn panning(
    scene: &Planar,
    w: usize,
    h: usize,
    frames: usize,
    step: (usize, usize),
    spec: &ClipSpec,
) -> Vec<Vec<u8>> {
    assert!(
        w + step.0 * frames.saturating_sub(1) <= scene.width && h + step.1 * frames.saturating_sub(1) <= scene.height,
        "the scene is too small for this pan"
    );
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(spec.seed);
    let (sw, sn, n) = (scene.width, scene.width * scene.height, w * h);
    (0..frames)
        .map(|i| {
            let (x0, y0) = (i * step.0, i * step.1);
            let mut f = Planar::new(w, h);
            for c in 0..3 {
                for y in 0..h {
                    let row = c * sn + (y0 + y) * sw + x0;
                    f.data[c * n + y * w..c * n + (y + 1) * w].copy_from_slice(&scene.data[row..row + w]);
                }
            }
            camera_jpeg(f, &mut rng, spec)
        })
        .collect()
}

/// What a camera sends of the view `f`: `spec`'s sensor noise added (drawn from `rng`), JPEG at its quality.
fn camera_jpeg(mut f: Planar, rng: &mut rand_chacha::ChaCha8Rng, spec: &ClipSpec) -> Vec<u8> {
    let noise = Normal::new(0.0f32, spec.noise.max(0.0)).expect("finite noise");
    if spec.noise > 0.0 {
        for v in f.data.iter_mut() {
            *v = (*v + noise.sample(rng)).clamp(0.0, 1.0);
        }
    }
    imageio::encode(&f, OutputFormat::Jpeg { quality: spec.jpeg_quality }).expect("JPEG encoding")
}
