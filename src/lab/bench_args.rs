//! `fuchun bench`'s arguments, apart from the figures that read them (`bench`, `kiosk_bench`, `stream_bench`).

use std::path::PathBuf;

use clap::Args;

use super::clip::Motion;
use crate::settings::Runtime;
use crate::transfer::schedule::DEFAULT_HIST_EVERY;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: Runtime,
    /// Sizes to time one evaluation at: squares of this side (as the table: 256 = 256²), or the content's
    /// aspect with this longest side under --content-aspect. The memory run uses the largest.
    #[arg(long, value_delimiter = ',', default_values_t = [128usize, 256, 512])]
    pub sizes: Vec<usize>,
    /// Timed evaluations per size (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Size for the schedule comparison (0 skips it).
    #[arg(long, default_value_t = 256)]
    pub schedule_size: usize,
    /// Evaluation budget of the single-scale reference run (the classic recipe: L-BFGS, 500 evaluations at the target
    /// size, as the issue defines it).
    #[arg(long, default_value_t = 500)]
    pub schedule_evaluations: usize,
    #[arg(long, default_value = "examples/tubingen.jpg")]
    pub content: PathBuf,
    #[arg(long, default_value = "examples/fuchun.jpg")]
    pub style: PathBuf,
    /// Keep the content image's aspect ratio in the evaluation table and the memory run instead of squares.
    #[arg(long)]
    pub content_aspect: bool,
    /// Iterations per scale of the memory run (`fuchun stylize` at the largest size in a child process; more than
    /// the L-BFGS history, so it is full; 0 skips it).
    #[arg(long, default_value_t = 12)]
    pub memory_iterations: usize,
    /// Size for the warm-start measurement (0 skips it).
    #[arg(long, default_value_t = 256)]
    pub warm_size: usize,
    /// Re-match the histogram targets every N evaluations in every run of the bench.
    #[arg(long, default_value_t = DEFAULT_HIST_EVERY)]
    pub hist_every: usize,
    /// Compare these --hist-every values (time and exact final loss), e.g. 1,2,4,8; empty skips it.
    #[arg(long, value_delimiter = ',')]
    pub compare_hist_every: Vec<usize>,
    #[arg(long, default_value_t = 256)]
    pub compare_size: usize,
    #[arg(long, default_value_t = 200)]
    pub compare_iterations: usize,
    /// Write the comparison's loss curves (hist_every_N.csv) to this directory.
    #[arg(long)]
    pub curves: Option<PathBuf>,
    /// Size (longest side) of the camera-stream figure [5] (0 skips it).
    #[arg(long, default_value_t = 256)]
    pub stream_size: usize,
    /// Frames of the synthetic clip of [5] (a new scene half-way).
    #[arg(long, default_value_t = 20)]
    pub stream_frames: usize,
    /// The clips of [5], each a figure of its own: crossing (an object crossing, then a new scene), approaching
    /// (growing as it comes towards the camera), two-crossing, stop-and-go (a person-sized object stops and
    /// leaves), lights (the whole frame brightens by 20 %).
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["crossing"])]
    pub stream_clip: Vec<Motion>,
    /// Frames of [5]'s clip stylised as cold runs for the comparison (from the first; a cold frame costs several
    /// temporal ones).
    #[arg(long, default_value_t = 5)]
    pub stream_cold_frames: usize,
    /// Iterations per scale in [5] (the daemon's default for a style).
    #[arg(long, default_value_t = 100)]
    pub stream_iterations: usize,
    /// [5] also without the motion search (is it worth it?).
    #[arg(long)]
    pub stream_compare_motion: bool,
    /// The palette of [5]'s frames: `content` (the photo's) or `style` (carried into the painting's colours);
    /// default: the daemon's (`temporal::STREAM_PALETTE`).
    #[arg(long)]
    pub stream_palette: Option<crate::transfer::schedule::Palette>,
    /// How far [5]'s frames are finished in the painting's colours (`--palette-finish`; 0: not at all); default:
    /// a daemon style's.
    #[arg(long, value_name = "F")]
    pub stream_palette_finish: Option<f32>,
    /// The moving object of [5]'s clip (the background is --content).
    #[arg(long, default_value = "examples/astronaut.jpg")]
    pub stream_object: PathBuf,
    /// Write a strip of consecutive frames of [5] (camera, cold runs, temporal) to this image.
    #[arg(long)]
    pub stream_strip: Option<PathBuf>,
    /// Also write the frames of [5]'s clip (JPEG, as a camera sends them) to this directory, to run
    /// `fuchun stylize --content 'DIR/*.jpg'` on them.
    #[arg(long)]
    pub stream_clip_dir: Option<PathBuf>,
    /// [6] kiosk sizes, WIDTHxHEIGHT each (e.g. 1024x1024,1920x1080): peak RSS and seconds per evaluation of
    /// `fuchun stylize` under --kiosk-budget (tiled where the image does not fit); empty skips it (slow on a CPU).
    #[arg(long, value_delimiter = ',', value_name = "WxH")]
    pub kiosk: Vec<String>,
    /// The memory budget (MiB) of [6].
    #[arg(long, default_value_t = 2000)]
    pub kiosk_budget: u64,
    /// Iterations of each [6] run (one scale at the full size).
    #[arg(long, default_value_t = 2)]
    pub kiosk_iterations: usize,
    /// [6] also without a budget (whole images), side by side.
    #[arg(long)]
    pub kiosk_whole: bool,
    /// Print the figures as one JSON object as well.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub peers: super::peers::PeerArgs,
}
