//! `manifest.json`: the contract written by the exporter (models/) beside the graphs, validated on load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

pub const FORMAT: &str = "fuchun-model";
/// 2: the histogram term takes its matched target as an input (`hist_target_<layer>`) and the objective returns
/// the histogram layers' activations (`feat_<layer>`); the runtime does the matching. 3: the terms are described as
/// data — their default weights with the layer normalisation, the style side that `strength` scales, the layer
/// groups — so that the runtime mirrors no list of terms.
pub const FORMAT_VERSION: u32 = 3;

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub exporter: serde_json::Value,
    pub weights: WeightsInfo,
    pub architecture: String,
    pub pooling: String,
    pub layers: Vec<LayerInfo>,
    /// The objective's terms, in the order of the `term_weights` input; each has a `loss_<term>` output.
    pub terms: Vec<String>,
    /// The terms with per-layer weights (`<term>_layer_weights` input, `layers_<term>` output) and their layers.
    pub layer_groups: Vec<LayerGroup>,
    /// The terms the one knob `strength` multiplies (the painting's side against the content).
    pub style_side_terms: Vec<String>,
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
    /// Term weights on raw activations (`layer_norm` off).
    pub default_term_weights: BTreeMap<String, f32>,
    /// Term weights with each layer's loss divided by its target's mean square (the default).
    pub normalized_term_weights: BTreeMap<String, f32>,
    pub default_layer_weights: BTreeMap<String, Vec<f32>>,
    pub forward_flops_per_pixel: f64,
    pub objective_flops_per_pixel: f64,
    pub graphs: Graphs,
    /// Present with the tile graphs.
    #[serde(default)]
    pub tiling: Option<Tiling>,
    /// The finest scale's objective: a model directory of its own with the layers down to `deepest_layer` only
    /// (`transfer::schedule`, "refine"). Absent: every scale runs this objective.
    #[serde(default)]
    pub refine: Option<RefineInfo>,
    #[serde(skip)]
    pub dir: PathBuf,
}

/// Where the refinement's model directory is, and what it leaves out.
#[derive(Debug, Clone, Deserialize)]
pub struct RefineInfo {
    /// Relative to this model's directory.
    pub dir: String,
    pub deepest_layer: String,
    /// Of the refinement's manifest.json, as exported with this one (a stale refinement is refused).
    pub manifest_sha256: String,
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
pub struct LayerGroup {
    pub term: String,
    pub layers: Vec<String>,
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
    /// The objective block by block (models/README.md, "Tiled evaluation"): first pass, statistics.
    #[serde(default)]
    pub tile_stats: Option<GraphInfo>,
    /// Second pass: each block's share of the gradient.
    #[serde(default)]
    pub tile_grad: Option<GraphInfo>,
}

/// The block geometry of the tile graphs (pixels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Tiling {
    /// How far beyond its own cell the deepest layer's activation depends on the image.
    pub reach: usize,
    /// Inner rectangles start at multiples of this (the deepest layer's stride).
    pub align: usize,
    /// Each block's inner rectangle is grown by this on every side inside the image: `reach` plus the largest
    /// long-range shift, rounded up to `align`.
    pub margin: usize,
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

/// The largest tile side the memory budget chooses: beyond it the margins cost little anyway, and it bounds the
/// blocks' shapes, so that one TensorRT engine of the tile graphs (`Manifest::tile_profile`) serves every image size.
pub const MAX_TILE: usize = 1024;

impl Manifest {
    /// The TensorRT profile (min, opt, max `[height, width]`) of the tile graphs: from the model's minimum size to
    /// the largest block (a `MAX_TILE` tile and its margins), optimised for a 512-pixel tile's block. None for a
    /// model without tile graphs.
    pub fn tile_profile(&self) -> Option<[[usize; 2]; 3]> {
        let t = self.tiling?;
        let side = |tile: usize| (tile + 2 * t.margin).max(self.min_size);
        Some([[self.min_size, self.min_size], [side(512), side(512)], [side(MAX_TILE), side(MAX_TILE)]])
    }

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
        if self.terms.is_empty() {
            bail!("no terms");
        }
        for l in self.all_term_layers() {
            if self.layer(l).is_none() {
                bail!("layer {l} is used by a term but missing from `layers`");
            }
        }
        for g in &self.layer_groups {
            if !self.terms.contains(&g.term) {
                bail!("layer group {} is not a term", g.term);
            }
            if let Some(l) = g.layers.iter().find(|l| self.layer(l).is_none()) {
                bail!("layer {l} of the {} term is missing from `layers`", g.term);
            }
            let got = self.default_layer_weights.get(&g.term).map(|v| v.len()).unwrap_or(0);
            if got != g.layers.len() {
                bail!("default_layer_weights.{} has {got} entries for {} layers", g.term, g.layers.len());
            }
        }
        for t in &self.terms {
            for (what, w) in [
                ("default_term_weights", &self.default_term_weights),
                ("normalized_term_weights", &self.normalized_term_weights),
            ] {
                if !w.contains_key(t) {
                    bail!("{what} lacks {t}");
                }
            }
        }
        if let Some(t) = self.style_side_terms.iter().find(|t| !self.terms.contains(t)) {
            bail!("style_side_terms names {t}, which is not a term");
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

    /// The layers of a term with per-layer weights (None: the term has none).
    pub fn group_layers(&self, term: &str) -> Option<&[String]> {
        self.layer_groups.iter().find(|g| g.term == term).map(|g| g.layers.as_slice())
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
