//! `fuchun stylize`: one image, or a frame sequence with the daemon's per-frame logic.

pub mod args;
pub mod frames;
pub mod image;

use anyhow::Result;

pub use args::StylizeArgs;

pub fn run(args: &StylizeArgs) -> Result<()> {
    if args::is_sequence(&args.content) {
        frames::run(args)
    } else {
        image::run(args)
    }
}
