//! Synthetic camera clips for the tests and the bench (issues 12 and 20): a still background with objects moving
//! over it (`Motion`: crossing, approaching the camera, two crossing each other, one stopping and leaving, the lights
//! going up), per-frame sensor noise and JPEG re-encoding. Each frame comes with the pixels the objects cover, so that
//! "the pixels that did not change" between two frames, and where an object has been, are known exactly.

use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use crate::imageio::{self, OutputFormat, Planar};

/// What happens in a clip: the cases a fixed camera sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Motion {
    /// One object crossing left to right with a slight bob; at `scene_change` the camera turns and the lights go up.
    Crossing,
    /// One object crossing while it comes towards the camera: it grows from half to twice `object_size`.
    Approaching,
    /// Two objects crossing each other, left to right and right to left, one passing in front of the other.
    TwoCrossing,
    /// A person-sized object (a tall ellipse, 0.6 of the frame's height) walks in, stands still for the middle half
    /// of the clip, and walks out.
    StopAndGo,
    /// One object crossing; at `scene_change` the whole frame brightens by 20 %.
    Lights,
}

impl Motion {
    pub fn as_str(self) -> &'static str {
        match self {
            Motion::Crossing => "crossing",
            Motion::Approaching => "approaching",
            Motion::TwoCrossing => "two-crossing",
            Motion::StopAndGo => "stop-and-go",
            Motion::Lights => "lights",
        }
    }

    /// Whether the clip has a whole-scene change (at `ClipSpec::scene_change`).
    pub fn changes_scene(self) -> bool {
        matches!(self, Motion::Crossing | Motion::Lights)
    }
}

#[derive(Debug, Clone)]
pub struct ClipSpec {
    pub motion: Motion,
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
        ClipSpec {
            motion: Motion::Crossing,
            frames: 24,
            scene_change: Some(12),
            object_size: 64,
            noise: 2.0 / 255.0,
            jpeg_quality: 85,
            seed: 7,
        }
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
    /// JPEG bytes of the first frame's scene with no object in it (the same noise and re-encoding): what a cold run
    /// paints where the first frame's object was, to compare the stream's result with once the object has left
    /// (`stream_bench::revealed`). Empty where the clip has none.
    pub empty: Vec<u8>,
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

/// Where an object is in a frame: its bounding box (top-left corner, width, height; an ellipse with a soft edge is
/// cut from it) and whether its picture is mirrored.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Placement {
    x0: usize,
    y0: usize,
    w: usize,
    h: usize,
    mirrored: bool,
}

/// The objects of frame `i` of `frames` in a `w × h` view, in drawing order (the last in front), for objects of side
/// `s`.
fn placements(motion: Motion, i: usize, frames: usize, (w, h): (usize, usize), s: usize) -> Vec<Placement> {
    let t = if frames > 1 { i as f64 / (frames - 1) as f64 } else { 0.0 };
    let at = |x: f64, y: f64, ow: usize, oh: usize, mirrored: bool| Placement {
        x0: (x * (w - ow) as f64).round() as usize,
        y0: (y * (h - oh) as f64).round() as usize,
        w: ow,
        h: oh,
        mirrored,
    };
    match motion {
        Motion::Crossing | Motion::Lights => vec![at(t, 0.55 + 0.1 * (t * std::f64::consts::TAU).sin(), s, s, false)],
        Motion::Approaching => {
            let side = ((s as f64 * (0.5 + 1.5 * t)).round() as usize).clamp(4, w.min(h) * 9 / 10);
            vec![at(t, 0.6, side, side, false)]
        }
        Motion::TwoCrossing => vec![at(t, 0.45, s, s, false), at(1.0 - t, 0.65, s, s, true)],
        Motion::StopAndGo => {
            let (oh, ow) = (h * 6 / 10, h * 3 / 10);
            // in over the first quarter (from the left edge to the middle), still for half the clip (longer than
            // `temporal::SETTLE_FRAMES` in a clip of 20 frames or more), out over the last quarter
            let x = if t < 0.25 {
                2.0 * t
            } else if t <= 0.75 {
                0.5
            } else {
                0.5 + 2.0 * (t - 0.75)
            };
            vec![at(x, 0.7, ow, oh, false)]
        }
    }
}

/// A clip of `background` (the frame size) with `object` (resized to `object_size`) moving over it as `spec.motion`
/// says.
pub fn synthetic(background: &Planar, object: &Planar, spec: &ClipSpec) -> Clip {
    let (w, h) = (background.width, background.height);
    let n = w * h;
    let s = spec.object_size.min(w / 2).min(h / 2).max(4);
    let scene_change = spec.scene_change.filter(|_| spec.motion.changes_scene());
    // the other scene: for a crossing, the view mirrored (the camera turned) and brighter (the lights went up); for
    // the lights, the same view 20 % brighter
    let mut other = background.clone();
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                let v = &mut other.data[c * n + y * w + x];
                *v = match spec.motion {
                    Motion::Lights => (background.data[c * n + y * w + x] * 1.2).min(1.0),
                    _ => (background.data[c * n + y * w + (w - 1 - x)] * 1.35 + 0.05).min(1.0),
                };
            }
        }
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(spec.seed);
    let (mut frames, mut masks) = (Vec::new(), Vec::new());
    for i in 0..spec.frames {
        let scene = if scene_change.is_some_and(|c| i >= c) { &other } else { background };
        let mut f = scene.clone();
        let mut mask = vec![false; n];
        for p in placements(spec.motion, i, spec.frames, (w, h), s) {
            draw(&mut f, &mut mask, &object.resize(p.w, p.h), p);
        }
        frames.push(camera_jpeg(f, &mut rng, spec));
        masks.push(mask);
    }
    // drawn after the frames, so that their noise is what it was before the clip had it
    let empty = camera_jpeg(background.clone(), &mut rng, spec);
    Clip { width: w, height: h, frames, object: masks, scene_change, empty }
}

/// Draw `obj` (already at the placement's size) as an ellipse with a 1.5-px soft edge into `f`, marking what it covers
/// in `mask`.
fn draw(f: &mut Planar, mask: &mut [bool], obj: &Planar, p: Placement) {
    let (w, n) = (f.width, f.width * f.height);
    let (rx, ry) = (p.w as f64 / 2.0, p.h as f64 / 2.0);
    for oy in 0..p.h {
        for ox in 0..p.w {
            // distance to the edge, in pixels along the smaller radius
            let (dx, dy) = ((ox as f64 + 0.5 - rx) / rx, (oy as f64 + 0.5 - ry) / ry);
            let d = (1.0 - (dx * dx + dy * dy).sqrt()) * rx.min(ry);
            let alpha = d.clamp(0.0, 1.5) / 1.5;
            if alpha <= 0.0 {
                continue;
            }
            let (x, y) = (p.x0 + ox, p.y0 + oy);
            mask[y * w + x] = true;
            let sx = if p.mirrored { p.w - 1 - ox } else { ox };
            for c in 0..3 {
                let v = &mut f.data[c * n + y * w + x];
                *v = (alpha as f32) * obj.data[c * p.w * p.h + oy * p.w + sx] + (1.0 - alpha as f32) * *v;
            }
        }
    }
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
