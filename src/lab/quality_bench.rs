//! `fuchun quality`: the quality bench — every pair of `lab::pairs` stylised at each size with the transfer
//! settings given (the CLI's defaults, or the daemon's per-style defaults with `--profile daemon`), measured by
//! `lab::quality` (palette, texture, structure, layout), with a contact sheet per size and one JSON of every figure.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::imageio::{self, Limits, Planar};
use crate::lab::pairs::{Pair, PAIRS};
use crate::lab::quality::{colour_transfer, measure, Measures};
use crate::settings::transfer::{CAMERA, SINGLE_IMAGE};
use crate::settings::Runtime;
use crate::settings::{Door, Transfer};
use crate::transfer::{stylize, EvalRecord, Hooks};

/// Targets of the quality bench (docs/quality.md): the painting's palette and texture, and enough of the scene's
/// structure to recognise it (0.6: the lowest of the bench pairs in which the scene is recognisable by eye at 256 px,
/// Chelsea + Starry Night, 0.65).
pub const PALETTE_TARGET: f64 = 1.5;
pub const TEXTURE_TARGET: f64 = 0.2;
pub const STRUCTURE_TARGET: f64 = 0.6;

#[derive(Debug, Clone, Args)]
pub struct QualityArgs {
    #[command(flatten)]
    pub model: Runtime,
    #[command(flatten)]
    pub opts: Transfer,
    /// Output sizes (longest side) to run every pair at (replaces --image-size).
    #[arg(long, value_delimiter = ',', default_values_t = [256usize, 512])]
    pub sizes: Vec<usize>,
    /// Only the pairs whose name contains one of these (comma-separated); default: all.
    #[arg(long, value_delimiter = ',')]
    pub pairs: Vec<String>,
    /// cli: the transfer settings as given (the CLI's defaults); daemon: the daemon's per-style defaults
    /// (iterations per scale of a configured style), other settings as given.
    #[arg(long, default_value = "cli", value_parser = ["cli", "daemon"])]
    pub profile: String,
    /// Also measure the image after every N iterations of the last scale (quality against evaluations; 0: off).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub every: usize,
    /// Measure the results already in this directory (PAIR_SIZE.png, as the bench writes them) instead of
    /// stylising: for comparing settings run apart, or measures changed since.
    #[arg(long, value_name = "DIR")]
    pub measure: Option<PathBuf>,
    /// Directory for the results, contact sheets and quality.json.
    #[arg(long, short = 'o', default_value = "out/quality")]
    pub out: PathBuf,
}

/// A snapshot of the last scale: the measures after some evaluations.
#[derive(Debug, Clone, serde::Serialize)]
struct Snapshot {
    evaluations: usize,
    seconds: f64,
    loss: f64,
    measures: Measures,
}

#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    pair: String,
    size: usize,
    width: usize,
    height: usize,
    evaluations: usize,
    seconds: f64,
    loss: f64,
    result: Measures,
    /// The same measures of the references: the content itself, the style (reshaped to the result's frame), and
    /// the content carried into the style's colours by a colour map (a plain colour transfer; `--palette style`'s
    /// starting point).
    content: Measures,
    style: Measures,
    colour_transfer: Measures,
    meets: bool,
    snapshots: Vec<Snapshot>,
    /// Each scale's share of the run (the schedule's cost, coarse to fine); empty with `--measure`.
    scales: Vec<ScaleCost>,
}

/// One scale of a run: its size, evaluations and seconds.
#[derive(Debug, Clone, serde::Serialize)]
struct ScaleCost {
    width: usize,
    height: usize,
    evaluations: usize,
    seconds: f64,
    /// Ran the model's refinement (`StylizeOptions::refine`).
    refined: bool,
}

/// Collects the last scale's snapshots.
struct Probe<'a> {
    every: usize,
    last_scale: usize,
    content: &'a Planar,
    style: &'a Planar,
    t0: Instant,
    evaluations: usize,
    loss: f64,
    snapshots: Vec<Snapshot>,
}

impl Hooks for Probe<'_> {
    fn evaluation(&mut self, r: &EvalRecord) {
        self.evaluations += 1;
        self.loss = r.losses.total;
    }
    fn wants_image(&self, scale: usize, iteration: usize) -> bool {
        self.every > 0 && scale == self.last_scale && iteration > 0 && iteration.is_multiple_of(self.every)
    }
    fn iteration(&mut self, _scale: usize, _iteration: usize, image: &Planar) -> Result<()> {
        let mut img = image.clone();
        img.data.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
        self.snapshots.push(Snapshot {
            evaluations: self.evaluations,
            seconds: self.t0.elapsed().as_secs_f64(),
            loss: self.loss,
            measures: measure(&img, self.content, self.style),
        });
        Ok(())
    }
}

fn meets(m: &Measures) -> bool {
    m.palette <= PALETTE_TARGET && m.texture <= TEXTURE_TARGET && m.structure >= STRUCTURE_TARGET
}

fn selected(args: &QualityArgs) -> Vec<Pair> {
    PAIRS
        .iter()
        .filter(|p| args.pairs.is_empty() || args.pairs.iter().any(|f| p.name.contains(f.as_str())))
        .copied()
        .collect()
}

fn load(path: &str, limits: &Limits) -> Result<Planar> {
    let p = crate::engine::runtime::search_roots()
        .iter()
        .map(|r| r.join(path))
        .find(|p| p.is_file())
        .with_context(|| format!("bench image {path} not found (run from the project's directory)"))?;
    imageio::load_path(&p, limits).with_context(|| format!("loading {}", p.display()))
}

pub fn run(args: &QualityArgs) -> Result<()> {
    let pairs = selected(args);
    if pairs.is_empty() {
        bail!("--pairs {:?} matches none of {:?}", args.pairs, PAIRS.iter().map(|p| p.name).collect::<Vec<_>>());
    }
    if args.sizes.is_empty() || args.sizes.iter().any(|&s| s < 64) {
        bail!("--sizes must name sizes of at least 64 px, got {:?}", args.sizes);
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let limits = Limits::default();
    let mut model = args.model.load(&[])?;
    let mut rows = Vec::new();
    println!(
        "{:<20} {:>5} {:>6} {:>7} | {:>7} {:>7} {:>9} {:>6} {:>6} | photo: {:>5} {:>6} | colour transfer: {:>5} {:>5} \
         {:>5}",
        "pair",
        "size",
        "evals",
        "time s",
        "palette",
        "texture",
        "structure",
        "layout",
        "border",
        "pal",
        "border",
        "pal",
        "tex",
        "str"
    );
    for &size in &args.sizes {
        let mut sheet = Vec::new();
        for p in &pairs {
            let content = load(p.content, &limits)?;
            let style = load(p.style, &limits)?;
            let profile = if args.profile == "daemon" { &CAMERA } else { &SINGLE_IMAGE };
            let opts = args.opts.options_at(&model.manifest, profile, size, &limits, &Door::Cli)?;
            let last_scale = opts.resolved_scales()?.len() - 1;
            let content_s = content.fit_longest(size);
            let mut probe = Probe {
                every: args.every,
                last_scale,
                content: &content_s,
                style: &style,
                t0: Instant::now(),
                evaluations: 0,
                loss: f64::NAN,
                snapshots: Vec::new(),
            };
            let t0 = Instant::now();
            let (img, evaluations, loss, scales) = match &args.measure {
                Some(dir) => {
                    let path = dir.join(format!("{}_{size}.png", p.name));
                    let img =
                        imageio::load_path(&path, &limits).with_context(|| format!("--measure: {}", path.display()))?;
                    (img, 0, f64::NAN, Vec::new())
                }
                None => {
                    let outcome = stylize(&mut model, &content, std::slice::from_ref(&style), &opts, &mut probe)
                        .with_context(|| format!("pair {}", p.name))?;
                    let (loss, evaluations) = (outcome.final_losses().total, outcome.evaluations());
                    let scales = outcome
                        .scales
                        .iter()
                        .map(|s| ScaleCost {
                            width: s.width,
                            height: s.height,
                            evaluations: s.evaluations,
                            seconds: s.seconds,
                            refined: s.refined,
                        })
                        .collect();
                    (outcome.image, evaluations, loss, scales)
                }
            };
            let seconds = t0.elapsed().as_secs_f64();
            let result = measure(&img, &content_s, &style);
            let row = Row {
                pair: p.name.to_string(),
                size,
                width: img.width,
                height: img.height,
                evaluations,
                seconds,
                loss,
                result,
                content: measure(&content_s, &content_s, &style),
                style: measure(&style.resize(img.width, img.height), &content_s, &style),
                colour_transfer: measure(&colour_transfer(&content_s, &style), &content_s, &style),
                meets: meets(&result),
                snapshots: probe.snapshots,
                scales,
            };
            println!(
                "{:<20} {:>5} {:>6} {:>7.1} | {:>7.2} {:>7.3} {:>9.3} {:>6.3} {:>6.1} | photo: {:>5.2} {:>6.1} | colour \
                 transfer: {:>5.2} {:>5.2} {:>5.2}{}",
                row.pair,
                size,
                row.evaluations,
                seconds,
                result.palette,
                result.texture,
                result.structure,
                result.layout,
                result.border,
                row.content.palette,
                row.content.border,
                row.colour_transfer.palette,
                row.colour_transfer.texture,
                row.colour_transfer.structure,
                if row.meets { "" } else { "  (misses)" }
            );
            if !row.scales.is_empty() {
                let per: Vec<String> = row
                    .scales
                    .iter()
                    .map(|s| {
                        let how = if s.refined { " (refine)" } else { "" };
                        format!("{}x{}{how}: {} in {:.1} s", s.width, s.height, s.evaluations, s.seconds)
                    })
                    .collect();
                println!("{:<20} scales: {}", "", per.join(", "));
            }
            let path = args.out.join(format!("{}_{size}.png", p.name));
            imageio::save_path(&img, &path).with_context(|| format!("saving {}", path.display()))?;
            sheet.push([content_s, style.fit_longest(size), img]);
            rows.push(row);
            write_json(&args.out.join("quality.json"), args, &rows)?;
        }
        let path = args.out.join(format!("contact_{size}.jpg"));
        imageio::save_path(&contact_sheet(&sheet, 192), &path).with_context(|| format!("saving {}", path.display()))?;
    }
    summary(&rows);
    println!("wrote {}", args.out.display());
    Ok(())
}

fn write_json(path: &Path, args: &QualityArgs, rows: &[Row]) -> Result<()> {
    let v = serde_json::json!({
        "profile": args.profile,
        "settings": format!("{:?}", args.opts),
        "targets": {"palette_max": PALETTE_TARGET, "texture_max": TEXTURE_TARGET, "structure_min": STRUCTURE_TARGET},
        "rows": rows,
    });
    std::fs::write(path, serde_json::to_string_pretty(&v)?).with_context(|| format!("writing {}", path.display()))
}

fn summary(rows: &[Row]) {
    let n = rows.len().max(1) as f64;
    let mean = |f: &dyn Fn(&Row) -> f64| rows.iter().map(f).sum::<f64>() / n;
    let worst = |f: &dyn Fn(&Row) -> f64, max: bool| {
        rows.iter().map(f).fold(if max { f64::MIN } else { f64::MAX }, |a, b| if max { a.max(b) } else { a.min(b) })
    };
    println!(
        "mean: palette {:.2} (worst {:.2}), texture {:.3} (worst {:.3}), structure {:.3} (worst {:.3}), layout {:.3}, border \
         {:.1} (worst {:.1}); {} of {} meet every target; {:.0} evaluations, {:.1} s per image",
        mean(&|r| r.result.palette),
        worst(&|r| r.result.palette, true),
        mean(&|r| r.result.texture),
        worst(&|r| r.result.texture, true),
        mean(&|r| r.result.structure),
        worst(&|r| r.result.structure, false),
        mean(&|r| r.result.layout),
        mean(&|r| r.result.border),
        worst(&|r| r.result.border, true),
        rows.iter().filter(|r| r.meets).count(),
        rows.len(),
        mean(&|r| r.evaluations as f64),
        mean(&|r| r.seconds),
    );
}

/// Rows of content | style | result, each scaled to `height` px, on white.
fn contact_sheet(rows: &[[Planar; 3]], height: usize) -> Planar {
    let gap = 4;
    let scaled: Vec<Vec<Planar>> = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|p| p.resize(((p.width * height) as f64 / p.height as f64).round().max(1.0) as usize, height))
                .collect()
        })
        .collect();
    let width = scaled.iter().map(|r| r.iter().map(|p| p.width + gap).sum::<usize>() + gap).max().unwrap_or(1);
    let total_h = rows.len() * (height + gap) + gap;
    let mut out = Planar::new(width, total_h);
    out.data.iter_mut().for_each(|v| *v = 1.0);
    let n = width * total_h;
    for (i, r) in scaled.iter().enumerate() {
        let y0 = gap + i * (height + gap);
        let mut x0 = gap;
        for p in r {
            let m = p.width * p.height;
            for y in 0..p.height {
                for x in 0..p.width {
                    for c in 0..3 {
                        out.data[c * n + (y0 + y) * width + x0 + x] = p.data[c * m + y * p.width + x].clamp(0.0, 1.0);
                    }
                }
            }
            x0 += p.width + gap;
        }
    }
    out
}
