//! Named styles with their targets computed once per scale and cached, in memory and on disk (keyed by the
//! style images' bytes, blend weights, style scale, the scale and the model's graphs).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::config::{Config, StyleConfig};
use crate::engine::{Manifest, Model};
use crate::imageio::{self, Limits, Planar};
use crate::settings::transfer::CAMERA;
use crate::settings::Door;
use crate::transfer::{StyleImages, StyleSource, StyleTargets, StylizeOptions};

pub struct Style {
    pub name: String,
    pub config: StyleConfig,
    images: Vec<Planar>,
    key: String,
    memory: HashMap<usize, StyleTargets>,
    cache_dir: Option<PathBuf>,
    /// Where the targets of the last `targets` call came from: "memory", "disk" or "computed".
    pub last_source: &'static str,
}

impl Style {
    pub fn load(name: &str, cfg: &Config, manifest: &Manifest) -> Result<Style> {
        let sc = cfg.styles.get(name).with_context(|| format!("unknown style {name:?}"))?.clone();
        let mut h = Sha256::new();
        let mut images = Vec::new();
        for p in &sc.images {
            let path = cfg.resolve(p);
            let bytes = std::fs::read(&path).with_context(|| format!("style {name}: reading {}", path.display()))?;
            h.update(&bytes);
            images.push(
                imageio::decode(&bytes, &Limits::default())
                    .with_context(|| format!("style {name}: {}", path.display()))?,
            );
        }
        for w in &sc.transfer.style_blend_weights {
            h.update(w.to_le_bytes());
        }
        h.update(sc.transfer.style_scale.to_le_bytes());
        h.update(manifest.graphs.features.sha256.as_bytes());
        h.update(manifest.graphs.objective.sha256.as_bytes());
        let key: String = h.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect();
        Ok(Style {
            name: name.to_string(),
            config: sc,
            images,
            key,
            memory: HashMap::new(),
            cache_dir: cfg.daemon.cache_dir.as_ref().map(|d| cfg.resolve(d)),
            last_source: "none",
        })
    }

    /// Identifies the style images, blend weights, style scale and the model's graphs.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The transfer options of this style for a result whose longest side is `size`.
    pub fn options(&self, manifest: &Manifest, size: usize) -> Result<StylizeOptions> {
        let door = Door::Toml(format!("styles.{}", self.name));
        self.config.transfer.options_at(manifest, &CAMERA, size, &Limits::default(), &door)
    }

    fn disk_path(&self, longest: usize) -> Option<PathBuf> {
        self.cache_dir.as_ref().map(|d| d.join(format!("style-{}-{}-{longest}.bin", self.name, self.key)))
    }
}

impl StyleSource for Style {
    fn targets(&mut self, model: &mut Model, longest: usize) -> Result<StyleTargets> {
        if let Some(t) = self.memory.get(&longest) {
            self.last_source = "memory";
            return Ok(t.clone());
        }
        let path = self.disk_path(longest);
        if let Some(p) = path.as_ref().filter(|p| p.is_file()) {
            match read_targets(p) {
                Ok(t) => {
                    self.last_source = "disk";
                    self.memory.insert(longest, t.clone());
                    return Ok(t);
                }
                Err(e) => tracing::warn!(path = %p.display(), error = %e, "ignoring an unreadable style cache file"),
            }
        }
        let t = StyleImages {
            images: &self.images,
            blend: self.config.transfer.style_blend_weights.clone(),
            style_scale: self.config.transfer.style_scale,
        }
        .targets(model, longest)?;
        self.last_source = "computed";
        if let Some(p) = &path {
            if let Err(e) = write_targets(p, &t) {
                tracing::warn!(path = %p.display(), error = %e, "cannot write the style cache");
            }
        }
        self.memory.insert(longest, t.clone());
        Ok(t)
    }

    fn colours(&self) -> Option<crate::transfer::color::ColourSample> {
        crate::transfer::color::ColourSample::of(
            &self.images,
            &self.config.transfer.style_blend_weights,
            crate::transfer::schedule::PALETTE_SIDE,
        )
    }
}

const MAGIC: &[u8; 8] = b"FCSTYLE1";

fn write_targets(path: &Path, t: &StyleTargets) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let mut buf = Vec::new();
    buf.extend_from_slice(MAGIC);
    let mut put = |name: String, v: &[f32]| {
        buf.extend_from_slice(&(name.len() as u32).to_le_bytes());
        buf.extend_from_slice(name.as_bytes());
        buf.extend_from_slice(&(v.len() as u64).to_le_bytes());
        for x in v {
            buf.extend_from_slice(&x.to_le_bytes());
        }
    };
    for (l, v) in &t.grams {
        put(format!("gram/{l}"), v);
    }
    for (l, (h, v)) in &t.shifts {
        put(format!("shift_h/{l}"), h);
        put(format!("shift_v/{l}"), v);
    }
    for (l, v) in &t.hists {
        put(format!("hist/{l}"), v);
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::File::create(&tmp)?.write_all(&buf)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn read_targets(path: &Path) -> Result<StyleTargets> {
    let mut data = Vec::new();
    std::fs::File::open(path)?.read_to_end(&mut data)?;
    if data.len() < 8 || &data[..8] != MAGIC {
        bail!("not a style cache file");
    }
    let mut t = StyleTargets { grams: Default::default(), shifts: Default::default(), hists: Default::default() };
    let mut i = 8;
    let end = data.len();
    let mut take = |n: usize| -> Result<Option<&[u8]>> {
        if i == end && n == 4 {
            return Ok(None); // clean end between entries
        }
        if i + n > data.len() {
            bail!("truncated style cache file");
        }
        let s = &data[i..i + n];
        i += n;
        Ok(Some(s))
    };
    let mut halves: HashMap<String, Vec<f32>> = HashMap::new();
    loop {
        let Some(len) = take(4)? else { break };
        let len = u32::from_le_bytes(len.try_into()?) as usize;
        let name = String::from_utf8(take(len)?.unwrap_or_default().to_vec())?;
        let n = u64::from_le_bytes(take(8)?.unwrap_or_default().try_into()?) as usize;
        let v: Vec<f32> = take(n * 4)?
            .unwrap_or_default()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        match name.split_once('/') {
            Some(("gram", l)) => {
                t.grams.insert(l.to_string(), v);
            }
            Some(("hist", l)) => {
                t.hists.insert(l.to_string(), v);
            }
            Some(("shift_h", _)) | Some(("shift_v", _)) => {
                halves.insert(name, v);
            }
            _ => bail!("unknown entry {name} in the style cache"),
        }
    }
    let layers: Vec<String> = halves.keys().filter_map(|k| k.strip_prefix("shift_h/").map(str::to_string)).collect();
    for l in layers {
        let h = halves.remove(&format!("shift_h/{l}")).unwrap();
        let v = halves.remove(&format!("shift_v/{l}")).context("shift_v missing in the style cache")?;
        t.shifts.insert(l, (h, v));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_file_round_trip() {
        let mut t = StyleTargets { grams: Default::default(), shifts: Default::default(), hists: Default::default() };
        t.grams.insert("relu1_1".into(), vec![1.0, 2.0, 3.0, 4.0]);
        t.shifts.insert("relu2_1".into(), (vec![0.5; 9], vec![-0.5; 9]));
        t.hists.insert("relu1_1".into(), vec![0.0, 1.0, 2.0]);
        let dir = std::env::temp_dir().join(format!("fuchun-style-{}", std::process::id()));
        let p = dir.join("s.bin");
        write_targets(&p, &t).unwrap();
        assert_eq!(read_targets(&p).unwrap(), t);
        std::fs::write(&p, b"FCSTYLE1\x05\x00").unwrap();
        assert!(read_targets(&p).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
