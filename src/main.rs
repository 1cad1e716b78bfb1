use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fuchun::commands::{doctor, stylize};
use fuchun::daemon;
use fuchun::lab::{bench, quality_bench as quality};

/// fuchun: neural style transfer (Gatys + long-range consistency + histogram loss) on ONNX Runtime.
#[derive(Parser)]
#[command(version, about, args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stylise one image.
    Stylize(Box<stylize::StylizeArgs>),
    /// Run the MQTT camera-frame daemon.
    Serve(daemon::ServeArgs),
    /// Kiosk: serve a page showing the latest stylised frame of a camera, refreshed as results arrive.
    View(daemon::view::ViewArgs),
    /// Check the installation: ONNX Runtime, providers, model files, broker, directories.
    Doctor(doctor::DoctorArgs),
    /// Measure evaluation speed, FLOP/s against the CPU's peak, memory and coarse-to-fine gains.
    Bench(Box<bench::BenchArgs>),
    /// Quality bench: stylise a fixed set of content/style pairs and measure palette, texture and structure.
    Quality(Box<quality::QualityArgs>),
}

fn main() -> ExitCode {
    fuchun::engine::runtime::tune_allocator();
    let cli = Cli::parse();
    // the daemon logs its progress; the one-shot commands only warnings (FUCHUN_LOG overrides both)
    let default_filter = match cli.command {
        Command::Serve(_) | Command::View(_) => "info,ort=error",
        _ => "warn,ort=error",
    };
    // ONNX Runtime logs every session's graph transformations at info: it stays at warnings unless FUCHUN_LOG
    // names it (e.g. FUCHUN_LOG=info,ort=info)
    let filter = match std::env::var("FUCHUN_LOG") {
        Ok(f) if f.contains("ort") => f,
        Ok(f) if !f.trim().is_empty() => format!("{f},ort=warn"),
        _ => default_filter.to_string(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| default_filter.into()))
        .with_writer(std::io::stderr)
        .init();
    let result = match &cli.command {
        Command::Stylize(a) => stylize::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Quality(a) => quality::run(a),
        Command::Serve(a) => daemon::run(a),
        Command::Doctor(a) => doctor::run(a),
        Command::View(a) => daemon::view::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<daemon::CannotStart>().is_some() {
                ExitCode::from(daemon::EXIT_CANNOT_START)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
