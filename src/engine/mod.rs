//! Engine: ONNX Runtime, execution providers and the graph contract (manifest).

pub mod manifest;
pub mod model;
pub mod runtime;
pub mod tiles;

pub use manifest::{default_model_dir, Manifest, Tiling};
pub use model::{FeatureMap, Losses, Model, ObjectiveInputs, OnHist, ProviderReport};
pub use runtime::{Provider, RuntimeOptions};
pub use tiles::{TileGraph, TileInput, TileOutput};
