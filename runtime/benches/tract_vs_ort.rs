//! tract vs ONNX Runtime on the same ONNX files, same machine, same run.
//!
//! `cargo bench -p reflex-runtime --bench tract_vs_ort` (needs python3 with onnxruntime, which
//! scripts/setup.sh installs). Env `REFLEX_BENCH_RUNS` sets the timed runs per configuration
//! (default 30).
//!
//! For the reference ResNet-18 and ViT-S/16 policies (one camera, state, MLP chunk head), prints
//! the median latency of tract through reflex's own backend (the settings the runtime uses) and of
//! ONNX Runtime (CPUExecutionProvider, all graph optimizations) at 1 and 2 threads, and the ratio
//! tract/ORT. ORT is close to this class of CPU's peak FMA rate, so it is the floor to reach.

use reflex_models::onnx::{EncoderKind, PolicyArch, SeededWeights};
use reflex_models::reference::{default_capture, demo_arch, write_reference_bundle};
use reflex_models::Bundle;
use reflex_runtime::infer::policy::{Policy, SinglePassPolicy};
use reflex_runtime::infer::tract::TractOptions;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn tract_ms(bundle: &Bundle, threads: usize, runs: usize) -> f64 {
    let mut b = SinglePassPolicy::tract(bundle, TractOptions { threads }).expect("tract");
    for i in 0..bundle.manifest.cameras.len() {
        for (k, v) in b.camera_input(i).iter_mut().enumerate() {
            *v = ((k % 251) as f32 / 251.0) - 0.5;
        }
    }
    for _ in 0..3 {
        b.run().expect("run");
    }
    let times = (0..runs)
        .map(|_| {
            let t = Instant::now();
            b.run().expect("run");
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    median(times)
}

fn ort_ms(model: &Path, threads: usize, runs: usize) -> Option<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/ort_bench.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(model)
        .arg(threads.to_string())
        .arg(runs.to_string())
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "onnxruntime failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .strip_prefix("median_ms=")?
        .parse()
        .ok()
}

fn main() {
    // `cargo test` runs bench binaries without `--bench`: a short smoke run then.
    let full = std::env::args().any(|a| a == "--bench");
    let runs: usize = std::env::var("REFLEX_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 30 } else { 2 });
    let dir = std::env::temp_dir().join("reflex-bench-models");
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("tract vs ONNX Runtime, fp32, median of {runs} runs, {cores} cores available");
    println!(
        "{:<22} {:>7} {:>10} {:>10} {:>10}",
        "model", "threads", "tract ms", "ORT ms", "tract/ORT"
    );
    for (name, encoder) in [
        ("resnet18-chunk", EncoderKind::Resnet18),
        ("vit-s16-chunk", EncoderKind::VitS16),
    ] {
        // The demo's architecture with each encoder.
        let arch = PolicyArch {
            encoder,
            ..demo_arch()
        };
        let bdir = dir.join(name);
        if Bundle::load(&bdir).is_err() {
            write_reference_bundle(
                &bdir,
                &arch,
                &mut SeededWeights::new(0),
                name,
                default_capture(),
            )
            .expect("bundle");
        }
        let bundle = Bundle::load(&bdir).expect("bundle");
        for threads in [1, 2].into_iter().filter(|t| *t <= cores.max(1)) {
            let t = tract_ms(&bundle, threads, runs);
            let o = ort_ms(&bundle.policy_path, threads, runs);
            println!(
                "{:<22} {:>7} {:>10.2} {:>10} {:>10}",
                name,
                threads,
                t,
                o.map(|o| format!("{o:.2}")).unwrap_or_else(|| "n/a".into()),
                o.map(|o| format!("{:.2}", t / o))
                    .unwrap_or_else(|| "n/a".into())
            );
        }
    }
}
