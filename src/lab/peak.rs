//! The machine's FP32 matrix-multiply peak as ONNX Runtime itself reaches it: one large MatMul (MLAS, the kernels
//! ONNX Runtime's convolutions use) on the same provider and threads as the model. The bench reports achieved
//! GFLOP/s against the best of this and a plain Rust sgemm, so the percentage is not flattered by a slow reference.

use std::time::Instant;

use anyhow::{anyhow, Result};
use ort::value::Tensor;

use crate::engine::runtime::{self, RuntimeOptions};

/// Minimal protobuf writer for the few ONNX messages a one-node model needs.
struct Pb(Vec<u8>);

impl Pb {
    fn new() -> Self {
        Pb(Vec::new())
    }
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn int(&mut self, field: u32, v: u64) -> &mut Self {
        self.varint((field as u64) << 3); // wire type 0 (varint)
        self.varint(v);
        self
    }
    fn bytes(&mut self, field: u32, b: &[u8]) -> &mut Self {
        self.varint(((field as u64) << 3) | 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    fn msg(&mut self, field: u32, m: &Pb) -> &mut Self {
        self.bytes(field, &m.0)
    }
}

/// `y = a · b`, float32, `a`, `b` square of side `n` (ONNX opset 13, IR 8).
pub fn matmul_model(n: usize) -> Vec<u8> {
    let value = |name: &str| {
        let mut shape = Pb::new();
        for _ in 0..2 {
            let mut dim = Pb::new();
            dim.int(1, n as u64); // dim_value
            shape.msg(1, &dim);
        }
        let mut tensor = Pb::new();
        tensor.int(1, 1).msg(2, &shape); // elem_type FLOAT, shape
        let mut ty = Pb::new();
        ty.msg(1, &tensor); // tensor_type
        let mut v = Pb::new();
        v.bytes(1, name.as_bytes()).msg(2, &ty);
        v
    };
    let mut node = Pb::new();
    node.bytes(1, b"a").bytes(1, b"b").bytes(2, b"y").bytes(4, b"MatMul");
    let mut graph = Pb::new();
    graph.msg(1, &node).bytes(2, b"peak").msg(11, &value("a")).msg(11, &value("b")).msg(12, &value("y"));
    let mut opset = Pb::new();
    opset.bytes(1, b"").int(2, 13);
    let mut model = Pb::new();
    model.int(1, 8).bytes(2, b"fuchun-bench").msg(7, &graph).msg(8, &opset);
    model.0
}

/// GFLOP/s of the best of `reps` runs of an n×n×n MatMul through ONNX Runtime (after one warm-up).
pub fn onnxruntime_matmul_gflops(opts: &RuntimeOptions, n: usize, reps: usize) -> Result<f64> {
    let env = runtime::init(opts.library.as_deref())?;
    // no arena: the matrices' memory goes back when the session ends, not into the bench's peak RSS
    // MLAS, the CPU's kernels: this is the CPU's peak whatever provider runs the model
    let cpu = runtime::Candidate::new(runtime::Provider::Cpu);
    let mut builder = runtime::session_builder(
        env,
        opts,
        runtime::SessionUse::Occasional,
        &cpu,
        &runtime::GraphTensorRt::default(),
        &runtime::PlacementLog::default(),
    )?;
    let bytes = matmul_model(n);
    let mut session = builder.commit_from_memory(&bytes).map_err(|e| anyhow!("ONNX Runtime MatMul model: {e}"))?;
    let a = Tensor::from_array(([n, n], vec![1.0f32; n * n])).map_err(|e| anyhow!("{e}"))?;
    let b = Tensor::from_array(([n, n], vec![0.5f32; n * n])).map_err(|e| anyhow!("{e}"))?;
    let mut best = f64::INFINITY;
    for i in 0..=reps.max(1) {
        let t = Instant::now();
        let out = session.run(ort::inputs!["a" => &a, "b" => &b]).map_err(|e| anyhow!("running MatMul: {e}"))?;
        let secs = t.elapsed().as_secs_f64();
        if i == 0 {
            let (_, y) = out["y"].try_extract_tensor::<f32>().map_err(|e| anyhow!("{e}"))?;
            // each entry is the sum of n products 1 × 0.5
            if (y[0] - 0.5 * n as f32).abs() > 1e-3 * n as f32 {
                return Err(anyhow!("MatMul returned {} instead of {}", y[0], 0.5 * n as f32));
            }
        } else {
            best = best.min(secs);
        }
    }
    Ok(2.0 * (n as f64).powi(3) / best / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matmul_model_runs_and_multiplies() {
        let g = onnxruntime_matmul_gflops(&RuntimeOptions::default(), 64, 2).unwrap();
        assert!(g.is_finite() && g > 0.0);
    }
}
