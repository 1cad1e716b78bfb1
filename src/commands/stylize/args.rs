//! `fuchun stylize`'s arguments, shared by the single image and the frame sequence, and what both load first.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use crate::engine::Model;
use crate::imageio::{self, Limits, Planar};
use crate::settings::transfer::{Profile, FRAME_SEQUENCE, SINGLE_IMAGE};
use crate::settings::{Door, Runtime, Stream, Transfer};
use crate::transfer::temporal;
use crate::transfer::StylizeOptions;

/// Whether `--content` names a frame sequence: a directory, or a file name with `*` or `?`.
pub fn is_sequence(content: &Path) -> bool {
    content.is_dir() || content.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains(['*', '?']))
}

#[derive(Debug, Clone, Args)]
pub struct StylizeArgs {
    /// Content image (JPEG, PNG or WebP), or a frame sequence: a directory or a pattern such as 'frames/*.jpg'
    /// (then --output is a directory; see --temporal-weight).
    #[arg(long, short = 'c', value_name = "PATH")]
    pub content: PathBuf,
    /// Style image(s), comma-separated.
    #[arg(long, short = 's', value_name = "PATH[,PATH…]", value_delimiter = ',', required = true)]
    pub style: Vec<PathBuf>,
    /// Output image (.png or .jpg); for a frame sequence, a directory (one PNG per frame and frames.jsonl).
    #[arg(long, short = 'o', value_name = "PATH")]
    pub output: PathBuf,
    #[command(flatten)]
    pub model: Runtime,
    #[command(flatten)]
    pub opts: Transfer,
    /// Save the current image every N iterations (beside the output, as NAME_<scale>_<iteration>.EXT).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub save_every: usize,
    /// Write one JSON line per evaluation (scale, iteration, each term's loss, elapsed ms) to PATH.
    #[arg(long, value_name = "PATH")]
    pub trace: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Frame sequences: how consecutive frames are compared and used.
    #[command(flatten)]
    pub stream: Stream,
}

impl StylizeArgs {
    /// The profile of the run: a single image, or a frame sequence (which keeps the photo's palette).
    pub fn profile(&self) -> &'static Profile {
        if is_sequence(&self.content) {
            &FRAME_SEQUENCE
        } else {
            &SINGLE_IMAGE
        }
    }

    /// The per-frame settings of a frame sequence.
    pub fn stream_settings(&self) -> Result<temporal::StreamSettings> {
        self.opts.validate(&Door::Cli)?;
        self.stream.settings(self.opts.temporal_weight(), &Door::Cli)
    }

    /// The transfer options of this run.
    pub fn options(&self, manifest: &crate::engine::Manifest, limits: &Limits) -> Result<StylizeOptions> {
        self.opts.options(manifest, self.profile(), limits, &Door::Cli)
    }
}

/// The style images and the model, loaded for contents of `content` size (its width, height): the sizes the run
/// will use are the TensorRT profile's and the warm-up's.
pub fn load_styles_and_model(args: &StylizeArgs, content: (usize, usize)) -> Result<(Vec<Planar>, Model)> {
    let limits = Limits::default();
    let mut styles = Vec::new();
    for s in &args.style {
        styles.push(imageio::load_path(s, &limits).with_context(|| format!("style image {}", s.display()))?);
    }
    let size = args.opts.image_size(args.profile());
    let scales = crate::transfer::schedule::scales_for(size, &args.opts.scales_at(size))?;
    let sizes = crate::transfer::schedule::expected_shapes(
        &scales,
        args.opts.style_scale,
        content,
        &styles.iter().map(|s| (s.width, s.height)).collect::<Vec<_>>(),
    );
    let model = args.model.load(&sizes)?;
    Ok((styles, model))
}
