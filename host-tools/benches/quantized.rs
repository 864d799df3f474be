//! fp16 and int8 (QDQ) against fp32, in tract and in ONNX Runtime, same machine, same run.
//!
//! `cargo bench -p reflex-tools --bench quantized` (needs python3 with onnxruntime). For the
//! reference ResNet-18 and ViT-S/16 chunk policies: exports the fp32 bundle, quantizes it with
//! `reflex-tools quantize` (entropy calibration on a synthetic episode), and prints the median
//! latency of each form in tract (reflex's backend, 2 threads) and ONNX Runtime (2 threads), with
//! the ratio to fp32. Only the QDQ int8 form exists so far (the operator form with QLinearConv /
//! QLinearMatMul for tract's int8 kernels is not written yet). Under `cargo test` (no `--bench`)
//! it runs as a short smoke check.

use reflex_models::Bundle;
use reflex_runtime::backend::{PolicyBackend, TractBackend, TractOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn tools(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_reflex-tools"))
        .args(args)
        .output()
        .expect("reflex-tools runs");
    assert!(
        out.status.success(),
        "reflex-tools {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn tract_ms(dir: &Path, runs: usize) -> f64 {
    let bundle = Bundle::load(dir).expect("bundle");
    let mut b = TractBackend::prepare(&bundle, TractOptions { threads: 2 }).expect("tract");
    for i in 0..bundle.manifest.cameras.len() {
        for (k, v) in b.camera_input(i).iter_mut().enumerate() {
            *v = ((k % 251) as f32 / 251.0) - 0.5;
        }
    }
    b.run().expect("warm-up");
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                b.run().expect("run");
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

fn ort_ms(model: &Path, runs: usize) -> Option<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/ort_bench.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(model)
        .arg("2")
        .arg(runs.to_string())
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("onnxruntime: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .strip_prefix("median_ms=")?
        .parse()
        .ok()
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let runs = if full { 20 } else { 2 };
    let root = std::env::temp_dir().join("reflex-bench-quantized");
    let s = |p: &PathBuf| p.to_str().expect("utf8").to_string();
    println!("fp32 vs fp16 vs int8 (QDQ), 2 threads, median of {runs} runs");
    println!(
        "{:<10} {:<6} {:>9} {:>8} {:>9} {:>8}",
        "model", "form", "tract ms", "vs fp32", "ORT ms", "vs fp32"
    );
    for arch in ["resnet18", "vit-s16"] {
        let fp32 = root.join(format!("{arch}-fp32"));
        if Bundle::load(&fp32).is_err() {
            tools(&["export", "--arch", arch, "--seed", "0", "--out", &s(&fp32)]);
        }
        let (mut t0, mut o0) = (0.0, None);
        for form in ["fp32", "fp16", "int8"] {
            let dir = root.join(format!("{arch}-{form}"));
            if form != "fp32" && Bundle::load(&dir).is_err() {
                tools(&[
                    "quantize",
                    "--bundle",
                    &s(&fp32),
                    "--precision",
                    form,
                    "--calibration-frames",
                    "16",
                    "--held-out",
                    "4",
                    "--latency-runs",
                    "2",
                    "--out",
                    &s(&dir),
                ]);
            }
            let t = tract_ms(&dir, runs);
            let o = ort_ms(&dir.join("policy.onnx"), runs);
            if form == "fp32" {
                (t0, o0) = (t, o);
            }
            let ratio_o = match (o, o0) {
                (Some(o), Some(o0)) => format!("{:.2}", o / o0),
                _ => "n/a".into(),
            };
            println!(
                "{:<10} {:<6} {:>9.2} {:>8.2} {:>9} {:>8}",
                arch,
                form,
                t,
                t / t0,
                o.map(|o| format!("{o:.2}")).unwrap_or_else(|| "n/a".into()),
                ratio_o
            );
        }
    }
}
