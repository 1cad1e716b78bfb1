//! Running the tile graphs (tile_stats.onnx, tile_grad.onnx) on one block: named f32 inputs in, named f32 outputs
//! out. What the blocks are and how their results add up is `transfer::tiled`'s.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use ort::session::SessionInputValue;
use ort::value::TensorRef;

use super::manifest::Manifest;
use super::model::Model;
use super::runtime::Shape;

/// The largest tile side the memory budget chooses: beyond it the margins cost little anyway, and it bounds the
/// blocks' shapes, so that one TensorRT engine of the tile graphs (`tile_profile`) serves every image size.
pub const MAX_TILE: usize = 1024;

/// The TensorRT profile (min, opt, max `[height, width]`) of the tile graphs: from the model's minimum size to the
/// largest block (a `MAX_TILE` tile and its margins), optimised for a 512-pixel tile's block. None for a model
/// without tile graphs.
pub fn tile_profile(m: &Manifest) -> Option<[Shape; 3]> {
    let t = m.tiling?;
    let side = |tile: usize| (tile + 2 * t.margin).max(m.min_size);
    Some([[m.min_size, m.min_size], [side(512), side(512)], [side(MAX_TILE), side(MAX_TILE)]])
}

/// Which of the two tile graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileGraph {
    /// First pass: the block's shares of the global statistics.
    Stats,
    /// Second pass: the block's share of the gradient and its inner sums.
    Grad,
}

/// One input: its name, shape and values (borrowed: crops are made by the caller, targets are views).
pub type TileInput<'a> = (&'a str, Vec<usize>, &'a [f32]);

/// One output: shape and values.
pub type TileOutput = (Vec<usize>, Vec<f32>);

impl Model {
    /// Whether the tile graphs are loaded (a memory budget and a model exported with them).
    pub fn has_tiles(&self) -> bool {
        self.tiles.is_some()
    }

    /// Run one tile graph on a block; `keep` selects the outputs copied out (by name).
    pub fn run_tile(
        &mut self,
        graph: TileGraph,
        inputs: &[TileInput<'_>],
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<BTreeMap<String, TileOutput>> {
        let Some((stats, grad)) = self.tiles.as_mut() else {
            bail!("the tile graphs are not loaded: load the model with a memory budget (--max-memory)");
        };
        let (session, file) = match graph {
            TileGraph::Stats => (stats, "tile_stats.onnx"),
            TileGraph::Grad => (grad.get(&self.manifest, &self.reopen)?, "tile_grad.onnx"),
        };
        let mut feed: Vec<(std::borrow::Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
        for (name, shape, data) in inputs {
            let n: usize = shape.iter().product();
            if n != data.len() {
                bail!("{file} input {name}: shape {shape:?} needs {n} values, got {}", data.len());
            }
            let t = TensorRef::from_array_view((shape.clone(), *data)).map_err(|e| anyhow!("tensor {name}: {e}"))?;
            feed.push(((*name).into(), t.into()));
        }
        let outputs = session.run_with_options(feed, &self.run_options).map_err(|e| anyhow!("running {file}: {e}"))?;
        let mut out = BTreeMap::new();
        for (name, value) in outputs.iter() {
            if !keep(name) {
                continue;
            }
            let (shape, d) = value.try_extract_tensor::<f32>().map_err(|e| anyhow!("{file} output {name}: {e}"))?;
            out.insert(name.to_string(), (shape.iter().map(|v| *v as usize).collect(), d.to_vec()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::runtime::RuntimeOptions;

    /// Statically (no GPU here): the profile strings ONNX Runtime's TensorRT provider would get for the tile graphs
    /// of the exported test model cover the largest block in every input, the targets at their layers' strides.
    #[test]
    fn the_tile_graphs_profile_covers_the_largest_block() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/out/test-random");
        let m = Manifest::load(&dir).expect("make test-models first");
        let t = m.tiling.unwrap();
        let [min, opt, max] = tile_profile(&m).unwrap();
        let block = MAX_TILE + 2 * t.margin;
        assert_eq!((min, opt[0], max), ([m.min_size, m.min_size], 512 + 2 * t.margin, [block, block]));
        for g in [m.graphs.tile_stats.as_ref().unwrap(), m.graphs.tile_grad.as_ref().unwrap()] {
            let trt = super::super::model::graph_tensorrt(
                &m,
                g,
                &"0".repeat(64),
                &RuntimeOptions::default(),
                tile_profile(&m),
            );
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
