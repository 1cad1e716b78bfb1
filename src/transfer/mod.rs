//! Transfer: targets, optimisers and the coarse-to-fine schedule that turns a content image and style images
//! into a stylised image.

pub mod canvas;
pub mod color;
pub mod histmatch;
pub mod inputs;
pub mod optim;
pub mod schedule;
pub mod targets;
pub mod temporal;
pub mod tiled;

pub use inputs::Weights;
pub use schedule::{
    stylize, stylize_with, CachedTargets, EvalRecord, Hooks, Init, NoHooks, Optimizer, Outcome, Palette, ScaleReport,
    StyleImages, StyleSource, StylizeOptions,
};
pub use targets::StyleTargets;
