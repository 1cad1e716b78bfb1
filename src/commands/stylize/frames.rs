//! `fuchun stylize --content 'frames/*.jpg' --output out/`: a recorded clip, frame by frame, with the same
//! per-frame logic as the daemon's cameras (`transfer::temporal`): unchanged and partly changed frames start from
//! the previous result and are held to it where the scene did not change; new scenes are cold runs.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::args::StylizeArgs;
use crate::imageio::{self, fit_size, Limits, Planar};
use crate::transfer::temporal::TEMPORAL_TERM;
use crate::transfer::temporal::{self, Previous};
use crate::transfer::{CachedTargets, NoHooks, StyleImages};

/// `*` (any run of characters) and `?` (one character) against a whole file name.
fn wildcard(pattern: &[char], name: &[char]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some(('*', rest)) => (0..=name.len()).any(|i| wildcard(rest, &name[i..])),
        Some(('?', rest)) => !name.is_empty() && wildcard(rest, &name[1..]),
        Some((c, rest)) => name.first() == Some(c) && wildcard(rest, &name[1..]),
    }
}

/// The frames of a sequence, in file-name order: the image files of a directory, or the files matching a pattern
/// in its file name (`dir/*.jpg`).
pub fn frame_files(content: &Path) -> Result<Vec<PathBuf>> {
    let (dir, pattern): (PathBuf, Vec<char>) = if content.is_dir() {
        (content.to_path_buf(), "*".chars().collect())
    } else {
        let dir = content.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if dir.to_str().is_some_and(|d| d.contains(['*', '?'])) {
            bail!("--content {}: only the file name may hold * or ?", content.display());
        }
        (dir.to_path_buf(), content.file_name().and_then(|n| n.to_str()).unwrap_or("").chars().collect())
    };
    let image_ext = |p: &Path| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| ["jpg", "jpeg", "png", "webp"].contains(&e.to_ascii_lowercase().as_str()))
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading the directory {}", dir.display()))? {
        let path = entry?.path();
        let name: Vec<char> = path.file_name().and_then(|n| n.to_str()).unwrap_or("").chars().collect();
        if path.is_file() && image_ext(&path) && wildcard(&pattern, &name) {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        bail!("--content {}: no JPEG, PNG or WebP frames there", content.display());
    }
    Ok(files)
}

/// One frame's record (also a line of `frames.jsonl` in the output directory).
#[derive(Debug, Clone, serde::Serialize)]
pub struct FrameRecord {
    pub file: String,
    pub output: String,
    pub start: &'static str,
    pub changed_fraction: Option<f64>,
    /// The camera panned: [dx, dy] pixels (the previous frame moved by it is what this one started from).
    pub pan: Option<[isize; 2]>,
    /// Fraction of the pixels showing the still background again (what a moving object has left).
    pub uncovered: Option<f64>,
    /// Mean |Δ| (0–255) there between the result and the background's last result before the object came.
    pub trail: Option<f64>,
    /// Fraction of the pixels still being painted (new, or painted for fewer than 4 frames: held only partly).
    pub young: Option<f64>,
    pub evaluations: usize,
    pub loss: f64,
    pub temporal_loss: f64,
    pub seconds: f64,
}

pub fn run(args: &StylizeArgs) -> Result<()> {
    let t0 = Instant::now();
    if args.output.extension().is_some_and(|e| imageio::OutputFormat::from_path(&args.output).is_ok() || e == "jpeg") {
        bail!(
            "--output {} looks like an image file; for a frame sequence (--content {}) give a directory",
            args.output.display(),
            args.content.display()
        );
    }
    args.opts.validate_stream(&crate::settings::Door::Cli)?;
    let files = frame_files(&args.content)?;
    let limits = Limits::default();
    let first = imageio::load_path(&files[0], &limits).with_context(|| format!("frame {}", files[0].display()))?;
    let (styles, mut model) = super::args::load_styles_and_model(args, (first.width, first.height))?;
    drop(first);
    let base = args.options(&model.manifest, &limits)?;
    let settings = args.stream_settings()?;
    std::fs::create_dir_all(&args.output).with_context(|| format!("creating {}", args.output.display()))?;
    let log_path = args.output.join("frames.jsonl");
    let mut log = std::io::BufWriter::new(
        std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?,
    );
    let bar = (!args.quiet && std::io::stderr().is_terminal()).then(|| progress_bar(files.len()));
    let mut source = CachedTargets::new(StyleImages {
        images: &styles,
        blend: base.style_blend.clone(),
        style_scale: base.style_scale,
    });
    let mut prev: Option<Previous> = None;
    let mut records = Vec::new();
    for file in &files {
        let t = Instant::now();
        let content = imageio::load_path(file, &limits).with_context(|| format!("frame {}", file.display()))?;
        let (w, h) = fit_size(content.width, content.height, base.image_size);
        let content_s: Planar = content.resize(w, h);
        // frames of another size than the previous one start cold (the key holds the size)
        let key = format!("{w}x{h}");
        let (outcome, plan, kept) = temporal::stylize_frame(
            &mut model,
            prev.as_ref(),
            &key,
            &content_s,
            &settings,
            &base,
            &mut source,
            &mut NoHooks,
        )
        .with_context(|| format!("frame {}", file.display()))?;
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("frame");
        let out = args.output.join(format!("{stem}.png"));
        imageio::save_path(&outcome.image, &out).with_context(|| format!("saving {}", out.display()))?;
        let l = outcome.final_losses();
        let rec = FrameRecord {
            file: file.display().to_string(),
            output: out.display().to_string(),
            start: plan.start.as_str(),
            changed_fraction: plan.changed_fraction,
            pan: plan.pan.map(|(dx, dy)| [dx, dy]),
            uncovered: plan.uncovered,
            trail: plan.trail.map(|t| 255.0 * t),
            young: plan.young,
            evaluations: outcome.evaluations(),
            loss: l.total,
            temporal_loss: l.term(TEMPORAL_TERM),
            seconds: t.elapsed().as_secs_f64(),
        };
        writeln!(log, "{}", serde_json::to_string(&rec)?).context("writing frames.jsonl")?;
        if let Some(b) = &bar {
            b.inc(1);
            b.set_message(format!("{} ({} evaluations)", rec.start, rec.evaluations));
        }
        prev = Some(kept);
        records.push(rec);
    }
    log.flush().context("writing frames.jsonl")?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    println!(
        "wrote {} frames to {} in {:.1} s (provider {}): {}; per-frame log {}",
        records.len(),
        args.output.display(),
        t0.elapsed().as_secs_f64(),
        model.provider,
        summary(&records),
        log_path.display()
    );
    Ok(())
}

/// How many frames started cold, partly changed and unchanged, and their mean evaluations.
fn summary(records: &[FrameRecord]) -> String {
    let count = |s: &str| records.iter().filter(|r| r.start == s).count();
    let evals = |s: &str| {
        let v: Vec<usize> = records.iter().filter(|r| r.start == s).map(|r| r.evaluations).collect();
        if v.is_empty() {
            "-".to_string()
        } else {
            format!("{:.1}", v.iter().sum::<usize>() as f64 / v.len() as f64)
        }
    };
    format!(
        "{} cold (mean {} evaluations), {} partly changed (mean {}), {} unchanged (mean {})",
        count("cold"),
        evals("cold"),
        count("partial"),
        evals("partial"),
        count("previous"),
        evals("previous")
    )
}

/// The progress bar over the frames (shown on a terminal only).
fn progress_bar(frames: usize) -> ProgressBar {
    let b = ProgressBar::new(frames as u64);
    b.set_style(
        ProgressStyle::with_template("frames [{bar:30}] {pos}/{len} {elapsed} eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b
}

#[cfg(test)]
mod tests {
    use super::wildcard;

    #[test]
    fn wildcards() {
        let m = |p: &str, n: &str| wildcard(&p.chars().collect::<Vec<_>>(), &n.chars().collect::<Vec<_>>());
        assert!(m("*.jpg", "frame_001.jpg") && m("frame_??1.jpg", "frame_001.jpg") && m("*", "x"));
        assert!(!m("*.jpg", "frame.png") && !m("f?.jpg", "f.jpg") && !m("a*b", "ab.c"));
    }
}
