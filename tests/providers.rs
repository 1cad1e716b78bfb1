//! Execution-provider selection on a CPU-only machine: a provider whose session cannot be created falls back (with
//! a warning that says why) under `auto` and is an error when requested explicitly; the report says which provider
//! runs and how many nodes run outside it.

mod common;

use std::sync::{Arc, Mutex};

use fuchun::engine::runtime::{self, Candidate, Provider, RuntimeOptions};
use fuchun::engine::Model;

/// A candidate that registers fine but whose sessions cannot be created: ONNX Runtime is told the graphs are in
/// its ORT (flatbuffer) format, which they are not, so `CreateSession` fails for real.
fn broken_cpu() -> Candidate {
    Candidate { provider: Provider::Cpu, session_config: vec![("session.load_model_format".into(), "ORT".into())] }
}

/// Collects what `tracing` writes while `f` runs on this thread.
fn capture<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    (out, text)
}

#[test]
fn auto_falls_back_when_a_session_cannot_be_created() {
    let opts = RuntimeOptions { provider: Provider::Auto, ..Default::default() };
    let (model, log) =
        capture(|| Model::load_with(&common::test_model(), &opts, &[broken_cpu(), Candidate::new(Provider::Cpu)]));
    let mut model = model.expect("the second candidate loads the model");
    let report = model.provider_report().clone();
    assert_eq!(report.provider, Provider::Cpu);
    assert_eq!(report.requested, Provider::Auto);
    assert_eq!(report.fallbacks.len(), 1, "{report:?}");
    assert!(report.fallbacks[0].starts_with("cpu: creating the cpu session of"), "{report:?}");
    // the warning names the provider, the next one and the reason ONNX Runtime gave
    assert!(log.contains("WARN") && log.contains("falling back"), "{log}");
    assert!(log.contains("provider=cpu") && log.contains("next=cpu") && log.contains("features.onnx"), "{log}");
    assert!(report.summary().contains("fell back from: cpu:"), "{}", report.summary());
    // and the model works
    let image = vec![0.5f32; 3 * 32 * 40];
    let f = model.features(&image, 32, 40).unwrap();
    assert!(!f.is_empty());
}

#[test]
fn every_candidate_failing_is_an_error_listing_each_reason() {
    let opts = RuntimeOptions { provider: Provider::Auto, ..Default::default() };
    let err = Model::load_with(&common::test_model(), &opts, &[broken_cpu(), broken_cpu()]).err().unwrap();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("no execution provider can run the model") && msg.matches("cpu: creating").count() == 2,
        "{msg}"
    );
}

#[test]
fn an_explicitly_requested_provider_that_fails_is_an_error_not_a_fallback() {
    // fails at session creation
    let opts = RuntimeOptions { provider: Provider::Cpu, ..Default::default() };
    let err = Model::load_with(&common::test_model(), &opts, &[broken_cpu(), Candidate::new(Provider::Cpu)]).err();
    let msg = format!("{:#}", err.expect("no fallback for an explicit provider"));
    assert!(msg.contains("execution provider cpu was requested but is unavailable"), "{msg}");
    assert!(msg.contains("provider \"auto\""), "{msg}");
    // not available at all on this machine: not built in, or not in the CPU-only ONNX Runtime
    for p in [Provider::Cuda, Provider::TensorRt] {
        let opts = RuntimeOptions { provider: p, ..Default::default() };
        let msg = format!("{:#}", Model::load(&common::test_model(), &opts).err().unwrap());
        assert!(msg.contains(&format!("execution provider {p} was requested")), "{msg}");
        assert!(msg.contains("not available in this build") || msg.contains("not available in this library"), "{msg}");
    }
}

#[test]
fn auto_on_a_cpu_only_machine_runs_on_the_cpu_and_says_how_nodes_are_placed() {
    let opts = RuntimeOptions { provider: Provider::Auto, ..Default::default() };
    let (model, log) = capture(|| Model::load(&common::test_model(), &opts));
    let model = model.unwrap();
    let report = model.provider_report();
    assert_eq!(report.provider, Provider::Cpu);
    // TensorRT and CUDA are simply absent here (not built in, or not in the library): no warning for that
    assert_eq!(report.fallbacks.len(), 2, "{report:?}");
    assert!(!log.contains("falling back"), "{log}");
    // ONNX Runtime's verbose session log names the placement: everything on the CPU provider
    let nodes = report.nodes.as_ref().expect("ONNX Runtime reported the node placement");
    assert!(nodes.get("CPUExecutionProvider").copied().unwrap_or(0) > 10, "{nodes:?}");
    assert_eq!(report.nodes_outside(), Some(0));
    assert!(report.summary().starts_with("cpu (all "), "{}", report.summary());
    let json = report.to_json();
    assert_eq!(json["provider"], "cpu");
    assert_eq!(json["nodes_outside"], 0);
}

#[test]
fn warm_up_runs_every_graph_at_each_shape() {
    let opts = RuntimeOptions { provider: Provider::Cpu, ..Default::default() };
    let mut model = Model::load(&common::test_model(), &opts).unwrap();
    let mut seen = Vec::new();
    // the second shape is below the model's minimum size: skipped
    model.warm_up(&[[32, 48], [8, 8], [40, 40]], &mut |i, s| seen.push((i, s))).unwrap();
    assert_eq!(seen, vec![(0, [32, 48]), (2, [40, 40])]);
}

#[test]
fn tensorrt_profile_covers_the_sizes_from_the_minimum_up() {
    let manifest = fuchun::engine::Manifest::load(&common::test_model()).unwrap();
    let m = manifest.min_size;
    let mut opts = RuntimeOptions { sizes: vec![[72, 128], [144, 256], [200, 100]], ..Default::default() };
    // min: the model's minimum; max: a square of the longest side; opt: the largest size
    let p = fuchun::engine::model::tensorrt_profile(&manifest, &opts).unwrap().unwrap();
    assert_eq!(p, [[m, m], [144, 256], [256, 256]]);
    // no sizes, no explicit shapes: no explicit profile
    opts.sizes.clear();
    assert_eq!(fuchun::engine::model::tensorrt_profile(&manifest, &opts).unwrap(), None);
    // explicit shapes win; below the model's minimum is an error
    opts.tensorrt.profile.max = Some([300, 400]);
    let p = fuchun::engine::model::tensorrt_profile(&manifest, &opts).unwrap().unwrap();
    assert_eq!(p, [[m, m], [300, 400], [300, 400]]);
    opts.tensorrt.profile.min = Some([m - 1, m]);
    let err = fuchun::engine::model::tensorrt_profile(&manifest, &opts).unwrap_err().to_string();
    assert!(err.contains("below this model's minimum size"), "{err}");
}

#[test]
fn onnx_runtime_older_than_1_17_is_refused_clearly() {
    assert!(runtime::check_version("1.17.0").is_ok());
    assert!(runtime::check_version("1.32.0").is_ok());
    assert!(runtime::check_version("2.0.1").is_ok());
    let e = runtime::check_version("1.16.3").unwrap_err().to_string();
    assert!(e.contains("1.16.3 is too old") && e.contains("1.17 or newer"), "{e}");
    assert!(runtime::check_version("garbage").is_err());
}
