//! Options shared by the commands that load a model.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use crate::engine::{Model, Provider, RuntimeOptions};

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model directory (manifest.json + features.onnx + objective.onnx). Default: models/out/vgg16-<pooling>
    /// found from the current directory or beside the binary.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Pooling of the default model: max or avg (selects models/out/vgg16-avg when --model is not given).
    #[arg(long, value_parser = ["max", "avg"])]
    pub pooling: Option<String>,
    /// Path of libonnxruntime.so (default: $ORT_DYLIB_PATH, then the project's .venv).
    #[arg(long, value_name = "PATH")]
    pub ort_library: Option<PathBuf>,
    /// Execution provider: auto (TensorRT → CUDA → CPU), tensorrt, cuda or cpu.
    #[arg(long, default_value = "auto")]
    pub provider: Provider,
    /// Intra-op threads for ONNX Runtime (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// TensorRT: build FP16 engines.
    #[arg(long)]
    pub tensorrt_fp16: bool,
    /// TensorRT: engine cache directory (engines are reused across runs).
    #[arg(long, value_name = "DIR")]
    pub tensorrt_cache: Option<PathBuf>,
}

impl ModelArgs {
    pub fn runtime(&self) -> RuntimeOptions {
        RuntimeOptions {
            library: self.ort_library.clone(),
            provider: self.provider,
            threads: self.threads,
            tensorrt_fp16: self.tensorrt_fp16,
            tensorrt_cache: self.tensorrt_cache.clone(),
        }
    }

    pub fn model_dir(&self) -> Result<PathBuf> {
        if let Some(m) = &self.model {
            return Ok(m.clone());
        }
        default_model_dir(&format!("vgg16-{}", self.pooling.as_deref().unwrap_or("max")))
    }

    pub fn load(&self) -> Result<Model> {
        let dir = self.model_dir()?;
        let model = Model::load(&dir, &self.runtime())?;
        if let Some(p) = &self.pooling {
            if &model.manifest.pooling != p {
                bail!(
                    "--pooling {p} but the model in {} was exported with {} pooling: export one with \
                     `python -m fuchun_export --pooling {p}` or drop --pooling",
                    dir.display(),
                    model.manifest.pooling
                );
            }
        }
        tracing::info!(model = %dir.display(), provider = %model.provider, "model loaded");
        Ok(model)
    }
}

/// models/out/NAME searched from the current directory upwards, beside the executable, and in the source tree.
pub fn default_model_dir(name: &str) -> Result<PathBuf> {
    for r in &crate::engine::runtime::search_roots() {
        for candidate in [r.join("models/out").join(name), r.join("models").join(name)] {
            if candidate.join("manifest.json").is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!("no exported model models/out/{name} found: run `make models` (or pass --model DIR)")
}
