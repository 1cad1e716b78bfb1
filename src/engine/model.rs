//! The exported graphs as ONNX Runtime sessions: features (image -> activations) and objective (image + targets
//! + weights -> losses and gradient), checked against the manifest.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use ort::session::{OutputSelector, RunOptions, Session};
use ort::value::{DynValue, Tensor, TensorRef};
use sha2::{Digest, Sha256};

use super::manifest::{GraphInfo, Manifest, TERMS};
use super::runtime::{self, Provider, RuntimeOptions, SessionUse};

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

/// Losses of one evaluation (each term layer-weighted, before its term weight).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Losses {
    pub total: f64,
    pub terms: [f64; 5],
}

impl Losses {
    pub fn term(&self, name: &str) -> f64 {
        TERMS.iter().position(|t| *t == name).map(|i| self.terms[i]).unwrap_or(f64::NAN)
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

pub struct Model {
    pub manifest: Manifest,
    pub provider: Provider,
    features: Session,
    objective: Session,
    prelude: Option<Session>,
    feature_outputs: Vec<String>,
}

/// Matches one layer's activations (name, [channels, height, width], data) in place.
pub type MatchInPlace<'a> = &'a mut dyn FnMut(&str, [usize; 3], &mut [f32]) -> Result<()>;

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

impl Model {
    /// Load and validate a model directory (manifest.json + graphs).
    pub fn load(dir: &Path, opts: &RuntimeOptions) -> Result<Model> {
        let manifest = Manifest::load(dir)?;
        let env = runtime::init(opts.library.as_deref())?;
        let mut provider = Provider::Cpu;
        let mut open = |g: &GraphInfo, usage: SessionUse| -> Result<Session> {
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
            for (file, want) in files {
                if want.is_empty() {
                    continue;
                }
                let got = sha256_file(&file)?;
                if got != want {
                    bail!(
                        "{} does not match its manifest (sha256 {got}, manifest says {want}): the files come from \
                         different exports; re-export with `make models`",
                        file.display()
                    );
                }
            }
            let (builder, p) = runtime::session_builder(env, opts, usage)?;
            provider = p;
            let mut builder = builder;
            let session = builder.commit_from_file(&path).map_err(|e| {
                anyhow!("ONNX Runtime cannot load {}: {e}; re-export with `make models`", path.display())
            })?;
            check_signature(&session, g, &path)?;
            Ok(session)
        };
        // the feature extractor runs a few times per scale: no arena (its activations do not stay resident) and no
        // reordered weight copies (see SessionUse)
        let features = open(&manifest.graphs.features, SessionUse::Occasional)?;
        let objective = open(&manifest.graphs.objective, SessionUse::Hot)?;
        // the prelude runs every evaluation, but without an arena its output (67 MB at 512x512) goes back to the
        // system after the matching instead of staying beside the objective's arena
        let prelude = match &manifest.graphs.prelude {
            Some(g) => Some(open(g, SessionUse::Occasional)?),
            None => None,
        };
        let feature_outputs = manifest.graphs.features.outputs.iter().map(|o| o.name.clone()).collect();
        Ok(Model { manifest, provider, features, objective, prelude, feature_outputs })
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
        let outputs = self.features.run(ort::inputs!["x" => x]).map_err(|e| anyhow!("running features.onnx: {e}"))?;
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
        let options = RunOptions::new().map_err(|e| anyhow!("{e}"))?.with_outputs(selector);
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
        let outputs = self.objective.run(feed).map_err(|e| anyhow!("running objective.onnx: {e}"))?;
        let scalar = |name: &str| -> Result<f64> {
            let (_, d) = outputs[name].try_extract_tensor::<f32>().map_err(|e| anyhow!("output {name}: {e}"))?;
            d.first().map(|v| *v as f64).ok_or_else(|| anyhow!("output {name} is empty"))
        };
        let mut losses = Losses { total: scalar("total")?, terms: [0.0; 5] };
        for (i, t) in TERMS.iter().enumerate() {
            losses.terms[i] = scalar(&format!("loss_{t}"))?;
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
