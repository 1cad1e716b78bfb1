//! Engine: ONNX Runtime, execution providers and the graph contract (manifest).

pub mod manifest;
pub mod model;
pub mod runtime;

pub use manifest::{default_model_dir, Manifest};
pub use model::{FeatureMap, Losses, Model, ObjectiveInputs, OnHist, ProviderReport};
pub use runtime::{Provider, RuntimeOptions};
