//! Options shared by the commands that load a model.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use clap::Args;

use crate::engine::runtime::{parse_shape, ArenaExtend, ConvSearch, CudaOptions, ProfileSpec, Shape, TensorRtOptions};
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
    /// TensorRT: build FP16 engines (off by default: not yet verified for these graphs).
    #[arg(long)]
    pub tensorrt_fp16: bool,
    /// TensorRT: cache directory for engines (keyed by the graphs' sha256, precision and profile) and the timing
    /// cache; engines are reused across runs.
    #[arg(long, value_name = "DIR")]
    pub tensorrt_cache: Option<PathBuf>,
    /// TensorRT: no timing cache in the cache directory.
    #[arg(long)]
    pub tensorrt_no_timing_cache: bool,
    /// TensorRT optimisation profile, MIN,OPT,MAX image sizes as WIDTHxHEIGHT (e.g. 24x24,512x384,512x512);
    /// default: from the model's minimum size to the sizes this command runs.
    #[arg(long, value_name = "MIN,OPT,MAX", value_delimiter = ',')]
    pub tensorrt_profile: Vec<String>,
    /// TensorRT builder workspace limit in MiB (default: ONNX Runtime's).
    #[arg(long, value_name = "MIB")]
    pub tensorrt_max_workspace_mb: Option<u64>,
    /// CUDA: cuDNN convolution algorithm search: heuristic, exhaustive (re-run for every new image size) or default.
    #[arg(long, default_value = "heuristic", value_name = "MODE")]
    pub cudnn_conv_algo_search: ConvSearch,
    /// CUDA: memory arena growth: same_as_requested or next_power_of_two.
    #[arg(long, default_value = "same_as_requested", value_name = "STRATEGY")]
    pub cuda_arena_extend_strategy: ArenaExtend,
    /// CUDA: size limit of the memory arena in MiB (default: none).
    #[arg(long, value_name = "MIB")]
    pub gpu_mem_limit_mb: Option<u64>,
    /// CUDA/TensorRT device number.
    #[arg(long, default_value_t = 0)]
    pub device_id: i32,
}

impl ModelArgs {
    pub fn runtime(&self) -> Result<RuntimeOptions> {
        let profile = match self.tensorrt_profile.as_slice() {
            [] => ProfileSpec::default(),
            [min, opt, max] => ProfileSpec {
                min: Some(parse_shape(min).map_err(|e| anyhow!("--tensorrt-profile: {e}"))?),
                opt: Some(parse_shape(opt).map_err(|e| anyhow!("--tensorrt-profile: {e}"))?),
                max: Some(parse_shape(max).map_err(|e| anyhow!("--tensorrt-profile: {e}"))?),
            },
            _ => bail!("--tensorrt-profile takes three sizes: MIN,OPT,MAX (WIDTHxHEIGHT each)"),
        };
        let o = RuntimeOptions {
            library: self.ort_library.clone(),
            provider: self.provider,
            threads: self.threads,
            cuda: CudaOptions {
                device_id: self.device_id,
                conv_search: self.cudnn_conv_algo_search,
                arena_extend: self.cuda_arena_extend_strategy,
                mem_limit_mb: self.gpu_mem_limit_mb,
            },
            tensorrt: TensorRtOptions {
                fp16: self.tensorrt_fp16,
                cache: self.tensorrt_cache.clone(),
                timing_cache: !self.tensorrt_no_timing_cache,
                max_workspace_mb: self.tensorrt_max_workspace_mb,
                profile,
            },
            sizes: Vec::new(),
        };
        o.validate()?;
        Ok(o)
    }

    pub fn model_dir(&self) -> Result<PathBuf> {
        if let Some(m) = &self.model {
            return Ok(m.clone());
        }
        default_model_dir(&format!("vgg16-{}", self.pooling.as_deref().unwrap_or("max")))
    }

    /// Load the model; `sizes` are the image shapes the command will run (for the TensorRT profile).
    pub fn load(&self, sizes: &[Shape]) -> Result<Model> {
        let dir = self.model_dir()?;
        let mut opts = self.runtime()?;
        opts.sizes = sizes.to_vec();
        let model = Model::load(&dir, &opts)?;
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
        tracing::info!(model = %dir.display(), provider = %model.provider_report().summary(), "model loaded");
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
