//! fuchun: optimisation-based neural style transfer (Gatys + Berger-Memisevic + Risser) on ONNX Runtime.

pub mod commands;
pub mod daemon;
pub mod engine;
pub mod imageio;
pub mod lab;
pub mod memory;
pub mod settings;
pub mod transfer;
