//! `fuchun doctor`: check an installation — ONNX Runtime, execution providers, model files, the broker, and
//! the directories the daemon writes — and print a table. Exit status ≠ 0 when something required is missing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Result};
use clap::Args;

use crate::daemon::config::Config;
use crate::daemon::mqtt::{self, Event, Outgoing};
use crate::engine::default_model_dir;
use crate::engine::{runtime, Manifest, Model, Provider, RuntimeOptions};

#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// Daemon configuration to check (broker, model, directories). Without it: defaults.
    #[arg(long, short = 'c', env = "FUCHUN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Model directory (overrides the configuration).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// libonnxruntime.so (overrides the configuration).
    #[arg(long)]
    pub ort_library: Option<PathBuf>,
    /// Skip the broker check.
    #[arg(long)]
    pub no_broker: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Warn,
    Fail,
}

struct Check {
    name: String,
    status: Status,
    detail: String,
}

fn check(name: &str, r: Result<String>, required: bool) -> Check {
    match r {
        Ok(d) => Check { name: name.into(), status: Status::Ok, detail: d },
        Err(e) => Check {
            name: name.into(),
            status: if required { Status::Fail } else { Status::Warn },
            detail: format!("{e:#}"),
        },
    }
}

fn writable(dir: &Path) -> Result<String> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow!("cannot create {}: {e}", dir.display()))?;
    let probe = dir.join(format!(".fuchun-doctor-{}", std::process::id()));
    std::fs::write(&probe, b"ok").map_err(|e| anyhow!("{} is not writable: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(format!("{} writable", dir.display()))
}

fn broker(cfg: &Config) -> Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let id = format!("{}-doctor-{}", cfg.mqtt.client_id, std::process::id());
        let topic = format!("{}/doctor/{}", cfg.mqtt.prefix, std::process::id());
        let (client, mut events) = mqtt::connect(&cfg.mqtt, &id, &format!("{topic}/will"), 1 << 20)?;
        let run = async {
            loop {
                match events.poll().await {
                    Ok(Event::Connected { .. }) => {
                        client.subscribe(&topic, 1).await?;
                        client.publish(Outgoing::new(topic.clone(), "probe"), 1).await?;
                    }
                    Ok(Event::Message(m)) if m.topic == topic => return Ok::<_, anyhow::Error>(()),
                    Ok(_) => {}
                    Err(e) => return Err(anyhow!("{e}")),
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(5), run).await {
            Ok(Ok(())) => {
                let _ = client.disconnect().await;
                Ok(format!(
                    "{}:{} connect, subscribe, publish, receive: ok ({:?})",
                    cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.protocol
                ))
            }
            Ok(Err(e)) => {
                Err(anyhow!("{}:{}: {e}: is the broker running and reachable?", cfg.mqtt.host, cfg.mqtt.port))
            }
            Err(_) => Err(anyhow!("{}:{}: no round trip within 5 s", cfg.mqtt.host, cfg.mqtt.port)),
        }
    })
}

pub fn run(args: &DoctorArgs) -> Result<()> {
    let cfg = match &args.config {
        Some(p) => Some(Config::load(p)?),
        None => None,
    };
    let mut checks = Vec::new();
    let (lib, ort_ok) = onnx_runtime(args, cfg.as_ref(), &mut checks);
    // model, and a real session of it on every provider
    let model_dir = args
        .model
        .clone()
        .or_else(|| cfg.as_ref().and_then(|c| c.model.model.as_ref().map(|p| c.resolve(p))))
        .map(Ok)
        .unwrap_or_else(|| default_model_dir("vgg16-max"));
    let mut base = match &cfg {
        // the profile the daemon uses, so that the engines built here are the ones it finds in the cache
        Some(c) => c.serve_runtime()?.0,
        None => RuntimeOptions::default(),
    };
    base.library = lib.as_ref().ok().cloned();
    // one real run per provider (a TensorRT engine without a profile is only built at the first run): the
    // daemon's smallest frame, or 128 px at 16:9
    let probe_shape = cfg.as_ref().and_then(|c| c.expected_shapes().0.first().copied()).unwrap_or([72, 128]);
    match model_dir {
        Ok(dir) => match Manifest::load(&dir) {
            Ok(_) if ort_ok => providers(&dir, &base, probe_shape, &mut checks),
            Ok(m) => checks.push(check(
                "model",
                Ok(format!("{} (manifest valid; graphs not loaded without ONNX Runtime)", m.dir.display())),
                true,
            )),
            Err(e) => checks.push(check("model", Err(e), true)),
        },
        Err(e) => checks.push(check("model", Err(e), true)),
    }
    configuration(args, &cfg.unwrap_or_default(), &mut checks);
    report(&checks)
}

/// The ONNX Runtime library (given, configured or found) and its version: the library, and whether it loaded.
fn onnx_runtime(args: &DoctorArgs, cfg: Option<&Config>, checks: &mut Vec<Check>) -> (Result<PathBuf>, bool) {
    let library =
        args.ort_library.clone().or_else(|| cfg.and_then(|c| c.model.ort_library.as_ref().map(|p| c.resolve(p))));
    let lib = library.clone().map(Ok).unwrap_or_else(runtime::discover_library);
    let ort_ok = match &lib {
        Ok(p) => {
            let r = runtime::init(Some(p)).map(|_| {
                format!(
                    "{} (version {}, at least {}.{} needed: ok)",
                    p.display(),
                    runtime::version(),
                    runtime::MIN_VERSION.0,
                    runtime::MIN_VERSION.1
                )
            });
            let ok = r.is_ok();
            checks.push(check("ONNX Runtime", r, true));
            ok
        }
        Err(e) => {
            checks.push(check("ONNX Runtime", Err(anyhow!("{e:#}")), true));
            false
        }
    };
    (lib, ort_ok)
}

/// A real session of every graph on each provider, run once at `probe_shape`; which one `auto` takes.
fn providers(dir: &Path, base: &RuntimeOptions, probe_shape: [usize; 2], checks: &mut Vec<Check>) {
    let configured = base.provider;
    let mut chosen = None;
    let mut model_line = None;
    for p in [Provider::Cpu, Provider::Cuda, Provider::TensorRt] {
        let required = p == Provider::Cpu || p == configured;
        let name = format!("provider {}", provider_label(p));
        if let Some(why) = runtime::unavailable_reason(p) {
            checks.push(check(&name, Err(anyhow!("{why}")), required));
            continue;
        }
        let opts = RuntimeOptions { provider: p, ..base.clone() };
        let t = std::time::Instant::now();
        let r = Model::load(dir, &opts);
        let secs = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let r = r.and_then(|mut model| {
            let shape = [probe_shape[0].max(model.manifest.min_size), probe_shape[1].max(model.manifest.min_size)];
            model.warm_up(&[shape], &mut |_, _| {})?;
            Ok((model, shape))
        });
        let run_secs = t.elapsed().as_secs_f64();
        if p == Provider::Cpu {
            model_line = Some(match &r {
                Ok((model, _)) => Ok(format!(
                    "{} ({} {}, {} weights, graphs match the manifest, min size {}; {})",
                    dir.display(),
                    model.manifest.architecture,
                    model.manifest.pooling,
                    model.manifest.weights.kind,
                    model.manifest.min_size,
                    match &model.manifest.refine {
                        Some(r) => format!("the finest scale refines with the layers down to {}", r.deepest_layer),
                        None => "no refinement: every scale runs the whole objective".to_string(),
                    }
                )),
                Err(e) => Err(anyhow!("{e:#}")),
            });
        }
        let r = r.map(|(model, shape)| {
            chosen = Some(p);
            format!(
                "sessions of every graph created in {secs:.1} s and run at {}x{} in {run_secs:.1} s: {}",
                shape[1],
                shape[0],
                model.provider_report().summary()
            )
        });
        checks.push(check(&name, r, required));
    }
    checks.push(check("model", model_line.unwrap_or_else(|| Err(anyhow!("not loaded"))), true));
    if configured == Provider::Auto {
        // auto takes TensorRT, CUDA, CPU: the last one that worked above in the order CPU, CUDA, TensorRT
        let r = chosen.map(|p| format!("auto runs on {p}")).ok_or_else(|| anyhow!("no provider can run the model"));
        checks.push(check("provider auto", r, true));
    }
}

/// With a configuration: the broker, the directories the daemon writes, the style images.
fn configuration(args: &DoctorArgs, c: &Config, checks: &mut Vec<Check>) {
    if !args.no_broker {
        checks.push(check("broker", broker(c), true));
    }
    if let Some(d) = &c.daemon.cache_dir {
        checks.push(check("cache directory", writable(&c.resolve(d)), true));
    }
    if let Some(d) = &c.model.tensorrt_cache {
        checks.push(check("TensorRT cache", writable(&c.resolve(d)), true));
    }
    if let Ok(state) = std::env::var("STATE_DIRECTORY") {
        checks.push(check("state directory", writable(Path::new(&state)), true));
    }
    for (name, s) in &c.styles {
        let missing: Vec<String> =
            s.images.iter().map(|p| c.resolve(p)).filter(|p| !p.is_file()).map(|p| p.display().to_string()).collect();
        let r = if missing.is_empty() {
            Ok(format!("{} image(s)", s.images.len()))
        } else {
            Err(anyhow!("missing {}", missing.join(", ")))
        };
        checks.push(check(&format!("style {name}"), r, true));
    }
}

/// Print the checks as a table; an error naming the failed required ones.
fn report(checks: &[Check]) -> Result<()> {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(10);
    println!("{:width$}  {:6}  detail", "check", "status");
    for ch in checks {
        let s = match ch.status {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        println!("{:width$}  {s:6}  {}", ch.name, ch.detail);
    }
    let failed: Vec<&str> = checks.iter().filter(|c| c.status == Status::Fail).map(|c| c.name.as_str()).collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("{} required check(s) failed: {}", failed.len(), failed.join(", ")))
    }
}

fn provider_label(p: Provider) -> &'static str {
    match p {
        Provider::Cpu => "CPU",
        Provider::Cuda => "CUDA",
        Provider::TensorRt => "TensorRT",
        Provider::Auto => "auto",
    }
}
