//! `fuchun bench --peers`: this project's objective side by side with the PyTorch implementation of the same
//! objective and the same graph through ONNX Runtime's Python API (`bench/peers/side_by_side.py`, which it runs),
//! and `fuchun bench --peer-worker`, the fuchun side of that bench: one image size, one evaluation per request.
//!
//! The worker builds the objective's inputs as `fuchun bench` does (content resized to a square, style fitted to
//! the same side, default weights with per-layer normalisation, histogram targets from the content) and reads
//! commands on stdin, one per line, answering one JSON line each:
//! `eval` — one evaluation as in an optimisation (prelude + `relu1_1` matching, graph, deeper layers matched from
//! its outputs): `{"seconds", "graph_seconds", "match_seconds", "total"}`;
//! `dump DIR` — `x`, every objective input as the last evaluation was fed, the style's quantile tables
//! (`quantiles_<layer>`), the last gradient (`grad`) as .npy files and the losses as `losses.json`, so that the
//! peers run on exactly these inputs and the check (bench/peers/test_check.py) compares with them;
//! `quit`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use rand::{Rng, SeedableRng};

use crate::engine::{Losses, ObjectiveInputs};
use crate::imageio::{self, fit_size, Limits};
use crate::settings::Runtime;
use crate::transfer::histmatch;
use crate::transfer::inputs::{objective_inputs, Weights};
use crate::transfer::targets::StyleTargets;

#[derive(Debug, Clone, Args)]
pub struct PeerArgs {
    /// Run the side-by-side bench against PyTorch and ONNX Runtime's Python API (bench/peers/side_by_side.py;
    /// `make peers` installs it) at --sizes, with --repeats rounds; PEERS_ARGS go to the script as they are.
    #[arg(long)]
    pub peers: bool,
    /// Extra arguments for bench/peers/side_by_side.py (e.g. "--impl ort:spinning=off").
    #[arg(long, allow_hyphen_values = true, value_name = "ARGS")]
    pub peers_args: Option<String>,
    /// The fuchun side of the side-by-side bench (driven over stdin by side_by_side.py).
    #[arg(long, hide = true)]
    pub peer_worker: bool,
    /// Worker: uniform noise of this amplitude added to the content to make x (clipped to [0, 1]; seed 1).
    #[arg(long, hide = true, default_value_t = 0.0)]
    pub peer_noise: f32,
}

/// What the side-by-side bench and its worker take from `fuchun bench`'s arguments.
pub struct PeerRun<'a> {
    pub peers: &'a PeerArgs,
    pub model: &'a Runtime,
    pub sizes: &'a [usize],
    pub repeats: usize,
    pub content: &'a Path,
    pub style: &'a Path,
}

/// Handle `--peers` / `--peer-worker`; false when neither is given.
pub fn dispatch(args: &PeerRun) -> Result<bool> {
    if args.peers.peer_worker {
        worker(args)?;
        Ok(true)
    } else if args.peers.peers {
        side_by_side(args)?;
        Ok(true)
    } else {
        Ok(false)
    }
}

fn side_by_side(args: &PeerRun) -> Result<()> {
    let roots = crate::engine::runtime::search_roots();
    let script = roots
        .iter()
        .map(|r| r.join("bench/peers/side_by_side.py"))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("bench/peers/side_by_side.py not found: run from the source tree"))?;
    let dir = script.parent().unwrap_or(Path::new("."));
    let python = dir.join(".venv/bin/python");
    if !python.is_file() {
        bail!("{} is missing: run `make peers` first (installs PyTorch for the side-by-side bench)", python.display());
    }
    let exe = std::env::current_exe().context("locating the fuchun binary")?;
    let sizes: Vec<String> = args.sizes.iter().map(|s| s.to_string()).collect();
    let mut cmd = std::process::Command::new(&python);
    cmd.arg(&script)
        .arg("--fuchun")
        .arg(&exe)
        .arg("--model")
        .arg(args.model.cli_model_dir()?)
        .arg("--content")
        .arg(args.content)
        .arg("--style")
        .arg(args.style)
        .args(["--sizes", &sizes.join(","), "--rounds", &args.repeats.to_string()]);
    if let Some(extra) = &args.peers.peers_args {
        cmd.args(extra.split_whitespace());
    }
    let status = cmd.status().with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    Ok(())
}

fn worker(args: &PeerRun) -> Result<()> {
    let &[size] = args.sizes else { bail!("--peer-worker takes one size (--sizes N)") };
    let limits = Limits::default();
    let content = imageio::load_path(args.content, &limits).with_context(|| format!("{}", args.content.display()))?;
    let style = imageio::load_path(args.style, &limits).with_context(|| format!("{}", args.style.display()))?;
    let mut model = args.model.load(&[[size, size]])?;
    let m = model.manifest.clone();
    let c = content.resize(size, size);
    let (sw, sh) = fit_size(style.width, style.height, size);
    let cf = model.features(&c.data, size, size)?;
    let sf = model.features(&style.resize(sw, sh).data, sh, sw)?;
    let st = StyleTargets::from_features(&m, &sf)?;
    let mut inputs = objective_inputs(&m, (size, size), &cf, &st, &Weights::defaults(&m), &cf)?;
    drop((cf, sf));
    let mut x = c.data;
    if args.peers.peer_noise > 0.0 {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let a = args.peers.peer_noise;
        x.iter_mut().for_each(|v| *v = (*v + a * (2.0 * rng.random::<f32>() - 1.0)).clamp(0.0, 1.0));
    }
    let mut grad = vec![0.0f32; x.len()];
    let mut last: Option<Losses> = None;
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["eval"] => {
                let t = Instant::now();
                let (losses, secs) =
                    histmatch::evaluate(&mut model, &x, size, size, &mut inputs, &mut grad, &st, true)?;
                let total = t.elapsed().as_secs_f64();
                last = Some(losses.clone());
                serde_json::json!({"seconds": total, "graph_seconds": total - secs, "match_seconds": secs,
                    "total": losses.total})
            }
            ["dump", dir] => {
                dump(Path::new(dir), &m, size, &x, &mut inputs, &st, last.as_ref().map(|l| (l, &grad[..])))?;
                serde_json::json!({"ok": true})
            }
            ["quit"] => break,
            [] => continue,
            _ => serde_json::json!({"error": format!("unknown command {line:?}")}),
        };
        writeln!(out, "{reply}")?;
        out.flush()?;
    }
    Ok(())
}

/// Write `x`, every objective input, the quantile tables and (after an evaluation) its gradient and losses.
fn dump(
    dir: &Path,
    m: &crate::engine::Manifest,
    size: usize,
    x: &[f32],
    inputs: &mut ObjectiveInputs,
    st: &StyleTargets,
    last: Option<(&Losses, &[f32])>,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = |name: &str| -> PathBuf { dir.join(format!("{name}.npy")) };
    write_npy(&file("x"), &[1, 3, size, size], x)?;
    let names: Vec<String> = inputs.names().map(str::to_string).collect();
    for name in names {
        let value = inputs.take(&name).ok_or_else(|| anyhow!("input {name} vanished"))?;
        let written = match value.try_extract_tensor::<f32>() {
            Ok((shape, data)) => {
                let shape: Vec<usize> = shape.iter().map(|d| *d as usize).collect();
                write_npy(&file(&name), &shape, data)
            }
            Err(e) => Err(anyhow!("input {name}: {e}")),
        };
        inputs.put(&name, value);
        written?;
    }
    let inputs = StyleTargets::inputs(m);
    for (name, t) in st.tensors.iter().filter(|(n, _)| !inputs.contains(n)) {
        write_npy(&file(name), &t.shape, &t.data)?;
    }
    if let Some((losses, grad)) = last {
        write_npy(&file("grad"), &[1, 3, size, size], grad)?;
        let terms: serde_json::Map<String, serde_json::Value> =
            losses.terms.iter().map(|(t, v)| (t.clone(), (*v).into())).collect();
        let layers: serde_json::Map<String, serde_json::Value> =
            losses.layers.iter().map(|(g, v)| (g.clone(), v.clone().into())).collect();
        let json = serde_json::json!({"total": losses.total, "terms": terms, "layers": layers});
        std::fs::write(dir.join("losses.json"), json.to_string())?;
    }
    Ok(())
}

/// A float32 array as a NumPy .npy file (format 1.0, C order).
fn write_npy(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    if shape.iter().product::<usize>() != data.len() {
        bail!("{}: shape {shape:?} for {} values", path.display(), data.len());
    }
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}");
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + 4 * data.len());
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    data.iter().for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_data_follows() {
        let dir = std::env::temp_dir().join(format!("fuchun-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.npy");
        write_npy(&p, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let b = std::fs::read(&p).unwrap();
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
        assert!(header.contains("'shape': (2, 3)") && header.ends_with('\n'));
        assert_eq!(b.len(), 10 + hlen + 24);
        assert_eq!(f32::from_le_bytes(b[b.len() - 4..].try_into().unwrap()), 6.0);
        assert!(write_npy(&p, &[4], &[1.0]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
