//! The stream knobs (how consecutive frames of a camera or a frame sequence are compared and used):
//! `fuchun stylize`'s frame-sequence flags and `[daemon.temporal]`, declared once.

use anyhow::{bail, Result};
use clap::Args;
use serde::Deserialize;

use super::Door;
use crate::transfer::temporal::{ChangeParams, StreamSettings, DEFAULT_MAX_EVALUATIONS, DEFAULT_MOTION_PX};

/// Largest motion-search radius: the search costs (2r+1)² block comparisons per block.
pub const MAX_MOTION_PX: usize = 64;

#[derive(Debug, Clone, PartialEq, Args, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Stream {
    /// Use the previous frame (false: every frame is a cold run, no warm start, no temporal term). TOML: `enabled`
    /// is the deprecated spelling.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    #[serde(alias = "enabled")]
    pub temporal: bool,
    /// Deprecated spelling of `--temporal false`.
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub no_temporal: bool,
    /// A pixel changed when any of its blurred colour channels differs from the previous frame's by more than this
    /// (0–1).
    #[arg(long, default_value_t = ChangeParams::DEFAULT.threshold, value_name = "T")]
    pub change_threshold: f32,
    /// Radius of the box blur (applied twice) before comparing, in pixels of the result.
    #[arg(long, default_value_t = ChangeParams::DEFAULT.blur_px, value_name = "PX")]
    pub blur_px: usize,
    /// Changed regions grow by this many pixels.
    #[arg(long, default_value_t = ChangeParams::DEFAULT.dilate_px, value_name = "PX")]
    pub dilate_px: usize,
    /// Width (pixels) of the soft border between held and repainted parts.
    #[arg(long, default_value_t = ChangeParams::DEFAULT.feather_px, value_name = "PX")]
    pub feather_px: usize,
    /// Above this changed fraction a frame is a new scene (cold run).
    #[arg(long, default_value_t = ChangeParams::DEFAULT.scene_change, value_name = "F")]
    pub scene_change: f32,
    /// Evaluation budget of a frame started from the previous result. TOML: `max_evaluations` is the deprecated
    /// spelling.
    #[arg(long, default_value_t = DEFAULT_MAX_EVALUATIONS, value_name = "N")]
    #[serde(alias = "max_evaluations")]
    pub frame_evaluations: usize,
    /// Search radius (pixels) of the block-matching motion search that carries the previous result along with
    /// what moved (0: none; what moved is repainted from the content).
    #[arg(long, default_value_t = DEFAULT_MOTION_PX, value_name = "PX")]
    pub motion_px: usize,
}

impl Default for Stream {
    fn default() -> Self {
        super::clap_defaults()
    }
}

impl Stream {
    fn change(&self) -> ChangeParams {
        ChangeParams {
            threshold: self.change_threshold,
            blur_px: self.blur_px,
            dilate_px: self.dilate_px,
            feather_px: self.feather_px,
            scene_change: self.scene_change,
        }
    }

    pub fn validate(&self, door: &Door) -> Result<()> {
        let n = |k: &str| door.name(k);
        if let Err(e) = self.change().validate() {
            bail!(
                "{}/{}/{}/{}/{}: {e}",
                n("change_threshold"),
                n("scene_change"),
                n("blur_px"),
                n("dilate_px"),
                n("feather_px")
            );
        }
        if self.frame_evaluations == 0 {
            bail!("{} must be at least 1", n("frame_evaluations"));
        }
        if self.motion_px > MAX_MOTION_PX {
            bail!("{} must be at most {MAX_MOTION_PX} (pixels), got {}", n("motion_px"), self.motion_px);
        }
        Ok(())
    }

    /// The stream settings for a style whose temporal term has `temporal_weight` (checked with the transfer
    /// settings, `Transfer::validate`).
    pub fn settings(&self, temporal_weight: f32, door: &Door) -> Result<StreamSettings> {
        self.validate(door)?;
        Ok(StreamSettings {
            enabled: self.temporal && !self.no_temporal,
            change: self.change(),
            temporal_weight,
            max_evaluations: self.frame_evaluations,
            motion_px: self.motion_px,
        })
    }
}
