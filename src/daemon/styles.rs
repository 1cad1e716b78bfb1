//! Named styles with their targets computed once per scale and cached, in memory and on disk (keyed by the
//! style images' bytes, blend weights, style scale, the scale and the model's graphs).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::config::{Config, StyleConfig};
use super::style_cache::{self, CacheFile};
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
        self.cache_dir.as_ref().map(|d| style_cache::file_path(d, &self.name, &self.key, longest))
    }
}

impl StyleSource for Style {
    fn targets(&mut self, model: &mut Model, longest: usize) -> Result<StyleTargets> {
        if let Some(t) = self.memory.get(&longest) {
            self.last_source = "memory";
            return Ok(t.clone());
        }
        let file = self.disk_path(longest).and_then(|p| CacheFile::new(p, &self.key, longest, &model.manifest));
        if let Some(t) = file.as_ref().and_then(CacheFile::load) {
            self.last_source = "disk";
            self.memory.insert(longest, t.clone());
            return Ok(t);
        }
        let t = StyleImages {
            images: &self.images,
            blend: self.config.transfer.style_blend_weights.clone(),
            style_scale: self.config.transfer.style_scale,
        }
        .targets(model, longest)?;
        self.last_source = "computed";
        if let Some(f) = &file {
            f.store(&t);
        }
        self.memory.insert(longest, t.clone());
        Ok(t)
    }

    fn colours(&self, side: usize) -> Option<crate::transfer::color::ColourSample> {
        crate::transfer::color::ColourSample::of(&self.images, &self.config.transfer.style_blend_weights, side)
    }
}
