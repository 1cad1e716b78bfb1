//! The on-disk style-target cache: one safetensors file per style and result size, the style targets' tensors by
//! their names (`StyleTargets::layout`: `gram_<layer>`, `shift_h_<layer>`, `shift_v_<layer>`, `quantiles_<layer>`;
//! f32), with the style's key, the size and a checksum in the file's metadata. The files are read by the daemon's worker threads, so a file that is not exactly what
//! this model and style would write (truncated, corrupted, foreign, another style's) is an error for the caller
//! to recompute from, never a panic.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};

use crate::engine::Manifest;
use crate::transfer::targets::Target;
use crate::transfer::StyleTargets;

/// Marks our files among other safetensors files; a new layout of the tensors gets a new value.
const FORMAT: &str = "fuchun-style-targets/2";

/// Room for the header beyond the tensors' bytes: a larger file is not read at all.
const MAX_HEADER_BYTES: u64 = 1 << 20;

/// The file of a style's targets for results whose longest side is `longest`.
pub fn file_path(dir: &Path, style: &str, key: &str, longest: usize) -> PathBuf {
    dir.join(format!("style-{style}-{key}-{longest}.safetensors"))
}

/// One style's targets at one result size on disk.
pub struct CacheFile {
    path: PathBuf,
    key: String,
    longest: usize,
    layout: Layout,
}

impl CacheFile {
    /// The file `path` for the style with key `key` (`Style::key`) and results of `longest` pixels; None (with a
    /// warning) when the model's manifest does not say what the targets consist of.
    pub fn new(path: PathBuf, key: &str, longest: usize, manifest: &Manifest) -> Option<CacheFile> {
        match Layout::of(manifest) {
            Ok(layout) => Some(CacheFile { path, key: key.to_string(), longest, layout }),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "no style cache on disk for this model");
                None
            }
        }
    }

    fn id(&self) -> Identity<'_> {
        Identity { key: &self.key, longest: self.longest }
    }

    /// The targets in the file; None when there is none, or (with a warning) when it cannot be used: the caller
    /// computes them again and `store` replaces the file.
    pub fn load(&self) -> Option<StyleTargets> {
        if !self.path.is_file() {
            return None;
        }
        match read(&self.path, self.id(), &self.layout) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %format!("{e:#}"),
                    "ignoring an unreadable style cache file; computing the targets again");
                None
            }
        }
    }

    /// Keep `t` in the file (a failure is only a warning: the targets are in memory anyway).
    pub fn store(&self, t: &StyleTargets) {
        if let Err(e) = write(&self.path, self.id(), &self.layout, t) {
            tracing::warn!(path = %self.path.display(), error = %format!("{e:#}"), "cannot write the style cache");
        }
    }
}

/// What a file must hold to be used: these tensors, f32, of these shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout(BTreeMap<String, Vec<usize>>);

impl Layout {
    /// The targets `StyleTargets::from_features` makes for this model (their names and shapes).
    pub fn of(m: &Manifest) -> Result<Layout> {
        let t = StyleTargets::layout(m);
        if let Some((name, _)) = t.iter().find(|(_, shape)| shape.contains(&0)) {
            bail!("the style target {name} has a layer that is not in the model's manifest");
        }
        Ok(Layout(t))
    }

    fn bytes(&self) -> u64 {
        self.0.values().map(|s| s.iter().product::<usize>() as u64 * 4).sum()
    }
}

/// Which targets a file holds: a file of another style, model or size is not used.
#[derive(Debug, Clone, Copy)]
struct Identity<'a> {
    /// `Style::key`: the style images, blend weights, style scale and the model's graphs.
    key: &'a str,
    longest: usize,
}

impl Identity<'_> {
    fn metadata(&self, checksum: String) -> HashMap<String, String> {
        HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("key".to_string(), self.key.to_string()),
            ("longest".to_string(), self.longest.to_string()),
            ("sha256".to_string(), checksum),
        ])
    }
}

/// The targets as named tensors (little-endian f32 bytes), in name order.
fn tensors(t: &StyleTargets) -> BTreeMap<String, Vec<u8>> {
    t.tensors.iter().map(|(name, v)| (name.clone(), v.data.iter().flat_map(|x| x.to_le_bytes()).collect())).collect()
}

/// Over names, shapes and bytes, so a flipped bit anywhere in the tensors' description or data is noticed
/// (safetensors itself has no checksum).
fn checksum<'a>(entries: impl Iterator<Item = (&'a str, &'a [usize], &'a [u8])>) -> String {
    let mut h = Sha256::new();
    for (name, shape, data) in entries {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((shape.len() as u64).to_le_bytes());
        for d in shape {
            h.update((*d as u64).to_le_bytes());
        }
        h.update((data.len() as u64).to_le_bytes());
        h.update(data);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Write `t` to `path` (through a temporary file in the same directory, renamed into place, so a reader never
/// sees half a file).
fn write(path: &Path, id: Identity, layout: &Layout, t: &StyleTargets) -> Result<()> {
    let data = tensors(t);
    ensure!(data.len() == layout.0.len(), "the targets have {} tensors, the model {}", data.len(), layout.0.len());
    let mut views = Vec::new();
    for (name, bytes) in &data {
        let shape = layout.0.get(name).with_context(|| format!("the model has no tensor {name}"))?;
        let view = TensorView::new(Dtype::F32, shape.clone(), bytes)
            .map_err(|e| anyhow::anyhow!("{name}: {} values for the shape {shape:?}: {e}", bytes.len() / 4))?;
        views.push((name.clone(), view));
    }
    let sum = checksum(views.iter().map(|(n, v)| (n.as_str(), v.shape(), v.data())));
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    safetensors::serialize_to_file(views, Some(id.metadata(sum)), path)?;
    Ok(())
}

/// Read the targets in `path` if it holds exactly what `write` wrote for `id` and `layout`.
fn read(path: &Path, id: Identity, layout: &Layout) -> Result<StyleTargets> {
    let limit = layout.bytes() + 8 + MAX_HEADER_BYTES;
    let size = std::fs::metadata(path)?.len();
    ensure!(size <= limit, "{size} bytes, more than a style cache file of this model can be");
    let bytes = std::fs::read(path)?;
    parse(&bytes, id, layout)
}

fn parse(bytes: &[u8], id: Identity, layout: &Layout) -> Result<StyleTargets> {
    check_offsets(bytes)?;
    let st = SafeTensors::deserialize(bytes).context("not a safetensors file")?;
    let (_, meta) = SafeTensors::read_metadata(bytes)?;
    let meta = meta.metadata().as_ref().context("no metadata: not a style cache file")?;
    let field = |k: &str| meta.get(k).map(String::as_str).unwrap_or_default();
    ensure!(field("format") == FORMAT, "not a style cache file (format {:?})", field("format"));
    ensure!(field("key") == id.key, "the targets of another style or model (key {})", field("key"));
    let longest = id.longest.to_string();
    ensure!(field("longest") == longest, "the targets of another size ({})", field("longest"));
    ensure!(st.len() == layout.0.len(), "{} tensors, the model has {}", st.len(), layout.0.len());
    let mut views = Vec::new();
    for (name, shape) in &layout.0 {
        let v = st.tensor(name).with_context(|| format!("{name} missing"))?;
        ensure!(v.dtype() == Dtype::F32, "{name} is {:?}, not F32", v.dtype());
        ensure!(v.shape() == shape.as_slice(), "{name} has the shape {:?}, not {shape:?}", v.shape());
        views.push((name.as_str(), v));
    }
    let sum = checksum(views.iter().map(|(n, v)| (*n, v.shape(), v.data())));
    ensure!(field("sha256") == sum, "checksum mismatch: the file is corrupted");
    let mut t = StyleTargets::default();
    for (name, v) in views {
        let data: Vec<f32> = v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        t.tensors.insert(name.to_string(), Target { shape: v.shape().to_vec(), data });
    }
    Ok(t)
}

/// Every tensor's data offsets within the file. safetensors 0.8 adds them up unchecked, which overflows (a
/// panic in builds with overflow checks) on a header whose offsets come close to `usize::MAX`.
fn check_offsets(bytes: &[u8]) -> Result<()> {
    let n = bytes.get(..8).context("shorter than a safetensors header")?;
    let n = u64::from_le_bytes(n.try_into()?);
    let header = usize::try_from(n).ok().and_then(|n| bytes.get(8..n.checked_add(8)?)).context("truncated header")?;
    let header: HashMap<String, serde_json::Value> =
        serde_json::from_slice(header).context("not a safetensors header")?;
    for (name, info) in header.iter().filter(|(k, _)| *k != "__metadata__") {
        let offsets = info.get("data_offsets").and_then(|o| o.as_array());
        let within = offsets.is_some_and(|o| o.iter().all(|x| x.as_u64().is_some_and(|x| x <= bytes.len() as u64)));
        ensure!(within, "{name}: data offsets outside the file");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout(BTreeMap::from([
            ("gram_relu1_1".to_string(), vec![2, 2]),
            ("shift_h_relu2_1".to_string(), vec![3, 3]),
            ("shift_v_relu2_1".to_string(), vec![3, 3]),
            ("quantiles_relu1_1".to_string(), vec![1, 3]),
        ]))
    }

    fn targets() -> StyleTargets {
        let mut t = StyleTargets::default();
        let mut put = |n: &str, shape: Vec<usize>, data: Vec<f32>| t.tensors.insert(n.into(), Target { shape, data });
        put("gram_relu1_1", vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        put("shift_h_relu2_1", vec![3, 3], vec![0.5; 9]);
        put("shift_v_relu2_1", vec![3, 3], vec![-0.5; 9]);
        put("quantiles_relu1_1", vec![1, 3], vec![0.0, 1.0, 2.0]);
        t
    }

    const ID: Identity = Identity { key: "0123456789abcdef01234567", longest: 256 };

    /// The bytes of a good cache file.
    fn good(dir: &Path) -> Vec<u8> {
        let p = dir.join("good.safetensors");
        write(&p, ID, &layout(), &targets()).unwrap();
        std::fs::read(p).unwrap()
    }

    type Meta = Option<HashMap<String, String>>;

    /// A safetensors file with a tensor for each of `of` (zeros of `dtype`, the shape `shape` makes of the
    /// layout's), and this metadata.
    fn foreign(of: &Layout, dtype: Dtype, shape: fn(&[usize]) -> Vec<usize>, meta: Meta) -> Vec<u8> {
        let shapes: Vec<(String, Vec<usize>)> = of.0.iter().map(|(n, s)| (n.clone(), shape(s))).collect();
        let data: Vec<Vec<u8>> =
            shapes.iter().map(|(_, s)| vec![0u8; s.iter().product::<usize>() * dtype.bitsize() / 8]).collect();
        let views = shapes.iter().zip(&data).map(|((n, s), b)| (n, TensorView::new(dtype, s.clone(), b).unwrap()));
        safetensors::serialize(views, meta).unwrap()
    }

    #[test]
    fn cache_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = file_path(&dir.path().join("sub"), "ink", ID.key, 256);
        assert!(p.to_string_lossy().ends_with("style-ink-0123456789abcdef01234567-256.safetensors"));
        write(&p, ID, &layout(), &targets()).unwrap();
        assert_eq!(read(&p, ID, &layout()).unwrap(), targets());
        // the same file is not taken for another style, model or size
        assert!(read(&p, Identity { key: "another", ..ID }, &layout()).is_err());
        assert!(read(&p, Identity { longest: 512, ..ID }, &layout()).is_err());
        let mut other = layout();
        other.0.insert("gram_relu1_1".into(), vec![4, 1]);
        assert!(read(&p, ID, &other).is_err());
        // the old format of the cache
        std::fs::write(&p, b"FCSTYLE1\x05\x00").unwrap();
        assert!(read(&p, ID, &layout()).is_err());
    }

    #[test]
    fn an_unusable_file_is_computed_again_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_path(dir.path(), "ink", ID.key, ID.longest);
        let file = CacheFile { path: path.clone(), key: ID.key.into(), longest: ID.longest, layout: layout() };
        assert_eq!(file.load(), None);
        for bad in [&b"\x89PNG\r\n\x1a\n"[..], b"", b"FCSTYLE1\xff\xff\xff\xff\xff\xff\xff\xff"] {
            std::fs::write(&path, bad).unwrap();
            assert_eq!(file.load(), None);
            file.store(&targets());
            assert_eq!(file.load(), Some(targets()));
        }
        // a store that fails (the directory is a file) leaves the caller with its targets, and a warning
        let blocked = dir.path().join("blocked");
        std::fs::write(&blocked, b"").unwrap();
        let file = CacheFile { path: blocked.join("s.safetensors"), ..file };
        file.store(&targets());
        assert_eq!(file.load(), None);
    }

    #[test]
    fn targets_unlike_the_model_are_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.safetensors");
        let mut t = targets();
        t.tensors.insert("gram_relu1_1".into(), Target { shape: vec![2, 2], data: vec![1.0; 5] });
        assert!(write(&p, ID, &layout(), &t).is_err());
        let mut t = targets();
        t.tensors.insert("quantiles_relu9_9".into(), Target { shape: vec![1, 3], data: vec![1.0; 3] });
        assert!(write(&p, ID, &layout(), &t).is_err());
        assert!(!p.exists());
    }

    #[test]
    fn every_truncation_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = good(dir.path());
        for n in 0..bytes.len() {
            assert!(parse(&bytes[..n], ID, &layout()).is_err(), "truncated to {n} bytes");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(parse(&longer, ID, &layout()).is_err());
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = good(dir.path());
        for i in 0..bytes.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] ^= mask;
                assert!(parse(&b, ID, &layout()).is_err(), "byte {i} ^ {mask:#x} accepted");
            }
        }
    }

    #[test]
    fn huge_lengths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = good(dir.path());
        for n in [u64::MAX, u64::MAX - 7, 1 << 62, usize::MAX as u64 / 2, bytes.len() as u64] {
            let mut b = bytes.clone();
            b[..8].copy_from_slice(&n.to_le_bytes());
            assert!(parse(&b, ID, &layout()).is_err(), "header length {n}");
        }
        // offsets that add up past usize::MAX (safetensors 0.8 overflows on them)
        let chunk = (1u64 << 61) - 4;
        let parts: Vec<String> = (0..8u64)
            .map(|i| {
                let s = i * chunk;
                format!(r#""t{i}":{{"dtype":"F32","shape":[{}],"data_offsets":[{s},{}]}}"#, chunk / 4, s + chunk)
            })
            .collect();
        let header = format!("{{{}}}", parts.join(","));
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        assert!(parse(&b, ID, &layout()).is_err());
        // a file far larger than this model's targets is not even read
        let p = dir.path().join("big.safetensors");
        std::fs::File::create(&p).unwrap().set_len(layout().bytes() + 8 + MAX_HEADER_BYTES + 1).unwrap();
        assert!(read(&p, ID, &layout()).unwrap_err().to_string().contains("more than"));
    }

    #[test]
    fn foreign_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let png = crate::imageio::encode(&crate::imageio::Planar::new(4, 4), crate::imageio::OutputFormat::Png);
        // our metadata, with the right key but no checksum: the dtype and shape checks come first
        let ours = || Some(ID.metadata(String::new()));
        let same = |s: &[usize]| s.to_vec();
        let mut fewer = layout();
        fewer.0.remove("quantiles_relu1_1");
        let mut more = layout();
        more.0.insert("gram_relu2_1".into(), vec![3, 3]);
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", vec![], "shorter than"),
            ("png", png.unwrap(), "truncated header"),
            (
                "old format",
                b"FCSTYLE1\x0c\x00\x00\x00gram/relu1_1\x04\x00\x00\x00\x00\x00\x00\x00".to_vec(),
                "truncated header",
            ),
            ("json", b"{\"gram/relu1_1\": [1, 2, 3, 4]}".to_vec(), "truncated header"),
            ("no metadata", foreign(&layout(), Dtype::F32, same, None), "no metadata"),
            (
                "another format",
                foreign(&layout(), Dtype::F32, same, Some(HashMap::from([("format".into(), "x".into())]))),
                "format",
            ),
            ("no checksum", foreign(&layout(), Dtype::F32, same, ours()), "checksum"),
            ("f64", foreign(&layout(), Dtype::F64, same, ours()), "not F32"),
            ("f16", foreign(&layout(), Dtype::F16, same, ours()), "not F32"),
            ("flat", foreign(&layout(), Dtype::F32, |s| vec![s.iter().product()], ours()), "the shape"),
            ("transposed", foreign(&layout(), Dtype::F32, |s| s.iter().rev().copied().collect(), ours()), "the shape"),
            ("a tensor missing", foreign(&fewer, Dtype::F32, same, ours()), "the model has"),
            ("a tensor more", foreign(&more, Dtype::F32, same, ours()), "the model has"),
            ("no tensors", safetensors::serialize(Vec::<(&str, TensorView)>::new(), ours()).unwrap(), "the model has"),
        ];
        for (what, bytes, why) in cases {
            let p = dir.path().join("s.safetensors");
            std::fs::write(&p, &bytes).unwrap();
            let e = format!("{:#}", read(&p, ID, &layout()).expect_err(what));
            assert!(e.contains(why), "{what}: {e}");
        }
        assert!(read(&dir.path().join("missing.safetensors"), ID, &layout()).is_err());
    }
}
