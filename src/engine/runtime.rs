//! ONNX Runtime: finding and loading the shared library, the process-wide environment, execution providers.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use ort::environment::Environment;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};

/// Which execution provider runs the graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// TensorRT, then CUDA, then CPU: the first that this build and library support.
    Auto,
    TensorRt,
    Cuda,
    Cpu,
}

impl FromStr for Provider {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Provider::Auto),
            "tensorrt" | "trt" => Ok(Provider::TensorRt),
            "cuda" => Ok(Provider::Cuda),
            "cpu" => Ok(Provider::Cpu),
            other => bail!("unknown provider {other:?}: use auto, tensorrt, cuda or cpu"),
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Provider::Auto => "auto",
            Provider::TensorRt => "tensorrt",
            Provider::Cuda => "cuda",
            Provider::Cpu => "cpu",
        })
    }
}

/// Runtime settings shared by every session.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Path of libonnxruntime.so; None: ORT_DYLIB_PATH, then the project's .venv.
    pub library: Option<PathBuf>,
    pub provider: Provider,
    /// Intra-op threads (0: ONNX Runtime's default, one per core).
    pub threads: usize,
    pub tensorrt_fp16: bool,
    pub tensorrt_cache: Option<PathBuf>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            library: None,
            provider: Provider::Auto,
            threads: 0,
            tensorrt_fp16: false,
            tensorrt_cache: None,
        }
    }
}

struct Loaded {
    env: Environment,
    library: PathBuf,
    version: String,
}

static RUNTIME: OnceLock<std::result::Result<Loaded, String>> = OnceLock::new();

/// Directories searched for the project's files (.venv, models/out): the current directory and its parents, the
/// executable's directory and its parents, and the source tree the binary was built from.
pub fn search_roots() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    roots
}

/// Where libonnxruntime is looked for when no path is given.
pub fn discover_library() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("ORT_DYLIB_PATH") {
        if !p.is_empty() {
            return Ok(PathBuf::from(p));
        }
    }
    for root in &search_roots() {
        if let Some(p) = find_in_venv(&root.join(".venv")) {
            return Ok(p);
        }
    }
    for p in [
        "/usr/lib/libonnxruntime.so",
        "/usr/local/lib/libonnxruntime.so",
        "/usr/lib/aarch64-linux-gnu/libonnxruntime.so",
    ] {
        if Path::new(p).exists() {
            return Ok(PathBuf::from(p));
        }
    }
    bail!(
        "ONNX Runtime library not found: pass --ort-library /path/to/libonnxruntime.so, set ORT_DYLIB_PATH, \
         or run `make venv` (installs the onnxruntime wheel into .venv)"
    )
}

fn find_in_venv(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    let mut pythons: Vec<PathBuf> = std::fs::read_dir(&lib).ok()?.flatten().map(|e| e.path()).collect();
    pythons.sort();
    for py in pythons {
        let capi = py.join("site-packages/onnxruntime/capi");
        if let Ok(entries) = std::fs::read_dir(&capi) {
            let mut libs: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so")))
                .collect();
            libs.sort();
            if let Some(p) = libs.pop() {
                return Some(p);
            }
        }
    }
    None
}

/// Load ONNX Runtime once per process. Later calls return the library loaded first (ONNX Runtime allows one
/// environment per process); asking for a different library then is an error.
pub fn init(library: Option<&Path>) -> Result<&'static Environment> {
    let wanted = match library {
        Some(p) => p.to_path_buf(),
        None => discover_library()?,
    };
    let loaded = RUNTIME.get_or_init(|| load(&wanted).map_err(|e| format!("{e:#}")));
    match loaded {
        Ok(l) => {
            if library.is_some() && l.library != wanted {
                bail!(
                    "ONNX Runtime is already loaded from {} in this process; cannot switch to {}",
                    l.library.display(),
                    wanted.display()
                );
            }
            Ok(&l.env)
        }
        Err(e) => Err(anyhow!("{e}")),
    }
}

/// The library path in use, if loaded.
pub fn loaded_library() -> Option<PathBuf> {
    RUNTIME.get().and_then(|r| r.as_ref().ok()).map(|l| l.library.clone())
}

fn load(path: &Path) -> Result<Loaded> {
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "ONNX Runtime library {} does not exist: pass --ort-library with the path of libonnxruntime.so \
             (in the onnxruntime wheel: site-packages/onnxruntime/capi/), or run `make venv`",
            path.display()
        )
    })?;
    if !meta.is_file() {
        bail!("ONNX Runtime library {} is not a file: pass the path of libonnxruntime.so", path.display());
    }
    let version = library_version(path)?;
    let builder = ort::init_from(path).map_err(|e| {
        anyhow!(
            "{} is not a usable ONNX Runtime library ({e}): pass --ort-library with libonnxruntime.so \
             version >= 1.17 (e.g. from `pip install onnxruntime`)",
            path.display()
        )
    })?;
    let env = builder.with_name("fuchun").build().map_err(|e| anyhow!("creating the ONNX Runtime environment: {e}"))?;
    tracing::info!(library = %path.display(), version, "ONNX Runtime loaded");
    Ok(Loaded { env, library: path.to_path_buf(), version })
}

/// Open the library and ask it for its version (OrtGetApiBase → GetVersionString) before `ort` takes it: a file
/// that is not ONNX Runtime gets a clear error here instead of deeper inside `ort`.
fn library_version(path: &Path) -> Result<String> {
    let fix = "pass --ort-library with libonnxruntime.so version >= 1.17 (e.g. from `pip install onnxruntime`)";
    // SAFETY: loading a shared library runs its initialisers; the path is what the user asked us to load.
    let lib = unsafe { libloading::Library::new(path) }
        .map_err(|e| anyhow!("{} is not a usable ONNX Runtime library ({e}): {fix}", path.display()))?;
    // SAFETY: OrtGetApiBase has this signature in every ONNX Runtime release; the string it returns is static.
    unsafe {
        let get: libloading::Symbol<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> =
            lib.get(b"OrtGetApiBase").map_err(|_| {
                anyhow!("{} is not a usable ONNX Runtime library (no OrtGetApiBase): {fix}", path.display())
            })?;
        let base = get();
        if base.is_null() {
            bail!("{} is not a usable ONNX Runtime library (OrtGetApiBase returned null): {fix}", path.display());
        }
        let v = std::ffi::CStr::from_ptr(((*base).GetVersionString)());
        Ok(v.to_string_lossy().into_owned())
    }
}

/// The ONNX Runtime version of the loaded library ("unknown" before loading).
pub fn version() -> String {
    RUNTIME.get().and_then(|r| r.as_ref().ok()).map(|l| l.version.clone()).unwrap_or_else(|| "unknown".into())
}

/// Execution providers that the loaded library reports (e.g. "CPUExecutionProvider").
pub fn available_providers() -> Vec<String> {
    #[allow(unused_mut)]
    let mut out = vec!["CPUExecutionProvider".to_string()];
    #[cfg(feature = "cuda")]
    if matches!(<ort::ep::CUDA as ort::ep::ExecutionProvider>::is_available(), Ok(true)) {
        out.push("CUDAExecutionProvider".into());
    }
    #[cfg(feature = "tensorrt")]
    if matches!(<ort::ep::TensorRT as ort::ep::ExecutionProvider>::is_available(), Ok(true)) {
        out.push("TensorrtExecutionProvider".into());
    }
    out
}

/// Make glibc return large freed blocks to the system at once. By default glibc raises its mmap threshold each
/// time a large block is freed, after which large buffers (the feature extractor's activations, the sort's scratch)
/// come from the heap and stay resident beside ONNX Runtime's arena: `fuchun stylize` at 512² peaked at 1195–1278
/// MB, with a fixed 128 KiB threshold at 1155 MB, for no measurable time (docs/performance.md). Call once at start.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// How a session is used: the objective runs hundreds of times per image, the feature extractor a few times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionUse {
    /// Every optimisation (`All`, NCHWc layout included) and the CPU arena.
    Hot,
    /// No CPU arena and `Extended` optimisations: without the NCHWc layout transform ONNX Runtime keeps no
    /// reordered copy of the weights (features.onnx: 84 MB → 10 MB resident after loading, 50 MB less at its peak),
    /// for 4 % more time on a run that happens a few times per scale.
    Occasional,
}

/// Create a session builder with the requested provider registered; returns the provider that will run.
pub fn session_builder(
    env: &Environment,
    opts: &RuntimeOptions,
    usage: SessionUse,
) -> Result<(SessionBuilder, Provider)> {
    let cpu_arena = usage == SessionUse::Hot;
    let level = if usage == SessionUse::Hot { GraphOptimizationLevel::All } else { GraphOptimizationLevel::Level2 };
    let mut b = ort::session::Session::builder(env).map_err(|e| anyhow!("ONNX Runtime session options: {e}"))?;
    b = b.with_optimization_level(level).map_err(|e| anyhow!("setting the optimisation level: {e}"))?;
    // ONNX Runtime's memory pattern plans one block for all intermediate tensors from the first run and allocates
    // it on the second, beside the arena chunks of the first run, which stay: at 512x384 that is +600 MB of peak
    // RSS for no measurable speed (docs/performance.md). The arena alone reuses its chunks from run to run.
    b = b.with_memory_pattern(false).map_err(|e| anyhow!("disabling the memory pattern: {e}"))?;
    if opts.threads > 0 {
        b = b.with_intra_threads(opts.threads).map_err(|e| anyhow!("setting {} threads: {e}", opts.threads))?;
    }
    let order: &[Provider] = match opts.provider {
        Provider::Auto => &[Provider::TensorRt, Provider::Cuda, Provider::Cpu],
        Provider::TensorRt => &[Provider::TensorRt],
        Provider::Cuda => &[Provider::Cuda],
        Provider::Cpu => &[Provider::Cpu],
    };
    let mut reasons = Vec::new();
    for &p in order {
        let registered = register(&mut b, p, opts).and_then(|()| {
            if p == Provider::Cpu && !cpu_arena {
                use ort::ep::ExecutionProvider;
                ort::ep::CPU::default().with_arena_allocator(false).register(&mut b).map_err(|e| anyhow!("{e}"))
            } else {
                Ok(())
            }
        });
        match registered {
            Ok(()) => {
                if opts.provider == Provider::Auto {
                    tracing::info!(provider = %p, "execution provider selected");
                }
                return Ok((b, p));
            }
            Err(e) => {
                tracing::debug!(provider = %p, error = %e, "provider unavailable");
                reasons.push(format!("{p}: {e:#}"));
            }
        }
    }
    bail!("execution provider {} is unavailable ({}): use --provider cpu or auto", opts.provider, reasons.join("; "))
}

#[allow(unused_variables)]
fn register(b: &mut SessionBuilder, p: Provider, opts: &RuntimeOptions) -> Result<()> {
    match p {
        Provider::Cpu | Provider::Auto => Ok(()),
        Provider::Cuda => {
            #[cfg(feature = "cuda")]
            {
                use ort::ep::ExecutionProvider;
                if !ort::ep::CUDA::is_available().unwrap_or(false) {
                    bail!("the loaded ONNX Runtime library has no CUDA provider (install onnxruntime-gpu)");
                }
                ort::ep::CUDA::default().register(b).map_err(|e| anyhow!("{e}"))
            }
            #[cfg(not(feature = "cuda"))]
            bail!("this fuchun binary was built without CUDA support: rebuild with `cargo build --release --features cuda`")
        }
        Provider::TensorRt => {
            #[cfg(feature = "tensorrt")]
            {
                use ort::ep::ExecutionProvider;
                if !ort::ep::TensorRT::is_available().unwrap_or(false) {
                    bail!("the loaded ONNX Runtime library has no TensorRT provider (install the JetPack onnxruntime-gpu)");
                }
                let mut trt = ort::ep::TensorRT::default().with_fp16(opts.tensorrt_fp16);
                if let Some(dir) = &opts.tensorrt_cache {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating the TensorRT engine cache {}", dir.display()))?;
                    trt = trt.with_engine_cache(true).with_engine_cache_path(dir.display().to_string());
                }
                trt.register(b).map_err(|e| anyhow!("{e}"))
            }
            #[cfg(not(feature = "tensorrt"))]
            bail!("this fuchun binary was built without TensorRT support: rebuild with `cargo build --release --features tensorrt`")
        }
    }
}
