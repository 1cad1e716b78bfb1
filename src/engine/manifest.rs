//! `manifest.json`: the contract written by the exporter (models/) beside the graphs, validated on load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

pub const FORMAT: &str = "fuchun-model";
/// 2: the histogram term takes its matched target as an input (`hist_target_<layer>`) and the objective returns
/// the histogram layers' activations (`feat_<layer>`); the runtime does the matching.
pub const FORMAT_VERSION: u32 = 2;
/// Order of the entries of the `term_weights` graph input.
pub const TERMS: [&str; 6] = ["content", "style", "shift", "hist", "tv", "temporal"];

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub exporter: serde_json::Value,
    pub weights: WeightsInfo,
    pub architecture: String,
    pub pooling: String,
    pub layers: Vec<LayerInfo>,
    pub terms: Vec<String>,
    pub content_layers: Vec<String>,
    pub style_layers: Vec<String>,
    pub shift_layers: Vec<ShiftLayer>,
    pub hist_layers: Vec<String>,
    /// Histogram layers matched before each evaluation from prelude.onnx (the others from the objective's
    /// `feat_` outputs of the previous evaluation).
    #[serde(default)]
    pub hist_exact_layers: Vec<String>,
    pub quantiles: usize,
    pub min_size: usize,
    pub default_term_weights: BTreeMap<String, f32>,
    pub default_layer_weights: BTreeMap<String, Vec<f32>>,
    pub forward_flops_per_pixel: f64,
    pub objective_flops_per_pixel: f64,
    pub graphs: Graphs,
    #[serde(skip)]
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WeightsInfo {
    pub kind: String,
    pub sha256: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LayerInfo {
    pub name: String,
    pub channels: usize,
    pub stride: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ShiftLayer {
    pub layer: String,
    pub delta: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Graphs {
    pub features: GraphInfo,
    pub objective: GraphInfo,
    /// image -> activations of `hist_exact_layers`; present iff that list is not empty.
    #[serde(default)]
    pub prelude: Option<GraphInfo>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GraphInfo {
    pub file: String,
    #[serde(default)]
    pub sha256: String,
    /// The graph's weights (ONNX external data), beside it.
    #[serde(default)]
    pub data: Option<DataFile>,
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DataFile {
    pub file: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: String,
    /// Each dimension is a number or a symbolic name.
    pub shape: Vec<serde_json::Value>,
    #[serde(default)]
    pub meaning: String,
}

impl TensorInfo {
    /// Static dimensions (None for symbolic ones).
    pub fn dims(&self) -> Vec<Option<i64>> {
        self.shape.iter().map(|d| d.as_i64()).collect()
    }
}

impl Manifest {
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read the model manifest {}: export the graphs with `make models` or pass --model DIR \
                 (a directory with manifest.json, features.onnx, objective.onnx, prelude.onnx and their .onnx.data weights)",
                path.display()
            )
        })?;
        let mut m: Manifest = serde_json::from_str(&text).with_context(|| {
            format!("{} is not a valid fuchun manifest: re-export it with `make models`", path.display())
        })?;
        m.dir = dir.to_path_buf();
        m.validate().with_context(|| format!("invalid manifest {}", path.display()))?;
        Ok(m)
    }

    fn validate(&self) -> Result<()> {
        if self.format != FORMAT || self.format_version != FORMAT_VERSION {
            bail!(
                "format {} v{} is not {FORMAT} v{FORMAT_VERSION}: re-export with this version's exporter (`make models`)",
                self.format,
                self.format_version
            );
        }
        if self.terms != TERMS {
            bail!("terms {:?} differ from {:?}: re-export with `make models`", self.terms, TERMS);
        }
        for l in self.all_term_layers() {
            if self.layer(l).is_none() {
                bail!("layer {l} is used by a term but missing from `layers`");
            }
        }
        for (key, n) in [
            ("content", self.content_layers.len()),
            ("style", self.style_layers.len()),
            ("shift", self.shift_layers.len()),
            ("hist", self.hist_layers.len()),
        ] {
            let got = self.default_layer_weights.get(key).map(|v| v.len()).unwrap_or(0);
            if got != n {
                bail!("default_layer_weights.{key} has {got} entries for {n} layers");
            }
        }
        for t in TERMS {
            if !self.default_term_weights.contains_key(t) {
                bail!("default_term_weights lacks {t}");
            }
        }
        if let Some(l) = self.hist_exact_layers.iter().find(|l| !self.hist_layers.contains(l)) {
            bail!("hist_exact_layers names {l}, which is not a histogram layer");
        }
        if self.hist_exact_layers.is_empty() != self.graphs.prelude.is_none() {
            bail!("hist_exact_layers and graphs.prelude must come together");
        }
        if self.quantiles < 2 || self.min_size < 1 {
            bail!("quantiles {} / min_size {} out of range", self.quantiles, self.min_size);
        }
        Ok(())
    }

    fn all_term_layers(&self) -> impl Iterator<Item = &String> {
        self.content_layers
            .iter()
            .chain(&self.style_layers)
            .chain(self.shift_layers.iter().map(|s| &s.layer))
            .chain(&self.hist_layers)
    }

    pub fn layer(&self, name: &str) -> Option<&LayerInfo> {
        self.layers.iter().find(|l| l.name == name)
    }

    pub fn graph_path(&self, g: &GraphInfo) -> PathBuf {
        self.dir.join(&g.file)
    }

    /// The default term weights in graph order.
    pub fn default_term_weights(&self) -> [f32; 6] {
        TERMS.map(|t| self.default_term_weights[t])
    }
}

/// models/out/NAME searched from the current directory upwards, beside the executable, and in the source tree.
pub fn default_model_dir(name: &str) -> Result<PathBuf> {
    for r in &super::runtime::search_roots() {
        for candidate in [r.join("models/out").join(name), r.join("models").join(name)] {
            if candidate.join("manifest.json").is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!("no exported model models/out/{name} found: run `make models` (or pass --model DIR)")
}
