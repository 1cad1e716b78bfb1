//! The exported graphs as ONNX Runtime sessions: features (image -> activations) and objective (image + targets
//! + weights -> losses and gradient), checked against the manifest.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use ort::session::{OutputSelector, RunOptions, Session};
use ort::value::{DynValue, Tensor, TensorRef};
use sha2::{Digest, Sha256};

use super::manifest::{GraphInfo, Manifest, RefineInfo, TensorInfo};
use super::runtime::{self, Candidate, GraphTensorRt, PlacementLog, Provider, RuntimeOptions, SessionUse, Shape};

/// Activations of one layer, `[C, h, w]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureMap {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

impl FeatureMap {
    pub fn positions(&self) -> usize {
        self.height * self.width
    }
}

/// Losses of one evaluation (each term layer-weighted, before its term weight), by the manifest's term names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Losses {
    pub total: f64,
    /// Each term's loss, in the manifest's term order.
    pub terms: Vec<(String, f64)>,
    /// Per layer group (the manifest's `layer_groups`), each layer's weighted loss (summing to the term), in the
    /// group's layer order; absent for graphs exported without `layers_*` outputs.
    pub layers: Vec<(String, Vec<f64>)>,
}

impl Losses {
    /// The loss of the term `name` (NaN for a term the model does not have).
    pub fn term(&self, name: &str) -> f64 {
        self.terms.iter().find(|(t, _)| t == name).map(|(_, v)| *v).unwrap_or(f64::NAN)
    }

    /// Each layer's weighted loss of a group ("content", "style", "shift", "hist").
    pub fn layer_losses(&self, group: &str) -> &[f64] {
        self.layers.iter().find(|(g, _)| g == group).map(|(_, v)| v.as_slice()).unwrap_or(&[])
    }

    /// The terms as `name: value` pairs for a log line or a progress bar.
    pub fn summary(&self) -> String {
        self.terms.iter().map(|(t, v)| format!("{t} {v:.3e}")).collect::<Vec<_>>().join(", ")
    }

    /// Each layer's share of its term (sums to 1; empty when the term is 0 or unknown).
    pub fn layer_shares(&self, group: &str) -> Vec<f64> {
        let v = self.layer_losses(group);
        let sum: f64 = v.iter().sum();
        if sum > 0.0 {
            v.iter().map(|x| x / sum).collect()
        } else {
            Vec::new()
        }
    }
}

/// Every objective input except `x`, as ready-made tensors (built once per image size and reused).
pub struct ObjectiveInputs {
    values: Vec<(String, DynValue)>,
}

impl ObjectiveInputs {
    pub fn new() -> Self {
        ObjectiveInputs { values: Vec::new() }
    }

    pub fn set(&mut self, name: &str, shape: &[usize], data: Vec<f32>) -> Result<()> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            bail!("input {name}: shape {shape:?} needs {n} values, got {}", data.len());
        }
        let t = Tensor::from_array((shape.to_vec(), data)).map_err(|e| anyhow!("tensor {name}: {e}"))?;
        self.values.retain(|(k, _)| k != name);
        self.values.push((name.to_string(), t.into_dyn()));
        Ok(())
    }

    /// Remove an input, to hand its buffer to ONNX Runtime as a preallocated output (see `Model::prelude`).
    pub fn take(&mut self, name: &str) -> Option<DynValue> {
        let i = self.values.iter().position(|(k, _)| k == name)?;
        Some(self.values.remove(i).1)
    }

    /// Put back (or add) an input value.
    pub fn put(&mut self, name: &str, value: DynValue) {
        self.values.retain(|(k, _)| k != name);
        self.values.push((name.to_string(), value));
    }

    /// The values of an f32 input, to update in place (e.g. the histogram targets between evaluations).
    pub fn get_mut(&mut self, name: &str) -> Option<&mut [f32]> {
        let v = self.values.iter_mut().find(|(k, _)| k == name).map(|(_, v)| v)?;
        v.try_extract_tensor_mut::<f32>().ok().map(|(_, d)| d)
    }

    /// Several f32 inputs to update in place at once, in the order of `names` (None when one is missing or not
    /// f32): the tiled scale gathers a block's activations of every histogram layer into their targets.
    pub fn get_many_mut(&mut self, names: &[String]) -> Option<Vec<&mut [f32]>> {
        let mut found: Vec<(usize, &mut [f32])> = Vec::with_capacity(names.len());
        for (k, v) in self.values.iter_mut() {
            if let Some(i) = names.iter().position(|n| n == k) {
                found.push((i, v.try_extract_tensor_mut::<f32>().ok()?.1));
            }
        }
        if found.len() != names.len() {
            return None;
        }
        found.sort_by_key(|(i, _)| *i);
        Some(found.into_iter().map(|(_, d)| d).collect())
    }

    /// The shape and values of an f32 input (the tiled objective crops the image-sized targets from them).
    pub fn view(&self, name: &str) -> Option<(Vec<usize>, &[f32])> {
        let v = self.values.iter().find(|(k, _)| k == name).map(|(_, v)| v)?;
        let (shape, d) = v.try_extract_tensor::<f32>().ok()?;
        Some((shape.iter().map(|x| *x as usize).collect(), d))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.iter().map(|(k, _)| k.as_str())
    }
}

impl Default for ObjectiveInputs {
    fn default() -> Self {
        Self::new()
    }
}

/// Receives a histogram layer's activations after an evaluation: (layer, [C, h, w], values, the inputs).
pub type OnHist<'a> = dyn FnMut(&str, [usize; 3], &[f32], &mut ObjectiveInputs) -> Result<()> + 'a;

/// Which provider runs the model and what is known of the graphs' partition.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderReport {
    /// What was asked for (`auto` or one provider).
    pub requested: Provider,
    /// The provider every session of the model was created with.
    pub provider: Provider,
    /// Nodes per ONNX Runtime execution provider over all the model's sessions, as ONNX Runtime reports them
    /// after partitioning (a TensorRT engine counts as one node); None: ONNX Runtime did not say (unknown).
    pub nodes: Option<BTreeMap<String, usize>>,
    /// Operator types per provider (provider → operator type → nodes), as ONNX Runtime lists them when the
    /// partition is split; empty when it listed none.
    pub ops: BTreeMap<String, BTreeMap<String, usize>>,
    /// The attempts that failed before, each "provider: reason".
    pub fallbacks: Vec<String>,
}

impl ProviderReport {
    /// Nodes placed on another provider than the one selected (CUDA or CPU behind TensorRT, CPU behind CUDA);
    /// None when unknown.
    pub fn nodes_outside(&self) -> Option<usize> {
        let main = runtime::ep_name(self.provider);
        self.nodes.as_ref().map(|m| m.iter().filter(|(k, _)| k.as_str() != main).map(|(_, n)| n).sum())
    }

    /// The operator types of the nodes outside the selected provider: provider → operator type → nodes.
    pub fn ops_outside(&self) -> BTreeMap<&str, &BTreeMap<String, usize>> {
        let main = runtime::ep_name(self.provider);
        self.ops.iter().filter(|(k, _)| k.as_str() != main).map(|(k, v)| (k.as_str(), v)).collect()
    }

    /// One line for logs and `doctor`: the provider and what runs outside it (with the operator types, most
    /// nodes first, where ONNX Runtime listed them).
    pub fn summary(&self) -> String {
        let main = runtime::ep_name(self.provider);
        let placement = match &self.nodes {
            None => "nodes outside it: unknown (ONNX Runtime reported no placement)".to_string(),
            Some(m) => {
                let inside = m.get(main).copied().unwrap_or(0);
                let outside: Vec<String> = m
                    .iter()
                    .filter(|(k, _)| k.as_str() != main)
                    .map(|(k, n)| match self.ops.get(k) {
                        Some(ops) => format!("{n} on {k}: {}", top_ops(ops, 8)),
                        None => format!("{n} on {k}"),
                    })
                    .collect();
                if outside.is_empty() {
                    format!("all {inside} nodes on {main}")
                } else {
                    format!(
                        "{inside} node(s) on {main}, {} outside it ({})",
                        self.nodes_outside().unwrap_or(0),
                        outside.join(", ")
                    )
                }
            }
        };
        let mut s = format!("{} ({placement})", self.provider);
        if !self.fallbacks.is_empty() {
            s.push_str(&format!("; fell back from: {}", self.fallbacks.join("; ")));
        }
        s
    }

    /// For the daemon's meta and stats messages (`nodes_outside`: null when unknown).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "requested": self.requested.to_string(),
            "provider": self.provider.to_string(),
            "nodes": self.nodes,
            "nodes_outside": self.nodes_outside(),
            "ops_outside": self.ops_outside(),
            "fallbacks": self.fallbacks,
        })
    }
}

/// A provider that failed because the dynamic loader did not find a library it needs (on the H200 of 2026-12-04:
/// TensorRT's `libnvinfer.so.10`; CUDA's libraries when they come from pip's `nvidia-*` wheels, which ONNX Runtime's
/// Python package loads itself and a Rust program does not): the reason, with the fix added.
fn with_library_hint(reason: String) -> String {
    let missing = reason
        .split_once(": cannot open shared object file")
        .and_then(|(before, _)| before.rsplit([' ', ':']).next())
        .filter(|lib| lib.contains(".so"));
    match missing {
        Some(lib) => format!(
            "{reason} (the dynamic loader did not find {lib}: install the library, or add the folder that holds it to \
             LD_LIBRARY_PATH — CUDA, cuDNN and TensorRT from pip's nvidia-* and tensorrt wheels are in their \
             site-packages/nvidia/*/lib and tensorrt_libs folders)"
        ),
        None => reason,
    }
}

/// "Shape ×120, Gather ×60, …": the `most` operator types with the most nodes, then how many types are left out.
fn top_ops(ops: &BTreeMap<String, usize>, most: usize) -> String {
    let mut v: Vec<(&String, &usize)> = ops.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let mut parts: Vec<String> = v.iter().take(most).map(|(op, n)| format!("{op} ×{n}")).collect();
    if v.len() > most {
        parts.push(format!("{} more type(s)", v.len() - most));
    }
    parts.join(", ")
}

pub struct Model {
    pub manifest: Manifest,
    pub provider: Provider,
    /// The process's memory budget (MiB) the schedule plans each scale under (`transfer::tiled::budget`).
    pub memory_budget_mb: Option<u64>,
    report: ProviderReport,
    /// Runs log at warning level: the sessions' verbose level is only for their creation (placement lines).
    pub(super) run_options: RunOptions,
    features: Session,
    objective: Hot,
    prelude: Option<Session>,
    feature_outputs: Vec<String>,
    /// tile_stats.onnx and tile_grad.onnx, when a memory budget is set (see `engine::tiles`).
    pub(super) tiles: Option<(Session, Hot)>,
    /// What re-creating a hot session needs (`Hot`).
    pub(super) reopen: Reopen,
    /// The finest scale's objective (`Manifest::refine`), loaded with the same provider and settings.
    pub refine: Option<Box<Model>>,
}

/// The runtime settings and the provider a hot session is re-created with.
pub(super) struct Reopen {
    opts: RuntimeOptions,
    candidate: Candidate,
}

/// A session run many times per scale (objective.onnx, tile_grad.onnx) with ONNX Runtime's CPU arena. The arena
/// keeps the largest working memory the session has ever run at until the session is dropped: ONNX Runtime has no
/// call that returns it. Under a memory budget the two hot sessions take turns (`Model::release_idle`): the one not
/// about to run is dropped, and created again (`get`) when it is next needed — otherwise a run whose coarse scales
/// ran whole and whose last scale runs in tiles kept the whole scales' arena beside the tiles' (4.62 GiB under a
/// 3000-MiB budget at 1920×1080: docs/performance.md).
pub(super) struct Hot {
    session: Option<Session>,
    /// Ran since it was created: its arena holds a working memory.
    used: bool,
    graph: GraphInfo,
    trt: GraphTensorRt,
}

impl Hot {
    fn new(session: Session, graph: &GraphInfo, trt: GraphTensorRt) -> Hot {
        Hot { session: Some(session), used: false, graph: graph.clone(), trt }
    }

    /// The session, created again (same provider and settings; the graph was verified at load) if it was
    /// released.
    pub(super) fn get(&mut self, manifest: &Manifest, reopen: &Reopen) -> Result<&mut Session> {
        if self.session.is_none() {
            let t = std::time::Instant::now();
            let env = runtime::init(reopen.opts.library.as_deref())?;
            let log = PlacementLog::default();
            let s = open_session(
                env,
                &reopen.opts,
                manifest,
                &self.graph,
                SessionUse::Hot,
                &reopen.candidate,
                &self.trt,
                &log,
            )
            .map_err(|e| match e {
                OpenError::Provider(e) | OpenError::Model(e) => {
                    e.context(format!("re-creating the {} session", self.graph.file))
                }
            })?;
            tracing::debug!(graph = %self.graph.file, seconds = t.elapsed().as_secs_f64(), "session re-created");
            self.session = Some(s);
        }
        self.used = true;
        Ok(self.session.as_mut().expect("created above"))
    }

    /// Drop the session if it ran since it was created (its arena goes back to the system).
    fn release(&mut self) -> bool {
        let released = self.used && self.session.is_some();
        if released {
            self.session = None;
            self.used = false;
        }
        released
    }
}

/// Matches one layer's activations (name, [channels, height, width], data) in place.
pub type MatchInPlace<'a> = &'a mut dyn FnMut(&str, [usize; 3], &mut [f32]) -> Result<()>;

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The refinement's model (`Manifest::refine`), checked against the manifest that names it and loaded with the
/// provider `candidate` that runs the main one.
fn load_refinement(main: &Manifest, r: &RefineInfo, opts: &RuntimeOptions, candidate: &Candidate) -> Result<Model> {
    let dir = main.dir.join(&r.dir);
    let path = dir.join("manifest.json");
    let got = sha256_file(&path).with_context(|| {
        format!(
            "the model's finest-scale objective ({}) is missing: copy the whole model directory, or re-export \
             with `make models`",
            dir.display()
        )
    })?;
    if got != r.manifest_sha256 {
        bail!(
            "{} does not match the model's manifest (sha256 {got}, manifest says {}): the directories come from \
             different exports; re-export with `make models`",
            path.display(),
            r.manifest_sha256
        );
    }
    let refine = Model::load_with(&dir, opts, std::slice::from_ref(candidate))
        .with_context(|| format!("loading the finest-scale objective {}", dir.display()))?;
    if refine.manifest.refine.is_some() {
        bail!("{} names a refinement of its own: re-export with `make models`", path.display());
    }
    Ok(refine)
}

/// The sha256 of a graph and its weights as the manifest records them (computed when the manifest has none).
fn verify_graph(manifest: &Manifest, g: &GraphInfo) -> Result<String> {
    let path = manifest.graph_path(g);
    if !path.is_file() {
        bail!("graph {} listed in the manifest is missing: re-export with `make models`", path.display());
    }
    let mut files = vec![(path.clone(), g.sha256.as_str())];
    if let Some(d) = &g.data {
        let data = manifest.dir.join(&d.file);
        if !data.is_file() {
            bail!(
                "the weights {} of graph {} listed in the manifest are missing: copy the whole model directory, \
                 or re-export with `make models`",
                data.display(),
                path.display()
            );
        }
        files.push((data, d.sha256.as_str()));
    }
    let mut key = Sha256::new();
    for (file, want) in files {
        let got = sha256_file(&file)?;
        if !want.is_empty() && got != want {
            bail!(
                "{} does not match its manifest (sha256 {got}, manifest says {want}): the files come from \
                 different exports; re-export with `make models`",
                file.display()
            );
        }
        key.update(got.as_bytes());
    }
    Ok(key.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// A graph dimension as a function of the image shape: a number, `H`/`W`, or `<layer>_h`/`<layer>_w` (the
/// layer's stride divides the image side, rounding down as the pooling does). None: a name this runtime does not
/// know.
fn resolve_dim(manifest: &Manifest, dim: &serde_json::Value, shape: Shape) -> Option<usize> {
    if let Some(n) = dim.as_u64() {
        return Some(n as usize);
    }
    let name = dim.as_str()?;
    match name {
        "H" => Some(shape[0]),
        "W" => Some(shape[1]),
        _ => {
            let (layer, side) = name.rsplit_once('_')?;
            let stride = manifest.layer(layer)?.stride.max(1);
            match side {
                "h" => Some(shape[0] / stride),
                "w" => Some(shape[1] / stride),
                _ => None,
            }
        }
    }
}

fn resolve_dims(manifest: &Manifest, t: &TensorInfo, shape: Shape) -> Option<Vec<usize>> {
    t.shape.iter().map(|d| resolve_dim(manifest, d, shape)).collect()
}

/// The TensorRT optimisation profile (min, opt, max image shapes) for these options, or None without sizes or
/// explicit shapes.
pub fn tensorrt_profile(manifest: &Manifest, opts: &RuntimeOptions) -> Result<Option<[Shape; 3]>> {
    let spec = &opts.tensorrt.profile;
    let m = manifest.min_size;
    let min = spec.min.unwrap_or([m, m]);
    if min[0] < m || min[1] < m {
        bail!("TensorRT profile min {}x{} is below this model's minimum size {m}x{m}", min[1], min[0]);
    }
    // the callers pass only the sizes that run whole (`transfer::tiled::budget::whole_sizes`): under a memory budget
    // a kiosk frame runs in tiles and never reaches these graphs whole
    let sizes = &opts.sizes;
    let longest = sizes.iter().map(|s| s[0].max(s[1])).max();
    let max = match (spec.max, longest) {
        (Some(s), _) => s,
        (None, Some(l)) => [l.max(m), l.max(m)],
        (None, None) => return Ok(None),
    };
    let largest = sizes.iter().copied().max_by_key(|s| s[0] * s[1]);
    let opt = spec.opt.or(largest).unwrap_or(max);
    let opt = [opt[0].clamp(min[0], max[0]), opt[1].clamp(min[1], max[1])];
    if min[0] > max[0] || min[1] > max[1] {
        bail!("TensorRT profile: min {}x{} is larger than max {}x{}", min[1], min[0], max[1], max[0]);
    }
    Ok(Some([min, opt, max]))
}

/// A graph's TensorRT settings: cache key and profile strings over its dynamic inputs.
pub(super) fn graph_tensorrt(
    manifest: &Manifest,
    g: &GraphInfo,
    key: &str,
    opts: &RuntimeOptions,
    profile: Option<[Shape; 3]>,
) -> GraphTensorRt {
    let profile = profile.and_then(|shapes| {
        let mut out: [String; 3] = Default::default();
        for (k, shape) in shapes.iter().enumerate() {
            let mut parts = Vec::new();
            for t in &g.inputs {
                if t.shape.iter().all(|d| d.is_u64()) {
                    continue; // static: no profile entry
                }
                let Some(dims) = resolve_dims(manifest, t, *shape) else {
                    tracing::warn!(
                        graph = %g.file, input = %t.name,
                        "cannot derive a TensorRT profile for this input's symbolic dimensions; no explicit profile \
                         (TensorRT rebuilds its engine when a shape leaves the range seen so far)"
                    );
                    return None;
                };
                parts.push(format!("{}:{}", t.name, dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x")));
            }
            out[k] = parts.join(",");
        }
        Some(out)
    });
    let mut h = Sha256::new();
    if let Some(p) = &profile {
        h.update(p.join(";").as_bytes());
    }
    let profile_key: String = h.finalize().iter().take(4).map(|b| format!("{b:02x}")).collect();
    let stem = g.file.trim_end_matches(".onnx");
    let precision = if opts.tensorrt.fp16 { "fp16" } else { "fp32" };
    let shape_key = if profile.is_some() { profile_key } else { "dynamic".to_string() };
    GraphTensorRt { cache_key: format!("{stem}-{}-{precision}-{shape_key}", &key[..16]), profile }
}

/// Run options whose log level is warning: a session is created at verbose level (to capture the placement), and
/// its runs would otherwise log at that level too.
fn run_options() -> Result<RunOptions> {
    let mut o = RunOptions::new().map_err(|e| anyhow!("ONNX Runtime run options: {e}"))?;
    o.set_log_level(ort::logging::LogLevel::Warning).map_err(|e| anyhow!("run log level: {e}"))?;
    Ok(o)
}

/// A session could not be created with this provider (the next candidate may work), or the model itself is
/// wrong (no provider will help).
enum OpenError {
    Provider(anyhow::Error),
    Model(anyhow::Error),
}

impl Model {
    /// Load and validate a model directory (manifest.json + graphs) with the requested provider: `auto` tries
    /// TensorRT, CUDA and CPU in turn (see [`runtime::candidates`]).
    pub fn load(dir: &Path, opts: &RuntimeOptions) -> Result<Model> {
        Model::load_with(dir, opts, &runtime::candidates(opts.provider))
    }

    /// Load with an explicit list of attempts. Each attempt creates every session of the model with its provider;
    /// the first attempt that succeeds runs the model. When one fails (registration or session creation) and
    /// `opts.provider` is `auto`, a warning says why and the next is tried; with an explicitly requested provider
    /// the failure is an error.
    pub fn load_with(dir: &Path, opts: &RuntimeOptions, candidates: &[Candidate]) -> Result<Model> {
        opts.validate()?;
        let manifest = Manifest::load(dir)?;
        let env = runtime::init(opts.library.as_deref())?;
        let profile = tensorrt_profile(&manifest, opts)?;
        let mut graphs: Vec<(&GraphInfo, SessionUse, GraphTensorRt)> = Vec::new();
        // the feature extractor runs a few times per scale: no arena (its activations do not stay resident) and no
        // reordered weight copies (see SessionUse); the prelude runs every evaluation, but without an arena its
        // output (67 MB at 512x512) goes back to the system after the matching instead of staying beside the
        // objective's arena
        let mut list =
            vec![(&manifest.graphs.features, SessionUse::Occasional), (&manifest.graphs.objective, SessionUse::Hot)];
        if let Some(g) = &manifest.graphs.prelude {
            list.push((g, SessionUse::Occasional));
        }
        if opts.memory_budget_mb.is_some() {
            let (Some(stats), Some(grad)) = (&manifest.graphs.tile_stats, &manifest.graphs.tile_grad) else {
                bail!(
                    "the model in {} has no tile graphs (tile_stats.onnx, tile_grad.onnx), which a memory budget \
                     needs: re-export it with `make models`, or run without --max-memory",
                    dir.display()
                );
            };
            // the second pass runs once per block and evaluation: hot; the first is forward only. Its activations
            // are the histogram layers' global maps, so it runs like features.onnx and the prelude (no NCHWc layout):
            // with every optimisation an evaluation took 0.95 of the time (1920x1080 refinement, 272-px tiles),
            // but relu1_1's activations differed in the last bits, enough to swap ranks, and the matched targets
            // moved by up to 0.6 % of their range from the whole objective's
            list.push((stats, SessionUse::Occasional));
            list.push((grad, SessionUse::Hot));
        }
        let tiles = [manifest.graphs.tile_stats.as_ref(), manifest.graphs.tile_grad.as_ref()];
        for (g, usage) in list {
            let key = verify_graph(&manifest, g)?;
            // the tile graphs run on blocks, whatever the image: their own profile, one engine for every size
            let is_tile = tiles.iter().any(|t| t.is_some_and(|t| std::ptr::eq(t, g)));
            let shapes = if is_tile { manifest.tile_profile() } else { profile };
            let trt = graph_tensorrt(&manifest, g, &key, opts, shapes);
            graphs.push((g, usage, trt));
        }
        let explicit = opts.provider != Provider::Auto;
        let log = PlacementLog::default();
        let mut fallbacks: Vec<String> = Vec::new();
        for (i, candidate) in candidates.iter().enumerate() {
            log.clear();
            let p = candidate.provider;
            let mut sessions = Vec::new();
            let mut failure = None;
            for (g, usage, trt) in &graphs {
                match open_session(env, opts, &manifest, g, *usage, candidate, trt, &log) {
                    Ok(s) => sessions.push(s),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            let reason = match failure {
                None => {
                    let mut trts = graphs.iter().map(|(g, _, trt)| (*g, trt.clone()));
                    let mut it = sessions.into_iter();
                    let features = it.next().unwrap();
                    trts.next();
                    let (g, trt) = trts.next().unwrap();
                    let objective = Hot::new(it.next().unwrap(), g, trt);
                    let prelude = if manifest.graphs.prelude.is_some() {
                        trts.next();
                        it.next()
                    } else {
                        None
                    };
                    let tiles = match (it.next(), it.next()) {
                        (Some(a), Some(b)) => {
                            let (g, trt) = trts.nth(1).unwrap();
                            Some((a, Hot::new(b, g, trt)))
                        }
                        _ => None,
                    };
                    let reopen = Reopen { opts: opts.clone(), candidate: candidate.clone() };
                    let report = ProviderReport {
                        requested: opts.provider,
                        provider: p,
                        nodes: log.nodes(),
                        ops: log.ops(),
                        fallbacks,
                    };
                    tracing::info!(provider = %p, requested = %opts.provider, report = %report.summary(), "execution provider");
                    let feature_outputs = manifest.graphs.features.outputs.iter().map(|o| o.name.clone()).collect();
                    let run_options = run_options()?;
                    let refine = match &manifest.refine {
                        Some(r) => Some(Box::new(load_refinement(&manifest, r, opts, candidate)?)),
                        None => None,
                    };
                    return Ok(Model {
                        manifest,
                        provider: p,
                        memory_budget_mb: opts.memory_budget_mb,
                        report,
                        run_options,
                        features,
                        objective,
                        prelude,
                        feature_outputs,
                        tiles,
                        reopen,
                        refine,
                    });
                }
                Some(OpenError::Model(e)) => return Err(e),
                Some(OpenError::Provider(e)) => with_library_hint(format!("{e:#}")),
            };
            drop(sessions);
            if explicit {
                bail!(
                    "execution provider {p} was requested but is unavailable: {reason}. Use provider \"auto\" \
                     (--provider auto) to fall back to the next provider that works, or \"cpu\""
                );
            }
            match candidates.get(i + 1) {
                // a provider this build or library simply lacks is expected on CPU-only machines: no warning
                Some(next) if runtime::unavailable_reason(p).is_some() => {
                    tracing::debug!(provider = %p, next = %next.provider, reason, "execution provider not available")
                }
                Some(next) => tracing::warn!(
                    provider = %p, next = %next.provider, reason,
                    "execution provider cannot run the model; falling back to the next one"
                ),
                None => {}
            }
            fallbacks.push(format!("{p}: {reason}"));
        }
        if candidates.is_empty() {
            bail!("no execution provider to try");
        }
        bail!("no execution provider can run the model: {}", fallbacks.join("; "))
    }

    /// The provider that runs the model, and what is known of the partition.
    pub fn provider_report(&self) -> &ProviderReport {
        &self.report
    }

    /// Before evaluations of one kind, whole images (`tiled` false: objective.onnx) or blocks (tile_grad.onnx):
    /// under a memory budget on the CPU, the other kind's hot session is dropped if it ran, so that its arena (the
    /// largest working memory it ever ran at) is not resident beside this kind's; it is created again when next
    /// needed (about a second: `Hot`). Each scale's plan (`transfer::tiled::budget`) then holds for the process, not
    /// only for that scale. On the GPU providers the working memory is the device's arena (`gpu_mem_limit_mb`), and
    /// re-creating a TensorRT session would rebuild or reload its engines: nothing is dropped there. True when a
    /// session was dropped.
    pub fn release_idle(&mut self, tiled: bool) -> bool {
        if self.memory_budget_mb.is_none() || self.provider != Provider::Cpu {
            return false;
        }
        let released =
            if tiled { self.objective.release() } else { self.tiles.as_mut().is_some_and(|(_, grad)| grad.release()) };
        if released {
            tracing::debug!(tiled, "the idle hot session's arena released");
        }
        released
    }

    /// Under a memory budget on the CPU, both hot sessions dropped if they ran (their arenas): before the finest
    /// scale runs the refinement's objective (`refine`) instead of this one's. True when a session was dropped.
    pub fn release_hot(&mut self) -> bool {
        self.release_idle(true) | self.release_idle(false)
    }

    /// Run every graph once at each image shape (zeros as inputs) so that TensorRT engines, cuDNN algorithm choices
    /// and memory arenas are in place before the first real frame. `progress` is called before each shape.
    pub fn warm_up(&mut self, shapes: &[Shape], progress: &mut dyn FnMut(usize, Shape)) -> Result<()> {
        let manifest = &self.manifest;
        let objective = self.objective.get(manifest, &self.reopen)?;
        let mut graphs: Vec<(&GraphInfo, &mut Session)> =
            vec![(&manifest.graphs.features, &mut self.features), (&manifest.graphs.objective, objective)];
        if let (Some(g), Some(s)) = (&manifest.graphs.prelude, self.prelude.as_mut()) {
            graphs.push((g, s));
        }
        for (i, &shape) in shapes.iter().enumerate() {
            if shape[0] < manifest.min_size || shape[1] < manifest.min_size {
                continue;
            }
            progress(i, shape);
            for (g, session) in graphs.iter_mut() {
                let mut feed: Vec<(std::borrow::Cow<'_, str>, ort::session::SessionInputValue<'_>)> = Vec::new();
                for t in &g.inputs {
                    let dims = resolve_dims(manifest, t, shape).ok_or_else(|| {
                        anyhow!("warm-up: cannot size input {} of {} ({:?})", t.name, g.file, t.shape)
                    })?;
                    let n = dims.iter().product::<usize>();
                    let v =
                        Tensor::from_array((dims, vec![0.0f32; n])).map_err(|e| anyhow!("tensor {}: {e}", t.name))?;
                    feed.push((t.name.clone().into(), v.into_dyn().into()));
                }
                session.run_with_options(feed, &self.run_options).map_err(|e| {
                    anyhow!("warm-up of {} at {}x{} on {}: {e}", g.file, shape[1], shape[0], self.provider)
                })?;
            }
        }
        // the finest scale's objective is built (TensorRT engines, cuDNN choices) before the first frame too; it
        // runs at the output size, the largest of the shapes
        if let (Some(r), Some(&last)) = (self.refine.as_deref_mut(), shapes.iter().max_by_key(|s| s[0] * s[1])) {
            r.warm_up(&[last], &mut |_, _| {})?;
        }
        Ok(())
    }

    /// Reject image sizes the graphs cannot handle.
    pub fn check_size(&self, height: usize, width: usize) -> Result<()> {
        let m = self.manifest.min_size;
        if height < m || width < m {
            bail!("image of {width}x{height} is too small: this model needs at least {m}x{m} pixels (use a larger --image-size)");
        }
        Ok(())
    }

    /// Activations of every layer the terms use (keyed by layer name) for an RGB [0,1] planar image.
    pub fn features(&mut self, image: &[f32], height: usize, width: usize) -> Result<BTreeMap<String, FeatureMap>> {
        self.check_size(height, width)?;
        let x = TensorRef::from_array_view(([1usize, 3, height, width], image))
            .map_err(|e| anyhow!("input tensor: {e}"))?;
        let outputs = self
            .features
            .run_with_options(ort::inputs!["x" => x], &self.run_options)
            .map_err(|e| anyhow!("running features.onnx: {e}"))?;
        let mut out = BTreeMap::new();
        for name in &self.feature_outputs {
            let (shape, data) = outputs[name.as_str()]
                .try_extract_tensor::<f32>()
                .map_err(|e| anyhow!("features.onnx output {name}: {e}"))?;
            if shape.len() != 4 {
                bail!("features.onnx output {name} has rank {}, expected 4", shape.len());
            }
            let layer = name.strip_prefix("feat_").unwrap_or(name).to_string();
            out.insert(
                layer,
                FeatureMap {
                    channels: shape[1] as usize,
                    height: shape[2] as usize,
                    width: shape[3] as usize,
                    data: data.to_vec(),
                },
            );
        }
        Ok(out)
    }

    /// Activations of the exactly matched histogram layers (`hist_exact_layers`, from prelude.onnx) of `x`, written
    /// straight into the objective's `hist_target_<layer>` inputs (ONNX Runtime fills them as preallocated outputs;
    /// no other buffer of that size exists), where `match_in_place` turns each into its histogram matching. Does
    /// nothing for a model without such layers.
    pub fn prelude(
        &mut self,
        x: &[f32],
        height: usize,
        width: usize,
        inputs: &mut ObjectiveInputs,
        match_in_place: MatchInPlace<'_>,
    ) -> Result<()> {
        let Some(session) = self.prelude.as_mut() else { return Ok(()) };
        let xt =
            TensorRef::from_array_view(([1usize, 3, height, width], x)).map_err(|e| anyhow!("input tensor: {e}"))?;
        let mut selector = OutputSelector::default();
        for layer in &self.manifest.hist_exact_layers {
            let channels = self.manifest.layer(layer).map(|l| l.channels).unwrap_or(0);
            let target = format!("hist_target_{layer}");
            let value = match inputs.take(&target) {
                Some(v) if v.shape().iter().copied().eq([1, channels as i64, height as i64, width as i64]) => v,
                _ => Tensor::from_array(([1usize, channels, height, width], vec![0.0f32; channels * height * width]))
                    .map_err(|e| anyhow!("tensor {target}: {e}"))?
                    .into_dyn(),
            };
            selector = selector.preallocate(format!("feat_{layer}"), value);
        }
        let options = run_options()?.with_outputs(selector);
        let mut outputs = session
            .run_with_options(ort::inputs!["x" => xt], &options)
            .map_err(|e| anyhow!("running prelude.onnx: {e}"))?;
        for layer in &self.manifest.hist_exact_layers {
            let name = format!("feat_{layer}");
            let mut value =
                outputs.remove(name.as_str()).ok_or_else(|| anyhow!("prelude.onnx has no output {name}"))?;
            let (shape, d) =
                value.try_extract_tensor_mut::<f32>().map_err(|e| anyhow!("prelude output {name}: {e}"))?;
            if shape.len() != 4 {
                bail!("prelude.onnx output {name} has rank {}, expected 4", shape.len());
            }
            let shape = [shape[1] as usize, shape[2] as usize, shape[3] as usize];
            match_in_place(layer, shape, d)?;
            inputs.put(&format!("hist_target_{layer}"), value);
        }
        Ok(())
    }

    /// One loss + gradient evaluation. `grad` receives d total / d x. `on_hist`, when given, is called after the
    /// run with each histogram layer's activations (the graph's `feat_<layer>` outputs: layer, [C, h, w], values)
    /// and the inputs, to re-match the histogram targets without copying the activations.
    pub fn evaluate(
        &mut self,
        x: &[f32],
        height: usize,
        width: usize,
        inputs: &mut ObjectiveInputs,
        grad: &mut [f32],
        on_hist: Option<&mut OnHist<'_>>,
    ) -> Result<Losses> {
        if x.len() != 3 * height * width || grad.len() != x.len() {
            bail!("image buffer of {} values does not match {width}x{height}", x.len());
        }
        let xt =
            TensorRef::from_array_view(([1usize, 3, height, width], x)).map_err(|e| anyhow!("input tensor: {e}"))?;
        let mut feed: Vec<(std::borrow::Cow<'_, str>, ort::session::SessionInputValue<'_>)> =
            Vec::with_capacity(inputs.values.len() + 1);
        feed.push(("x".into(), xt.into()));
        for (k, v) in &inputs.values {
            feed.push((k.as_str().into(), v.into()));
        }
        let outputs = self
            .objective
            .get(&self.manifest, &self.reopen)?
            .run_with_options(feed, &self.run_options)
            .map_err(|e| anyhow!("running objective.onnx: {e}"))?;
        let scalar = |name: &str| -> Result<f64> {
            let (_, d) = outputs[name].try_extract_tensor::<f32>().map_err(|e| anyhow!("output {name}: {e}"))?;
            d.first().map(|v| *v as f64).ok_or_else(|| anyhow!("output {name} is empty"))
        };
        let mut losses = Losses { total: scalar("total")?, ..Losses::default() };
        for t in &self.manifest.terms {
            losses.terms.push((t.clone(), scalar(&format!("loss_{t}"))?));
        }
        for g in &self.manifest.layer_groups {
            let name = format!("layers_{}", g.term);
            if let Some(v) = outputs.get(name.as_str()) {
                let (_, d) = v.try_extract_tensor::<f32>().map_err(|e| anyhow!("output {name}: {e}"))?;
                losses.layers.push((g.term.clone(), d.iter().map(|x| *x as f64).collect()));
            }
        }
        let (_, g) = outputs["grad"].try_extract_tensor::<f32>().map_err(|e| anyhow!("output grad: {e}"))?;
        if g.len() != grad.len() {
            bail!("objective.onnx returned a gradient of {} values for {} pixels", g.len(), grad.len());
        }
        grad.copy_from_slice(g);
        if let Some(f) = on_hist {
            for layer in self.manifest.hist_layers.iter().filter(|l| !self.manifest.hist_exact_layers.contains(l)) {
                let name = format!("feat_{layer}");
                let (shape, d) =
                    outputs[name.as_str()].try_extract_tensor::<f32>().map_err(|e| anyhow!("output {name}: {e}"))?;
                if shape.len() != 4 {
                    bail!("objective.onnx output {name} has rank {}, expected 4", shape.len());
                }
                f(layer, [shape[1] as usize, shape[2] as usize, shape[3] as usize], d, inputs)?;
            }
        }
        Ok(losses)
    }
}

#[allow(clippy::too_many_arguments)]
fn open_session(
    env: &'static ort::environment::Environment,
    opts: &RuntimeOptions,
    manifest: &Manifest,
    g: &GraphInfo,
    usage: SessionUse,
    candidate: &Candidate,
    trt: &GraphTensorRt,
    log: &PlacementLog,
) -> std::result::Result<Session, OpenError> {
    let path = manifest.graph_path(g);
    let mut builder = runtime::session_builder(env, opts, usage, candidate, trt, log).map_err(OpenError::Provider)?;
    let session = builder.commit_from_file(&path).map_err(|e| {
        OpenError::Provider(anyhow!(
            "creating the {} session of {} failed: {e}{}",
            candidate.provider,
            path.display(),
            if candidate.provider == Provider::Cpu { " (a damaged graph? re-export with `make models`)" } else { "" }
        ))
    })?;
    check_signature(&session, g, &path).map_err(OpenError::Model)?;
    Ok(session)
}

/// Every input and output the manifest names must exist in the graph with the same element type and rank, and
/// vice versa.
fn check_signature(session: &Session, g: &GraphInfo, path: &Path) -> Result<()> {
    let fix = "the manifest and the graph come from different exports: re-export with `make models`";
    for (kind, actual, declared) in [("input", session.inputs(), &g.inputs), ("output", session.outputs(), &g.outputs)]
    {
        for d in declared {
            let a = actual.iter().find(|o| o.name() == d.name).ok_or_else(|| {
                anyhow!("{}: {kind} {} is in the manifest but not in the graph; {fix}", path.display(), d.name)
            })?;
            let ty = a.dtype();
            let shape = ty.tensor_shape().map(|s| s.len()).unwrap_or(usize::MAX);
            let elem = ty.tensor_type().map(|t| format!("{t:?}").to_lowercase()).unwrap_or_default();
            let want = if d.dtype == "float32" { "float32" } else { d.dtype.as_str() };
            if shape != d.shape.len() || !(elem == want || (want == "float32" && elem == "float32")) {
                bail!(
                    "{}: {kind} {} is {elem} of rank {shape} in the graph but {} of rank {} in the manifest; {fix}",
                    path.display(),
                    d.name,
                    d.dtype,
                    d.shape.len()
                );
            }
            if let Some(dims) = ty.tensor_shape() {
                for (i, (a, m)) in dims.iter().zip(d.dims()).enumerate() {
                    if let Some(m) = m {
                        if *a >= 0 && *a != m {
                            bail!(
                                "{}: {kind} {} dimension {i} is {a} in the graph but {m} in the manifest; {fix}",
                                path.display(),
                                d.name
                            );
                        }
                    }
                }
            }
        }
        for a in actual {
            if !declared.iter().any(|d| d.name == a.name()) {
                bail!("{}: graph {kind} {} is not described by the manifest; {fix}", path.display(), a.name());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::manifest::MAX_TILE;

    #[test]
    fn a_missing_library_gets_the_fix_named() {
        // ONNX Runtime 1.31.1's words on the H200 without TensorRT
        let r =
            "registering the TensorRT provider: /onnxruntime_src/onnxruntime/core/session/provider_bridge_ort.cc:2043 \
                 onnxruntime::Provider& onnxruntime::ProviderLibrary::Get() [ONNXRuntimeError] : 1 : FAIL : Failed to \
                 load library /root/g/lib/libonnxruntime_providers_tensorrt.so with error: libnvinfer.so.10: cannot \
                 open shared object file: No such file or directory\n";
        let h = with_library_hint(r.to_string());
        assert!(
            h.starts_with(r) && h.contains("did not find libnvinfer.so.10: ") && h.contains("LD_LIBRARY_PATH"),
            "{h}"
        );
        assert_eq!(with_library_hint("CUDA failure 2: out of memory".into()), "CUDA failure 2: out of memory");
    }

    #[test]
    fn the_report_names_the_operator_types_outside_the_provider() {
        let ops = |v: &[(&str, usize)]| v.iter().map(|(k, n)| (k.to_string(), *n)).collect::<BTreeMap<_, _>>();
        let cpu: Vec<(&str, usize)> =
            (0..10).map(|i| (["A", "B", "C", "D", "E", "F", "G", "H", "I", "J"][i], i + 1)).collect();
        let r = ProviderReport {
            requested: Provider::Cuda,
            provider: Provider::Cuda,
            nodes: Some(ops(&[("CUDAExecutionProvider", 1087), ("CPUExecutionProvider", 55)])),
            ops: [
                ("CPUExecutionProvider".to_string(), ops(&cpu)),
                ("CUDAExecutionProvider".into(), ops(&[("Conv", 1)])),
            ]
            .into(),
            fallbacks: vec![],
        };
        assert_eq!(
            r.summary(),
            "cuda (1087 node(s) on CUDAExecutionProvider, 55 outside it (55 on CPUExecutionProvider: J ×10, I ×9, \
             H ×8, G ×7, F ×6, E ×5, D ×4, C ×3, 2 more type(s)))"
        );
        let j = r.to_json();
        assert_eq!(j["nodes_outside"], 55);
        assert_eq!(j["ops_outside"]["CPUExecutionProvider"]["A"], 1);
        assert!(j["ops_outside"].get("CUDAExecutionProvider").is_none());
        // a partition ONNX Runtime did not list keeps the plain count
        let plain = ProviderReport { ops: BTreeMap::new(), ..r };
        assert!(plain.summary().ends_with("55 outside it (55 on CPUExecutionProvider))"), "{}", plain.summary());
    }

    /// Statically (no GPU here): the profile strings ONNX Runtime's TensorRT provider would get for the tile graphs
    /// of the exported test model cover the largest block in every input, the targets at their layers' strides.
    #[test]
    fn the_tile_graphs_profile_covers_the_largest_block() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/out/test-random");
        let m = Manifest::load(&dir).expect("make test-models first");
        let t = m.tiling.unwrap();
        let [min, opt, max] = m.tile_profile().unwrap();
        let block = MAX_TILE + 2 * t.margin;
        assert_eq!((min, opt[0], max), ([m.min_size, m.min_size], 512 + 2 * t.margin, [block, block]));
        for g in [m.graphs.tile_stats.as_ref().unwrap(), m.graphs.tile_grad.as_ref().unwrap()] {
            let trt = graph_tensorrt(&m, g, &"0".repeat(64), &RuntimeOptions::default(), m.tile_profile());
            let p = trt.profile.expect("every dynamic input has a profile entry");
            assert!(p[2].contains(&format!("x:1x3x{block}x{block}")), "{}", p[2]);
            assert!(p[2].contains(&format!("inner:1x1x{block}x{block}")), "{}", p[2]);
            for l in m.hist_layers.iter().filter(|_| g.file == "tile_grad.onnx") {
                let (c, s) = (m.layer(l).unwrap().channels, m.layer(l).unwrap().stride);
                assert!(p[2].contains(&format!("hist_target_{l}:1x{c}x{}x{}", block / s, block / s)), "{}", p[2]);
            }
            assert!(trt.cache_key.starts_with(g.file.trim_end_matches(".onnx")));
        }
    }
}
