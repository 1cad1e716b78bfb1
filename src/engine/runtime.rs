//! ONNX Runtime: finding and loading the shared library, the process-wide environment, execution providers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{anyhow, bail, Context, Result};
use ort::environment::Environment;
use ort::logging::LogLevel;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};

/// Which execution provider runs the graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Provider {
    /// TensorRT, then CUDA, then CPU: the first with which every session of the model can be created.
    #[default]
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

/// cuDNN's convolution algorithm search (CUDA provider `cudnn_conv_algo_search`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvSearch {
    /// cuDNN's heuristics pick an algorithm without running any: no per-shape benchmarking, no extra memory.
    #[default]
    Heuristic,
    /// Benchmark every algorithm for every new input shape (ONNX Runtime's default): the first run of each H×W is
    /// slow and needs workspace memory.
    Exhaustive,
    /// Always the implicit-precomputed-GEMM algorithm.
    Default,
}

impl FromStr for ConvSearch {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "heuristic" => Ok(ConvSearch::Heuristic),
            "exhaustive" => Ok(ConvSearch::Exhaustive),
            "default" => Ok(ConvSearch::Default),
            other => bail!("unknown cuDNN convolution search {other:?}: use heuristic, exhaustive or default"),
        }
    }
}

impl std::fmt::Display for ConvSearch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConvSearch::Heuristic => "heuristic",
            ConvSearch::Exhaustive => "exhaustive",
            ConvSearch::Default => "default",
        })
    }
}

/// How the CUDA provider's memory arena grows (`arena_extend_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArenaExtend {
    /// Grow by what is asked for: the right choice where the GPU shares its memory with the CPU (Jetson).
    #[default]
    SameAsRequested,
    /// Grow by powers of two (ONNX Runtime's default): fewer allocations, up to twice the memory.
    NextPowerOfTwo,
}

impl FromStr for ArenaExtend {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "same_as_requested" | "ksameasrequested" => Ok(ArenaExtend::SameAsRequested),
            "next_power_of_two" | "knextpoweroftwo" => Ok(ArenaExtend::NextPowerOfTwo),
            other => bail!("unknown CUDA arena extend strategy {other:?}: use same_as_requested or next_power_of_two"),
        }
    }
}

impl std::fmt::Display for ArenaExtend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ArenaExtend::SameAsRequested => "same_as_requested",
            ArenaExtend::NextPowerOfTwo => "next_power_of_two",
        })
    }
}

/// CUDA provider settings (also used by the CUDA provider registered behind TensorRT).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CudaOptions {
    pub device_id: i32,
    pub conv_search: ConvSearch,
    pub arena_extend: ArenaExtend,
    /// Size limit of the CUDA memory arena in MiB (`gpu_mem_limit`); None: no limit.
    pub mem_limit_mb: Option<u64>,
}

/// An image shape, height × width, in pixels.
pub type Shape = [usize; 2];

/// Parse `WIDTHxHEIGHT` (e.g. "512x288") into a [`Shape`] (height, width).
pub fn parse_shape(s: &str) -> Result<Shape> {
    let (w, h) = s
        .trim()
        .split_once(['x', 'X', '×'])
        .ok_or_else(|| anyhow!("{s:?} is not a size: write WIDTHxHEIGHT, e.g. 512x288"))?;
    let parse = |v: &str| -> Result<usize> {
        let n: usize =
            v.trim().parse().map_err(|_| anyhow!("{s:?} is not a size: write WIDTHxHEIGHT, e.g. 512x288"))?;
        if n == 0 {
            bail!("{s:?}: a size must be at least 1x1");
        }
        Ok(n)
    };
    Ok([parse(h)?, parse(w)?])
}

/// Explicit TensorRT optimisation profile, each shape optional (see [`TensorRtOptions::profile`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProfileSpec {
    pub min: Option<Shape>,
    pub opt: Option<Shape>,
    pub max: Option<Shape>,
}

/// TensorRT provider settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRtOptions {
    /// Build FP16 engines. Off by default: the graphs' FP16 behaviour is not yet verified.
    pub fp16: bool,
    /// Cache directory: engines under `<dir>/<graph>-<sha256 prefix>-<precision>-<profile>/` (so a new export or
    /// another profile never loads a stale engine), the timing cache under `<dir>/timing/`.
    pub cache: Option<PathBuf>,
    /// Keep TensorRT's timing cache (in the cache directory): later engine builds skip the kernel timing.
    pub timing_cache: bool,
    /// TensorRT builder workspace limit in MiB (None: ONNX Runtime's default).
    pub max_workspace_mb: Option<u64>,
    /// Overrides of the optimisation profile. Unset shapes are derived: min from the model's minimum size, max and
    /// opt from [`RuntimeOptions::sizes`]. With neither sizes nor overrides there is no explicit profile and
    /// ONNX Runtime rebuilds an engine whenever an input shape leaves the range seen so far.
    pub profile: ProfileSpec,
}

impl Default for TensorRtOptions {
    fn default() -> Self {
        TensorRtOptions {
            fp16: false,
            cache: None,
            timing_cache: true,
            max_workspace_mb: None,
            profile: Default::default(),
        }
    }
}

/// The smallest memory budget accepted: the process with the real model loaded and one small block.
pub const MIN_MEMORY_BUDGET_MB: u64 = 512;

/// Runtime settings shared by every session.
#[derive(Debug, Clone, Default)]
pub struct RuntimeOptions {
    /// Path of libonnxruntime.so; None: ORT_DYLIB_PATH, then the project's .venv.
    pub library: Option<PathBuf>,
    pub provider: Provider,
    /// Intra-op threads (0: ONNX Runtime's default, one per core).
    pub threads: usize,
    pub cuda: CudaOptions,
    pub tensorrt: TensorRtOptions,
    /// The image shapes (height, width) this process expects to evaluate, style images included: the TensorRT
    /// optimisation profile covers them and `Model::warm_up` runs them.
    pub sizes: Vec<Shape>,
    /// The memory budget of the process in MiB (`--max-memory`, `[model] memory_budget_mb`): with one, the tile
    /// graphs (tile_stats.onnx, tile_grad.onnx) are loaded too and an image that does not fit is evaluated block by
    /// block (`transfer::tiled`).
    pub memory_budget_mb: Option<u64>,
}

impl RuntimeOptions {
    /// Reject inconsistent settings with a message naming the option.
    pub fn validate(&self) -> Result<()> {
        if self.cuda.mem_limit_mb == Some(0) {
            bail!("gpu_mem_limit_mb must be at least 1 (leave it unset for no limit)");
        }
        if self.tensorrt.max_workspace_mb == Some(0) {
            bail!("tensorrt_max_workspace_mb must be at least 1 (leave it unset for ONNX Runtime's default)");
        }
        if let Some(mb) = self.memory_budget_mb {
            if mb < MIN_MEMORY_BUDGET_MB {
                bail!(
                    "a memory budget (--max-memory / memory_budget_mb) of {mb} MiB is below the {MIN_MEMORY_BUDGET_MB} \
                     MiB the model itself and one block need: give at least {MIN_MEMORY_BUDGET_MB}, or leave it unset"
                );
            }
        }
        if self.cuda.device_id < 0 {
            bail!("device_id must be >= 0, got {}", self.cuda.device_id);
        }
        let p = &self.tensorrt.profile;
        let fmt = |s: &Shape| format!("{}x{}", s[1], s[0]);
        for (a, an, b, bn) in
            [(&p.min, "min", &p.opt, "opt"), (&p.opt, "opt", &p.max, "max"), (&p.min, "min", &p.max, "max")]
        {
            if let (Some(a), Some(b)) = (a, b) {
                if a[0] > b[0] || a[1] > b[1] {
                    bail!(
                        "TensorRT profile: {an} {} is larger than {bn} {} (each side of min <= opt <= max)",
                        fmt(a),
                        fmt(b)
                    );
                }
            }
        }
        Ok(())
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
    check_version(&version).map_err(|e| anyhow!("{}: {e}", path.display()))?;
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

/// The oldest ONNX Runtime release the `ort` crate's API level (`api-17`) can drive.
pub const MIN_VERSION: (u32, u32) = (1, 17);

/// Accept a library version string ("1.32.0") only from [`MIN_VERSION`] on.
pub fn check_version(version: &str) -> Result<()> {
    let mut parts = version.trim().split('.').map(|p| p.parse::<u32>());
    let (major, minor) = match (parts.next(), parts.next()) {
        (Some(Ok(a)), Some(Ok(b))) => (a, b),
        _ => bail!("ONNX Runtime reports the version {version:?}, which is not MAJOR.MINOR.PATCH"),
    };
    if (major, minor) < MIN_VERSION {
        bail!(
            "ONNX Runtime {version} is too old: fuchun needs {}.{} or newer (the API level 17 of the `ort` crate); \
             install a newer onnxruntime (or onnxruntime-gpu / the JetPack wheel) and pass its libonnxruntime.so",
            MIN_VERSION.0,
            MIN_VERSION.1
        );
    }
    Ok(())
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

/// One attempt of the provider fallback: every session of the model is created with this provider, or the
/// attempt fails as a whole and the next one is tried.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub provider: Provider,
    /// Extra ONNX Runtime session configuration entries (`AddSessionConfigEntry`) for this attempt only. Empty in
    /// normal use; the tests use it to make an attempt fail for real at session creation.
    pub session_config: Vec<(String, String)>,
}

impl Candidate {
    pub fn new(provider: Provider) -> Candidate {
        Candidate { provider, session_config: Vec::new() }
    }
}

/// The attempts for a requested provider, in order: `auto` tries TensorRT, CUDA, then CPU; an explicitly
/// requested provider is the only attempt (its failure is an error, not a fallback).
pub fn candidates(requested: Provider) -> Vec<Candidate> {
    match requested {
        Provider::Auto => [Provider::TensorRt, Provider::Cuda, Provider::Cpu].map(Candidate::new).to_vec(),
        p => vec![Candidate::new(p)],
    }
}

/// ONNX Runtime's name of a provider.
pub fn ep_name(p: Provider) -> &'static str {
    match p {
        Provider::TensorRt => "TensorrtExecutionProvider",
        Provider::Cuda => "CUDAExecutionProvider",
        Provider::Cpu | Provider::Auto => "CPUExecutionProvider",
    }
}

/// Whether this binary was built with a provider (`--features cuda` / `tensorrt`); the CPU one always is.
pub fn built_with(p: Provider) -> bool {
    match p {
        Provider::Cuda => cfg!(feature = "cuda"),
        Provider::TensorRt => cfg!(feature = "tensorrt"),
        Provider::Cpu | Provider::Auto => true,
    }
}

/// Why a provider cannot even be registered, before any session is tried: not compiled in, or the loaded library
/// lacks it. None: it can be tried.
pub fn unavailable_reason(p: Provider) -> Option<String> {
    let feature = match p {
        Provider::Cuda => "cuda",
        Provider::TensorRt => "tensorrt",
        Provider::Cpu | Provider::Auto => return None,
    };
    if !built_with(p) {
        return Some(format!(
            "not available in this build: this fuchun binary was built without {p} support (rebuild with \
             `cargo build --release --features {feature}`)"
        ));
    }
    if !available_providers().iter().any(|a| a == ep_name(p)) {
        return Some(format!(
            "not available in this library: the loaded ONNX Runtime ({}) has no {} (install onnxruntime-gpu; on a \
             Jetson, the JetPack onnxruntime-gpu wheel)",
            version(),
            ep_name(p)
        ));
    }
    None
}

/// TensorRT settings of one graph, computed by the model loader from its manifest entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GraphTensorRt {
    /// Engine cache sub-directory: graph, sha256 prefix, precision and profile, so that a re-export, FP16 or another
    /// profile never picks up a stale engine.
    pub cache_key: String,
    /// (min, opt, max) shapes in ONNX Runtime's syntax (`x:1x3x64x64,content_relu4_2:1x512x8x8`); None: no
    /// explicit profile.
    pub profile: Option<[String; 3]>,
}

/// Collects what ONNX Runtime logs about node placement while sessions are created (its verbose "Node
/// placements" lines, and under each provider's header the nodes it got, one `OpType (name)` a line); warnings
/// and errors of those sessions go on to `tracing`.
#[derive(Clone, Default)]
pub struct PlacementLog(Arc<Mutex<Placements>>);

#[derive(Default)]
struct Placements {
    lines: Vec<String>,
    /// The last message was a placement header or one of its node lines: an indented `OpType (name)` that
    /// follows belongs to that header's provider.
    in_block: bool,
}

impl PlacementLog {
    fn logger(&self) -> ort::logging::LoggerFunction {
        let state = self.0.clone();
        Arc::new(move |level: LogLevel, _category: &str, id: &str, location: &str, message: &str| {
            state.lock().unwrap().take(message);
            match level {
                LogLevel::Warning => tracing::warn!(target: "ort", session = id, location, "{message}"),
                LogLevel::Error | LogLevel::Fatal => {
                    tracing::error!(target: "ort", session = id, location, "{message}")
                }
                _ => {}
            }
        })
    }

    /// Forget what was collected (before another attempt).
    pub fn clear(&self) {
        let mut s = self.0.lock().unwrap();
        s.lines.clear();
        s.in_block = false;
    }

    /// Nodes per execution provider over every session created since the last `clear`, parsed from
    /// `All nodes placed on [EP]. Number of nodes: N` and `Node(s) placed on [EP]. Number of nodes: N`. None when
    /// ONNX Runtime logged no such line (other versions may word it differently): placement unknown.
    pub fn nodes(&self) -> Option<BTreeMap<String, usize>> {
        parse_placements(&self.0.lock().unwrap().lines)
    }

    /// The operator types of the nodes under each provider's header (only a split partition lists them):
    /// provider → operator type → nodes. Empty when ONNX Runtime listed none.
    pub fn ops(&self) -> BTreeMap<String, BTreeMap<String, usize>> {
        parse_ops(&self.0.lock().unwrap().lines)
    }
}

impl Placements {
    fn take(&mut self, message: &str) {
        let m = message.trim_start();
        if m.starts_with("All nodes placed on [") || m.starts_with("Node(s) placed on [") {
            self.lines.push(m.to_string());
            self.in_block = true;
        } else if self.in_block && message.starts_with("  ") && node_ops(m).is_some() {
            // ONNX Runtime indents the nodes under their header: kept indented, so the parsers tell them apart
            self.lines.push(format!("  {m}"));
        } else {
            self.in_block = false;
        }
    }
}

/// The operator types of one node line: `OpType (name)`, or several such joined by ", "; None when the line is
/// not that.
fn node_ops(line: &str) -> Option<Vec<&str>> {
    let ops: Option<Vec<&str>> = line
        .split("), ")
        .map(|part| {
            let op = part.split([' ', '(']).next().unwrap_or("");
            let ident = op.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && op.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            let rest = part[op.len()..].trim_start();
            (ident && (rest.is_empty() || rest.starts_with('('))).then_some(op)
        })
        .collect();
    ops.filter(|o| !o.is_empty())
}

/// See [`PlacementLog::nodes`].
pub fn parse_placements(lines: &[String]) -> Option<BTreeMap<String, usize>> {
    let mut out = BTreeMap::new();
    let mut any = false;
    for l in lines {
        let Some((ep, n)) = placement_header(l) else { continue };
        *out.entry(ep.to_string()).or_insert(0) += n;
        any = true;
    }
    any.then_some(out)
}

/// `(provider, nodes)` of a placement header line.
fn placement_header(line: &str) -> Option<(&str, usize)> {
    let rest = line.split_once("placed on [").map(|(_, r)| r)?;
    let (ep, tail) = rest.split_once(']')?;
    let n = tail.split("Number of nodes:").nth(1).and_then(|n| n.trim().parse::<usize>().ok())?;
    Some((ep, n))
}

/// See [`PlacementLog::ops`].
pub fn parse_ops(lines: &[String]) -> BTreeMap<String, BTreeMap<String, usize>> {
    let mut out: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut current: Option<&str> = None;
    for l in lines {
        if let Some((ep, _)) = placement_header(l) {
            current = Some(ep);
        } else if let (Some(ep), true) = (current, l.starts_with("  ")) {
            for op in node_ops(l.trim_start()).unwrap_or_default() {
                *out.entry(ep.to_string()).or_default().entry(op.to_string()).or_insert(0) += 1;
            }
        }
    }
    out
}

/// A session builder for one attempt: the candidate's provider registered (TensorRT with CUDA, then CPU, behind
/// it), the candidate's extra configuration, ONNX Runtime's placement log captured into `log`.
pub fn session_builder(
    env: &Environment,
    opts: &RuntimeOptions,
    usage: SessionUse,
    candidate: &Candidate,
    graph: &GraphTensorRt,
    log: &PlacementLog,
) -> Result<SessionBuilder> {
    let cpu_arena = usage == SessionUse::Hot;
    let level = if usage == SessionUse::Hot { GraphOptimizationLevel::All } else { GraphOptimizationLevel::Level2 };
    let mut b = ort::session::Session::builder(env).map_err(|e| anyhow!("ONNX Runtime session options: {e}"))?;
    b = b.with_optimization_level(level).map_err(|e| anyhow!("setting the optimisation level: {e}"))?;
    // ONNX Runtime's memory pattern plans one block for all intermediate tensors from the first run and allocates
    // it on the second, beside the arena chunks of the first run, which stay: at 512x384 that is +600 MB of peak
    // RSS for no measurable speed (docs/performance.md). The arena alone reuses its chunks from run to run.
    b = b.with_memory_pattern(false).map_err(|e| anyhow!("disabling the memory pattern: {e}"))?;
    // Intra-op threads sleep when they run out of work instead of spinning: between the graph runs the runtime
    // sorts (histogram matching) on every core, which spinning threads slowed down (docs/performance.md, levers).
    b = b.with_config_entry("session.intra_op.allow_spinning", "0").map_err(|e| anyhow!("spinning off: {e}"))?;
    if opts.threads > 0 {
        b = b.with_intra_threads(opts.threads).map_err(|e| anyhow!("setting {} threads: {e}", opts.threads))?;
    }
    // placements are logged at verbose level while the session is created; the callback keeps only those lines
    // and passes warnings and errors on
    b = b.with_logger(log.logger()).map_err(|e| anyhow!("installing the session logger: {e}"))?;
    b = b.with_log_level(LogLevel::Verbose).map_err(|e| anyhow!("setting the session log level: {e}"))?;
    for (k, v) in &candidate.session_config {
        b = b.with_config_entry(k, v).map_err(|e| anyhow!("session option {k}={v}: {e}"))?;
    }
    register(&mut b, candidate.provider, opts, graph)?;
    {
        use ort::ep::ExecutionProvider;
        ort::ep::CPU::default()
            .with_arena_allocator(cpu_arena)
            .register(&mut b)
            .map_err(|e| anyhow!("registering the CPU provider: {e}"))?;
    }
    Ok(b)
}

#[cfg(feature = "cuda")]
fn cuda_ep(opts: &CudaOptions) -> ort::ep::CUDA {
    use ort::ep::cuda::ConvAlgorithmSearch;
    let mut ep = ort::ep::CUDA::default()
        .with_device_id(opts.device_id)
        .with_conv_algorithm_search(match opts.conv_search {
            ConvSearch::Heuristic => ConvAlgorithmSearch::Heuristic,
            ConvSearch::Exhaustive => ConvAlgorithmSearch::Exhaustive,
            ConvSearch::Default => ConvAlgorithmSearch::Default,
        })
        .with_arena_extend_strategy(match opts.arena_extend {
            ArenaExtend::SameAsRequested => ort::ep::ArenaExtendStrategy::SameAsRequested,
            ArenaExtend::NextPowerOfTwo => ort::ep::ArenaExtendStrategy::NextPowerOfTwo,
        });
    if let Some(mb) = opts.mem_limit_mb {
        ep = ep.with_memory_limit((mb as usize).saturating_mul(1 << 20));
    }
    ep
}

#[allow(unused_variables)]
fn register(b: &mut SessionBuilder, p: Provider, opts: &RuntimeOptions, graph: &GraphTensorRt) -> Result<()> {
    if let Some(why) = unavailable_reason(p) {
        bail!("{why}");
    }
    match p {
        Provider::Cpu | Provider::Auto => Ok(()),
        Provider::Cuda => {
            #[cfg(feature = "cuda")]
            {
                use ort::ep::ExecutionProvider;
                cuda_ep(&opts.cuda).register(b).map_err(|e| anyhow!("registering the CUDA provider: {e}"))
            }
            #[cfg(not(feature = "cuda"))]
            unreachable!("unavailable_reason covers a build without CUDA")
        }
        Provider::TensorRt => {
            #[cfg(feature = "tensorrt")]
            {
                use ort::ep::ExecutionProvider;
                let t = &opts.tensorrt;
                let mut trt = ort::ep::TensorRT::default().with_device_id(opts.cuda.device_id).with_fp16(t.fp16);
                if let Some(mb) = t.max_workspace_mb {
                    trt = trt.with_max_workspace_size((mb as usize).saturating_mul(1 << 20));
                }
                if let Some(dir) = &t.cache {
                    let engines = dir.join(&graph.cache_key);
                    std::fs::create_dir_all(&engines)
                        .with_context(|| format!("creating the TensorRT engine cache {}", engines.display()))?;
                    trt = trt.with_engine_cache(true).with_engine_cache_path(engines.display().to_string());
                    if t.timing_cache {
                        let timing = dir.join("timing");
                        std::fs::create_dir_all(&timing)
                            .with_context(|| format!("creating the TensorRT timing cache {}", timing.display()))?;
                        trt = trt.with_timing_cache(true).with_timing_cache_path(timing.display().to_string());
                    }
                }
                if let Some([min, opt, max]) = &graph.profile {
                    trt = trt.with_profile_min_shapes(min).with_profile_opt_shapes(opt).with_profile_max_shapes(max);
                }
                trt.register(b).map_err(|e| anyhow!("registering the TensorRT provider: {e}"))?;
                // CUDA behind TensorRT (the feature tensorrt implies cuda): the nodes TensorRT rejects run on the
                // GPU, not on the CPU
                if let Some(why) = unavailable_reason(Provider::Cuda) {
                    bail!("TensorRT needs the CUDA provider behind it, which is {why}");
                }
                cuda_ep(&opts.cuda)
                    .register(b)
                    .map_err(|e| anyhow!("registering the CUDA provider behind TensorRT: {e}"))
            }
            #[cfg(not(feature = "tensorrt"))]
            unreachable!("unavailable_reason covers a build without TensorRT")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placements_are_summed_per_provider_and_unknown_without_lines() {
        let lines: Vec<String> = [
            "All nodes placed on [CPUExecutionProvider]. Number of nodes: 40",
            "Node(s) placed on [TensorrtExecutionProvider]. Number of nodes: 2",
            "Node(s) placed on [CUDAExecutionProvider]. Number of nodes: 5",
            "Node(s) placed on [CPUExecutionProvider]. Number of nodes: 1",
        ]
        .map(String::from)
        .to_vec();
        let m = parse_placements(&lines).unwrap();
        assert_eq!(m["CPUExecutionProvider"], 41);
        assert_eq!(m["TensorrtExecutionProvider"], 2);
        assert_eq!(m["CUDAExecutionProvider"], 5);
        assert_eq!(parse_placements(&["something else".to_string()]), None);
        assert_eq!(parse_placements(&[]), None);
    }

    #[test]
    fn the_logger_keeps_the_nodes_listed_under_each_providers_header() {
        // the messages as ONNX Runtime sends them while it creates a session split between CUDA and the CPU
        // (session_state.cc, VerifyEachNodeIsAssignedToAnEp), with unrelated verbose lines around them
        let log = PlacementLog::default();
        let logger = log.logger();
        for m in [
            "  Conv (not a placement: before any header)",
            "Node placements",
            " Node(s) placed on [CUDAExecutionProvider]. Number of nodes: 3",
            "  Conv (conv1_1)",
            "  MemcpyFromHost (Memcpy)",
            "  Relu (relu1_1)",
            " Node(s) placed on [CPUExecutionProvider]. Number of nodes: 4",
            "  Shape (/Shape)",
            "  Gather (/Gather_1)",
            "  Shape (/Shape_2)",
            "  ScatterND (/ScatterND), ScatterND (/ScatterND_1)",
            "Session successfully initialized.",
            "  Conv (not a placement: after the block)",
            "All nodes placed on [CPUExecutionProvider]. Number of nodes: 5",
        ] {
            logger(LogLevel::Verbose, "", "s", "session_state.cc:1345 VerifyEachNodeIsAssignedToAnEp", m);
        }
        let nodes = log.nodes().unwrap();
        assert_eq!(nodes["CUDAExecutionProvider"], 3);
        assert_eq!(nodes["CPUExecutionProvider"], 9);
        let ops = log.ops();
        let cuda: Vec<(&str, usize)> = ops["CUDAExecutionProvider"].iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(cuda, [("Conv", 1), ("MemcpyFromHost", 1), ("Relu", 1)]);
        let cpu: Vec<(&str, usize)> = ops["CPUExecutionProvider"].iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(cpu, [("Gather", 1), ("ScatterND", 2), ("Shape", 2)]);
        log.clear();
        assert_eq!(log.nodes(), None);
        assert!(log.ops().is_empty());
        assert_eq!(node_ops("Session successfully initialized."), None);
        assert_eq!(node_ops("Conv"), Some(vec!["Conv"]));
    }

    #[test]
    fn candidates_in_order_and_explicit_alone() {
        let order: Vec<Provider> = candidates(Provider::Auto).iter().map(|c| c.provider).collect();
        assert_eq!(order, [Provider::TensorRt, Provider::Cuda, Provider::Cpu]);
        assert_eq!(candidates(Provider::Cuda), vec![Candidate::new(Provider::Cuda)]);
    }

    #[test]
    fn shapes_and_options_parse_with_clear_errors() {
        assert_eq!(parse_shape("512x288").unwrap(), [288, 512]);
        assert!(parse_shape("512").unwrap_err().to_string().contains("WIDTHxHEIGHT"));
        assert!(parse_shape("0x10").is_err());
        assert_eq!("HEURISTIC".parse::<ConvSearch>().unwrap(), ConvSearch::Heuristic);
        assert!("fast".parse::<ConvSearch>().is_err());
        assert_eq!("next_power_of_two".parse::<ArenaExtend>().unwrap(), ArenaExtend::NextPowerOfTwo);
        // defaults that suit memory shared with the CPU, and no FP16
        let o = RuntimeOptions::default();
        assert_eq!(
            (o.cuda.conv_search, o.cuda.arena_extend, o.cuda.mem_limit_mb),
            (ConvSearch::Heuristic, ArenaExtend::SameAsRequested, None)
        );
        assert!(!o.tensorrt.fp16 && o.tensorrt.timing_cache);
        let mut o = RuntimeOptions::default();
        o.tensorrt.profile = ProfileSpec { min: Some([64, 64]), opt: None, max: Some([32, 512]) };
        assert!(o.validate().unwrap_err().to_string().contains("min 64x64 is larger than max 512x32"));
    }
}
