//! fp16 and both int8 forms against fp32, in tract and in ONNX Runtime, same machine, same run.
//!
//! `cargo bench -p reflex-tools --bench quantized` (needs python3 with onnxruntime). For the
//! reference ResNet-18 and ViT-S/16 chunk policies: exports the fp32 bundle, quantizes it with
//! `reflex-tools quantize` (entropy calibration on a synthetic episode), and prints the median
//! latency of each form in tract (reflex's backend, 2 threads) and ONNX Runtime (2 threads), with
//! the ratio to fp32: fp16, int8 in operator form (`int8-qop`, QLinearConv / QLinearMatMul: the
//! file listed for tract) and int8 QDQ (`int8-qdq`: the file listed for TensorRT, run here on
//! the CPU for comparison). reflex's own ONNX Runtime session (`reflex-ORT`, the library the
//! runtime loads) runs each form too. Under `cargo test` (no `--bench`) it runs as a short smoke
//! check.

use reflex_models::bundle::write_bundle;
use reflex_models::manifest::BackendKind;
use reflex_models::Bundle;
use reflex_runtime::infer::policy::{Policy, SinglePassPolicy};
use reflex_runtime::infer::select::prepare_policy_read_only;
use reflex_runtime::infer::tract::TractOptions;
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

/// A bundle of `int8`'s QDQ file listed for tract, so tract can time that form too.
fn qdq_for_tract(int8: &Path, out: &Path) {
    let b = Bundle::load(int8).expect("int8 bundle");
    let mut m = b.manifest.clone();
    m.models
        .retain(|f| f.backends.contains(&BackendKind::Tensorrt));
    assert_eq!(m.models.len(), 1, "one QDQ entry");
    m.models[0].backends = vec![BackendKind::Tract];
    let bytes = std::fs::read(int8.join(&m.models[0].file)).expect("QDQ file");
    write_bundle(out, &mut m, &[bytes.as_slice()]).expect("QDQ bundle");
}

fn tract_ms(dir: &Path, runs: usize) -> f64 {
    let bundle = Bundle::load(dir).expect("bundle");
    let b = SinglePassPolicy::tract(&bundle, TractOptions { threads: 2 }).expect("tract");
    policy_ms(Box::new(b), &bundle, runs)
}

/// reflex's ONNX Runtime session on the file listed for tract, or `None` with the reason printed.
fn reflex_ort_ms(dir: &Path, runs: usize) -> Option<f64> {
    let bundle = Bundle::load(dir).expect("bundle");
    match prepare_policy_read_only(
        &bundle,
        BackendKind::Onnxruntime,
        TractOptions { threads: 2 },
    ) {
        Ok(p) => Some(policy_ms(p, &bundle, runs)),
        Err(e) => {
            eprintln!("reflex onnxruntime: {e}");
            None
        }
    }
}

fn policy_ms(mut b: Box<dyn Policy>, bundle: &Bundle, runs: usize) -> f64 {
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
    println!("fp32 vs fp16 vs int8 (operator form, QDQ), 2 threads, median of {runs} runs");
    println!(
        "{:<10} {:<9} {:>9} {:>8} {:>9} {:>8} {:>11} {:>8}",
        "model", "form", "tract ms", "vs fp32", "ORT ms", "vs fp32", "reflex-ORT", "vs fp32"
    );
    for arch in ["resnet18", "vit-s16"] {
        let fp32 = root.join(format!("{arch}-fp32"));
        if Bundle::load(&fp32).is_err() {
            tools(&["export", "--arch", arch, "--seed", "0", "--out", &s(&fp32)]);
        }
        let (mut t0, mut o0, mut r0) = (0.0, None, None);
        for form in ["fp32", "fp16", "int8-qop", "int8-qdq"] {
            let precision = form.split('-').next().unwrap_or(form);
            let bundle = root.join(format!("{arch}-{precision}"));
            // Reused from an earlier run unless missing or from before the operator form.
            let current = Bundle::load(&bundle)
                .is_ok_and(|b| precision != "int8" || b.policy_path.ends_with("policy.qop.onnx"));
            if form != "fp32" && form != "int8-qdq" && !current {
                tools(&[
                    "quantize",
                    "--bundle",
                    &s(&fp32),
                    "--precision",
                    precision,
                    "--calibration-frames",
                    "16",
                    "--held-out",
                    "4",
                    "--latency-runs",
                    "2",
                    "--out",
                    &s(&bundle),
                ]);
            }
            // The directory tract loads, and the file ONNX Runtime times (the same one).
            let (dir, file) = match form {
                "int8-qdq" => {
                    let d = root.join(format!("{arch}-int8-qdq-on-tract"));
                    qdq_for_tract(&bundle, &d);
                    (d, "policy.qdq.onnx")
                }
                "int8-qop" => (bundle, "policy.qop.onnx"),
                _ => (bundle, "policy.onnx"),
            };
            let t = tract_ms(&dir, runs);
            let o = ort_ms(&dir.join(file), runs);
            let r = reflex_ort_ms(&dir, runs);
            if form == "fp32" {
                (t0, o0, r0) = (t, o, r);
            }
            let ratio = |v: Option<f64>, v0: Option<f64>| match (v, v0) {
                (Some(v), Some(v0)) => format!("{:.2}", v / v0),
                _ => "n/a".into(),
            };
            let ms = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "n/a".into());
            println!(
                "{:<10} {:<9} {:>9.2} {:>8.2} {:>9} {:>8} {:>11} {:>8}",
                arch,
                form,
                t,
                t / t0,
                ms(o),
                ratio(o, o0),
                ms(r),
                ratio(r, r0)
            );
        }
    }
}
