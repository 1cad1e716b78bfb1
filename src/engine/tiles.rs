//! Running the tile graphs (tile_stats.onnx, tile_grad.onnx) on one block: named f32 inputs in, named f32 outputs
//! out. What the blocks are and how their results add up is `transfer::tiled`'s.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use ort::session::SessionInputValue;
use ort::value::TensorRef;

use super::model::Model;

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
