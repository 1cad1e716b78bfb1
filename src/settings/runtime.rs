//! The runtime knobs (model directory, ONNX Runtime library, execution provider, CUDA and TensorRT): the flags of
//! every command that loads a model and `[model]` in TOML, declared once.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Deserialize;

use super::Door;
use crate::engine::runtime::{parse_shape, ArenaExtend, ConvSearch, CudaOptions, ProfileSpec, Shape, TensorRtOptions};
use crate::engine::{default_model_dir, Model, Provider, RuntimeOptions};

#[derive(Debug, Clone, PartialEq, Args, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Runtime {
    /// Model directory (manifest.json + features.onnx + objective.onnx). Default: models/out/vgg16-<pooling>
    /// found from the current directory or beside the binary. TOML: `dir` is the deprecated spelling.
    #[arg(long, value_name = "DIR")]
    #[serde(alias = "dir")]
    pub model: Option<PathBuf>,
    /// Pooling of the default model: max or avg (selects models/out/vgg16-avg when no model directory is given).
    #[arg(long, value_parser = ["max", "avg"])]
    pub pooling: Option<String>,
    /// Path of libonnxruntime.so (default: $ORT_DYLIB_PATH, then the project's .venv).
    #[arg(long, value_name = "PATH")]
    pub ort_library: Option<PathBuf>,
    /// Execution provider: auto (TensorRT → CUDA → CPU), tensorrt, cuda or cpu.
    #[arg(long, default_value = "auto")]
    #[serde(deserialize_with = "super::from_str")]
    pub provider: Provider,
    /// Intra-op threads for ONNX Runtime (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// CUDA/TensorRT device number.
    #[arg(long, default_value_t = 0)]
    pub device_id: i32,
    /// TensorRT: build FP16 engines (off by default: not yet verified for these graphs).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    pub tensorrt_fp16: bool,
    /// TensorRT: cache directory for engines (keyed by the graphs' sha256, precision and profile) and the timing
    /// cache; engines are reused across runs.
    #[arg(long, value_name = "DIR")]
    pub tensorrt_cache: Option<PathBuf>,
    /// TensorRT: keep a timing cache in the cache directory.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    pub tensorrt_timing_cache: bool,
    /// Deprecated spelling of `--tensorrt-timing-cache false`.
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub tensorrt_no_timing_cache: bool,
    /// TensorRT optimisation profile of the image input, WIDTHxHEIGHT each: one engine serves every size inside
    /// it. Default: min = the model's minimum size, max = the largest size this process runs.
    #[arg(long, value_name = "WxH")]
    pub tensorrt_profile_min: Option<String>,
    /// The profile's shape TensorRT optimises for (default: the largest frame).
    #[arg(long, value_name = "WxH")]
    pub tensorrt_profile_opt: Option<String>,
    #[arg(long, value_name = "WxH")]
    pub tensorrt_profile_max: Option<String>,
    /// The three at once, MIN,OPT,MAX (deprecated spelling of the three above).
    #[arg(long, value_name = "MIN,OPT,MAX", value_delimiter = ',')]
    #[serde(skip)]
    pub tensorrt_profile: Vec<String>,
    /// TensorRT builder workspace limit in MiB (default: ONNX Runtime's).
    #[arg(long, value_name = "MIB")]
    pub tensorrt_max_workspace_mb: Option<u64>,
    /// CUDA: cuDNN convolution algorithm search: heuristic, exhaustive (re-run for every new image size) or default.
    #[arg(long, default_value = "heuristic", value_name = "MODE")]
    #[serde(deserialize_with = "super::from_str")]
    pub cudnn_conv_algo_search: ConvSearch,
    /// CUDA: memory arena growth: same_as_requested or next_power_of_two.
    #[arg(long, default_value = "same_as_requested", value_name = "STRATEGY")]
    #[serde(deserialize_with = "super::from_str")]
    pub cuda_arena_extend_strategy: ArenaExtend,
    /// CUDA: size limit of the memory arena in MiB (default: none).
    #[arg(long, value_name = "MIB")]
    pub gpu_mem_limit_mb: Option<u64>,
    /// Memory budget of the process in MiB: an image whose evaluation does not fit is evaluated block by block,
    /// exactly (the tile graphs), with the block size and the L-BFGS history chosen to stay under it. Default:
    /// none (whole images only).
    #[arg(long = "max-memory", visible_alias = "memory-budget-mb", value_name = "MIB")]
    pub memory_budget_mb: Option<u64>,
}

impl Default for Runtime {
    fn default() -> Self {
        super::clap_defaults()
    }
}

impl Runtime {
    /// The runtime options (without the sizes, see `expected_shapes`), validated; relative paths are resolved by
    /// `resolve` (against the configuration file's directory in TOML).
    pub fn options(&self, door: &Door, resolve: &dyn Fn(&Path) -> PathBuf) -> Result<RuntimeOptions> {
        let n = |k: &str| door.name(k);
        let shape = |key: &str, v: &Option<String>| -> Result<Option<Shape>> {
            v.as_deref().map(|s| parse_shape(s).with_context(|| n(key))).transpose()
        };
        let mut profile = ProfileSpec {
            min: shape("tensorrt_profile_min", &self.tensorrt_profile_min)?,
            opt: shape("tensorrt_profile_opt", &self.tensorrt_profile_opt)?,
            max: shape("tensorrt_profile_max", &self.tensorrt_profile_max)?,
        };
        match self.tensorrt_profile.as_slice() {
            [] => {}
            [min, opt, max] => {
                let s = |v: &str| parse_shape(v).with_context(|| n("tensorrt_profile"));
                profile = ProfileSpec { min: Some(s(min)?), opt: Some(s(opt)?), max: Some(s(max)?) };
            }
            _ => bail!("{} takes three sizes: MIN,OPT,MAX (WIDTHxHEIGHT each)", n("tensorrt_profile")),
        }
        let o = RuntimeOptions {
            library: self.ort_library.as_deref().map(resolve),
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
                cache: self.tensorrt_cache.as_deref().map(resolve),
                timing_cache: self.tensorrt_timing_cache && !self.tensorrt_no_timing_cache,
                max_workspace_mb: self.tensorrt_max_workspace_mb,
                profile,
            },
            sizes: Vec::new(),
            memory_budget_mb: self.memory_budget_mb,
        };
        o.validate()?;
        Ok(o)
    }

    /// `options` for the command line (paths as given, relative to the working directory).
    pub fn cli_options(&self) -> Result<RuntimeOptions> {
        self.options(&Door::Cli, &|p| p.to_path_buf())
    }

    /// `model_dir` for the command line.
    pub fn cli_model_dir(&self) -> Result<PathBuf> {
        self.model_dir(&|p| p.to_path_buf())
    }

    /// The model directory: the one given (resolved), or the default model of the chosen pooling.
    pub fn model_dir(&self, resolve: &dyn Fn(&Path) -> PathBuf) -> Result<PathBuf> {
        if let Some(m) = &self.model {
            return Ok(resolve(m));
        }
        default_model_dir(&format!("vgg16-{}", self.pooling.as_deref().unwrap_or("max")))
    }

    /// Load the model for a command-line run; `sizes` are the image shapes the command will run (for the TensorRT
    /// profile).
    pub fn load(&self, sizes: &[Shape]) -> Result<Model> {
        let dir = self.cli_model_dir()?;
        let mut opts = self.cli_options()?;
        let manifest = crate::engine::Manifest::load(&dir)?;
        opts.sizes = crate::transfer::tiled::budget::whole_sizes(&manifest, sizes, opts.memory_budget_mb);
        let model = Model::load(&dir, &opts)?;
        self.check_pooling(&model, &dir)?;
        tracing::info!(model = %dir.display(), provider = %model.provider_report().summary(), "model loaded");
        Ok(model)
    }

    /// A pooling asked for must be the model's.
    pub fn check_pooling(&self, model: &Model, dir: &Path) -> Result<()> {
        if let Some(p) = &self.pooling {
            if &model.manifest.pooling != p {
                bail!(
                    "pooling {p} asked for, but the model in {} was exported with {} pooling: export one with \
                     `python -m fuchun_export --pooling {p}` or drop the pooling setting",
                    dir.display(),
                    model.manifest.pooling
                );
            }
        }
        Ok(())
    }
}
