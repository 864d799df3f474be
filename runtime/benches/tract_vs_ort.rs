//! reflex with tract vs reflex with ONNX Runtime vs ONNX Runtime's Python API (vs PyTorch eager
//! when `torch` is installed) on the same ONNX files, same machine, same run.
//!
//! `cargo bench --workspace --bench tract_vs_ort` (needs python3 with onnxruntime, which
//! scripts/setup.sh installs, and the ONNX Runtime library reflex loads: the same package's, or
//! `REFLEX_ONNXRUNTIME_LIB`). Env `REFLEX_BENCH_RUNS` sets the timed runs per configuration
//! (default 30).
//!
//! For the reference ResNet-18 and ViT-S/16 policies (one camera, state, MLP chunk head), prints
//! the median latency of each at 1 and 2 threads, and the ratios to ONNX Runtime's Python API:
//! reflex's ORT session runs the same library on the same file with the same settings
//! (`ORT_ENABLE_ALL`, intra-op threads), so its ratio is the overhead of reflex's session
//! (IoBinding, one `RunWithBinding` per run) against Python's `InferenceSession.run`; the two
//! alternate for three rounds of RUNS runs each, and each keeps its best round's median. PyTorch
//! eager (what a LeRobot loop runs) is timed by `tests/python/torch_bench.py` when torch imports;
//! otherwise its column says why not.

use reflex_models::onnx::{EncoderKind, PolicyArch, SeededWeights};
use reflex_models::reference::{default_capture, demo_arch, write_reference_bundle};
use reflex_models::Bundle;
use reflex_runtime::infer::onnxruntime::{library, OrtOptions, OrtSession};
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
    let b = SinglePassPolicy::tract(bundle, TractOptions { threads }).expect("tract");
    policy_ms(b, bundle, runs)
}

fn reflex_ort_ms(bundle: &Bundle, threads: usize, runs: usize) -> Option<f64> {
    if let Err(e) = library() {
        eprintln!("reflex onnxruntime: {e}");
        return None;
    }
    let s = OrtSession::prepare(
        &bundle.policy_path,
        OrtOptions {
            threads,
            cache: None,
        },
    )
    .expect("onnxruntime");
    let b = SinglePassPolicy::new(s, &bundle.manifest, &bundle.policy_path).expect("policy");
    Some(policy_ms(b, bundle, runs))
}

fn policy_ms(mut b: impl Policy, bundle: &Bundle, runs: usize) -> f64 {
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

/// PyTorch eager on the same graph (converted from the ONNX file by `onnx2torch`), or `None`
/// with the reason printed once (torch or onnx2torch not installed).
fn torch_ms(model: &Path, threads: usize, runs: usize) -> Option<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/torch_bench.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(model)
        .arg(threads.to_string())
        .arg(runs.to_string())
        .output()
        .ok()?;
    if !out.status.success() {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            eprintln!(
                "PyTorch eager not measured: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        });
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .strip_prefix("median_ms=")?
        .parse()
        .ok()
}

/// Alternating rounds of ONNX Runtime's Python API and reflex's ONNX Runtime session.
const ROUNDS: usize = 3;

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
    println!(
        "reflex (tract, ONNX Runtime) vs ONNX Runtime's Python API, fp32, median of {runs} runs, \
         {cores} cores available"
    );
    if let Ok(lib) = library() {
        println!("reflex's ONNX Runtime: {lib}");
    }
    println!(
        "{:<16} {:>3} {:>9} {:>11} {:>9} {:>9} {:>10} {:>10} {:>10}",
        "model",
        "thr",
        "tract ms",
        "reflex-ORT",
        "ORT-py",
        "torch",
        "tract/py",
        "r-ORT/py",
        "torch/py"
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
            // Python and reflex's ORT alternate for ROUNDS rounds, so a change in machine load
            // hits both; each keeps its best round's median.
            let best = |v: Vec<Option<f64>>| v.into_iter().flatten().reduce(f64::min);
            let (mut os, mut rs) = (vec![], vec![]);
            for _ in 0..ROUNDS {
                os.push(ort_ms(&bundle.policy_path, threads, runs));
                rs.push(reflex_ort_ms(&bundle, threads, runs));
            }
            let (o, r) = (best(os), best(rs));
            let p = torch_ms(&bundle.policy_path, threads, runs);
            let ms = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "n/a".into());
            let ratio = |v: Option<f64>| match (v, o) {
                (Some(v), Some(o)) => format!("{:.3}", v / o),
                _ => "n/a".into(),
            };
            println!(
                "{:<16} {:>3} {:>9.2} {:>11} {:>9} {:>9} {:>10} {:>10} {:>10}",
                name,
                threads,
                t,
                ms(r),
                ms(o),
                ms(p),
                ratio(Some(t)),
                ratio(r),
                ratio(p)
            );
        }
    }
}
