//! Backend conformance suite: the same bundles and inputs for every backend, outputs checked
//! against ONNX Runtime within stated tolerances.
//!
//! Written once, run for each backend through a factory that prepares a bundle's policy on it
//! ([`check_backend`]): tract in CI today (`tests/tests/conformance.rs`); TensorRT on a board and
//! ONNX Runtime later call the same function with their own factory and tolerances.
//!
//! Cases ([`cases`]): the reference ResNet-18 chunk policy (the demo's), the reference ViT-S/16
//! single-action policy without state, and a tiny policy (mean-pooled image + state -> Gemm ->
//! tanh -> 4x2 chunk) small enough to read. For each case the suite
//! 1. writes the bundle (`reflex_models::reference`, seeded weights) and loads it;
//! 2. prepares the policy with the factory, and checks its output length
//!    (`horizon x action dimension`);
//! 3. runs two different deterministic observations, and the first again: each output must agree
//!    with ONNX Runtime (Python `onnxruntime`, CPU provider, on the file the backend is listed
//!    for) within `tolerance.vs_reference`, and the repeat must match the first run within
//!    `tolerance.repeat` (a session must not carry state from one run into the next, and must
//!    read the inputs written since).
//!
//! The error measure is `max |ours - reference| / max(1, max |reference|)`, the one the model
//! tests use. ONNX Runtime runs through `tests/python/ort_run.py`; without python3/onnxruntime the
//! suite fails, unless `REFLEX_SKIP_ORT=1` (then only steps 1-2 and the repeat check run).

use reflex_models::bundle::write_bundle;
use reflex_models::manifest::{BackendKind, ModelRole};
use reflex_models::npy::{read_npy, write_npy, NpyArray};
use reflex_models::onnx::builder::{Attr, GraphBuilder};
use reflex_models::onnx::{EncoderKind, HeadKind, PolicyArch, SeededWeights};
use reflex_models::reference::{default_capture, demo_arch, reference_manifest};
use reflex_models::Bundle;
use reflex_runtime::infer::policy::{Policy, PolicyError};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Bounds on the relative error `max |ours - reference| / max(1, max |reference|)`.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    /// Against ONNX Runtime on the same file and inputs. fp32 on a CPU: 1e-4 (summation order
    /// and fused multiply-adds differ between runtimes; the reference graphs agree to ~1e-6).
    pub vs_reference: f32,
    /// Between two runs of the same inputs on the same policy.
    pub repeat: f32,
}

impl Tolerance {
    /// fp32 on a CPU backend.
    pub const FP32_CPU: Tolerance = Tolerance {
        vs_reference: 1e-4,
        repeat: 1e-6,
    };
}

/// One conformance case: a bundle writer and a name.
pub struct Case {
    pub name: &'static str,
    write: fn(&Path) -> Result<(), Box<dyn std::error::Error>>,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case").field("name", &self.name).finish()
    }
}

/// The suite's cases, smallest first.
pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "tiny",
            write: write_tiny_bundle,
        },
        Case {
            name: "resnet18-chunk",
            write: |d| write_reference(d, &demo_arch(), 0, "conformance-resnet18-chunk"),
        },
        Case {
            name: "vit-s16-single",
            write: |d| {
                let arch = PolicyArch {
                    encoder: EncoderKind::VitS16,
                    cameras: vec!["top".into()],
                    shared_encoder: false,
                    state_dim: 0,
                    action_dim: 6,
                    hidden: vec![256],
                    head: HeadKind::Single,
                };
                write_reference(d, &arch, 1, "conformance-vit-s16-single")
            },
        },
    ]
}

fn write_reference(
    dir: &Path,
    arch: &PolicyArch,
    seed: u64,
    name: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    reflex_models::reference::write_reference_bundle(
        dir,
        arch,
        &mut SeededWeights::new(seed),
        name,
        default_capture(),
    )?;
    Ok(())
}

/// A tiny policy: one 8x8 RGB camera and a 2-D state; per-channel mean of the image, concatenated
/// with the state, Gemm to 8 values, tanh, reshaped to a chunk of 4 steps x 2 joints.
pub fn write_tiny_bundle(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use prost::Message as _;
    let arch = PolicyArch {
        encoder: EncoderKind::Resnet18,
        cameras: vec!["cam".into()],
        shared_encoder: false,
        state_dim: 2,
        action_dim: 2,
        hidden: vec![],
        head: HeadKind::Chunk { horizon: 4 },
    };
    let mut m = reference_manifest(&arch, "conformance-tiny", default_capture());
    m.cameras[0].preprocess.resize.width = 8;
    m.cameras[0].preprocess.resize.height = 8;
    let mut g = GraphBuilder::new("tiny");
    let image = g.input("image.cam", &[1, 3, 8, 8]);
    let state = g.input("state", &[1, 2]);
    let pooled = g.node(
        "pool",
        "ReduceMean",
        &[&image],
        &[("axes", Attr::Ints(vec![2, 3])), ("keepdims", Attr::Int(0))],
    );
    let x = g.node(
        "concat",
        "Concat",
        &[&pooled, &state],
        &[("axis", Attr::Int(1))],
    );
    let w: Vec<f32> = (0..5 * 8)
        .map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0)
        .collect();
    let b: Vec<f32> = (0..8).map(|i| (i as f32 - 3.5) / 8.0).collect();
    let w = g.initializer("fc.weight", &[5, 8], &w);
    let b = g.initializer("fc.bias", &[8], &b);
    let y = g.node("fc", "Gemm", &[&x, &w, &b], &[]);
    let y = g.node("tanh", "Tanh", &[&y], &[]);
    let shape = g.shape_const(&[1, 4, 2]);
    let action = g.node("action", "Reshape", &[&y, &shape], &[]);
    g.output(&action, &[1, 4, 2]);
    let bytes = g.finish().encode_to_vec();
    write_bundle(dir, &mut m, &[&bytes])?;
    Ok(())
}

/// One graph input's values: name, shape, data.
type Input = (String, Vec<usize>, Vec<f32>);

/// How the backend under test prepares a bundle's policy.
pub type PolicyFactory<'a> = dyn FnMut(&Bundle) -> Result<Box<dyn Policy>, PolicyError> + 'a;

/// Deterministic values in [-2, 2) (xorshift64*), `n` of them.
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
        })
        .collect()
}

/// One observation: a CHW image per camera and the normalized state, keyed by graph input name.
fn observation(bundle: &Bundle, seed: u64) -> Vec<Input> {
    let m = &bundle.manifest;
    let mut v = vec![];
    for (c, cam) in m.cameras.iter().enumerate() {
        let p = &cam.preprocess;
        let shape = vec![
            1,
            p.color.channels(),
            p.resize.height as usize,
            p.resize.width as usize,
        ];
        let n = shape.iter().product();
        v.push((
            cam.onnx_input.clone(),
            shape,
            values(seed * 31 + c as u64, n),
        ));
    }
    if let Some(s) = &m.state.onnx_input {
        let n = m.state.names.len();
        let st = values(seed * 31 + 17, n).iter().map(|x| x / 2.0).collect();
        v.push((s.clone(), vec![1, n], st));
    }
    v
}

fn run_policy(p: &mut dyn Policy, bundle: &Bundle, obs: &[Input]) -> Result<Vec<f32>, PolicyError> {
    let m = &bundle.manifest;
    for (name, _, data) in obs {
        if let Some(c) = m.cameras.iter().position(|c| &c.onnx_input == name) {
            p.camera_input(c).copy_from_slice(data);
        } else if let Some(s) = p.state_input() {
            s.copy_from_slice(data);
        }
    }
    p.run()?;
    Ok(p.output().to_vec())
}

/// `max |a - b| / max(1, max |b|)`.
pub fn relative_error(ours: &[f32], reference: &[f32]) -> f32 {
    assert_eq!(ours.len(), reference.len(), "output lengths differ");
    let scale = reference.iter().fold(1f32, |m, v| m.max(v.abs()));
    let err = ours
        .iter()
        .zip(reference)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    if err.is_nan() || ours.iter().any(|v| !v.is_finite()) {
        return f32::INFINITY;
    }
    err / scale
}

/// What one case measured.
#[derive(Debug, Clone)]
pub struct CaseReport {
    pub case: &'static str,
    /// Relative error against ONNX Runtime per observation; empty when skipped.
    pub vs_reference: Vec<f32>,
    pub repeat: f32,
}

/// Whether the Python references are skipped (`REFLEX_SKIP_ORT=1`).
fn skip_ort() -> bool {
    std::env::var("REFLEX_SKIP_ORT").as_deref() == Ok("1")
}

/// Runs ONNX Runtime on `model` with the observations; returns the outputs named `output`.
fn ort_outputs(
    model: &Path,
    dir: &Path,
    observations: &[Vec<Input>],
    output: &str,
) -> Vec<Vec<f32>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new(".."))
        .join("tests/python/ort_run.py");
    let mut args: Vec<String> = vec![];
    for (k, obs) in observations.iter().enumerate() {
        if k > 0 {
            args.push("--and".into());
        }
        args.push(model.display().to_string());
        let d = dir.join(format!("obs{k}"));
        std::fs::create_dir_all(&d).expect("observation dir");
        for (name, shape, data) in obs {
            let f = d.join(format!("{name}.npy"));
            write_npy(&f, &NpyArray::f32(shape, data.clone())).expect("write npy");
            args.push(format!("{name}={}", f.display()));
        }
        args.push(d.join("ort").display().to_string());
    }
    let help = "the conformance suite needs python3 with numpy, onnx and onnxruntime \
                (scripts/setup.sh installs them); set REFLEX_SKIP_ORT=1 to skip the reference";
    let out = Command::new("python3")
        .arg(&script)
        .args(&args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 {}: {e}; {help}", script.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python3 {} {} failed ({}):\n{stderr}\n{help}",
        script.display(),
        args.join(" "),
        out.status
    );
    (0..observations.len())
        .map(|k| {
            let f = dir.join(format!("obs{k}/ort/{output}.npy"));
            read_npy(&f)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
                .data
                .to_f32()
        })
        .collect()
}

/// Runs every case for one backend. `prepare` builds the bundle's policy on the backend under
/// test; `work` is a scratch directory (bundles are rewritten only when they no longer load).
/// Panics naming the case, the observation and the figures on any failure; returns what each
/// case measured, for the test to print.
pub fn check_backend(
    backend: BackendKind,
    prepare: &mut PolicyFactory<'_>,
    tolerance: Tolerance,
    work: &Path,
) -> Vec<CaseReport> {
    let mut reports = vec![];
    for case in cases() {
        let dir: PathBuf = work.join(case.name);
        let bundle_dir = dir.join("bundle");
        if Bundle::load(&bundle_dir).is_err() {
            (case.write)(&bundle_dir)
                .unwrap_or_else(|e| panic!("{}: writing the bundle: {e}", case.name));
        }
        let bundle = Bundle::load(&bundle_dir)
            .unwrap_or_else(|e| panic!("{}: the bundle does not load: {e}", case.name));
        let m = &bundle.manifest;
        let model = m
            .model_for(ModelRole::Policy, backend)
            .unwrap_or_else(|| panic!("{}: no policy file for {}", case.name, backend.as_str()));
        let model_path = bundle.model_path(model);
        let mut policy = prepare(&bundle)
            .unwrap_or_else(|e| panic!("{}: {} cannot prepare: {e}", case.name, backend.as_str()));
        let want_len = m.action.output.horizon() * m.action.names.len();
        assert_eq!(
            policy.output().len(),
            want_len,
            "{}: output length (horizon x action dim)",
            case.name
        );
        let observations = [observation(&bundle, 1), observation(&bundle, 2)];
        let mut ours = vec![];
        for (k, obs) in observations.iter().enumerate() {
            let out = run_policy(policy.as_mut(), &bundle, obs)
                .unwrap_or_else(|e| panic!("{}: observation {k}: {e}", case.name));
            ours.push(out);
        }
        let again = run_policy(policy.as_mut(), &bundle, &observations[0])
            .unwrap_or_else(|e| panic!("{}: repeat: {e}", case.name));
        let repeat = relative_error(&again, &ours[0]);
        assert!(
            repeat <= tolerance.repeat,
            "{}: the same observation run again differs by {repeat:.2e} (> {:.0e})",
            case.name,
            tolerance.repeat
        );
        assert!(
            relative_error(&ours[0], &ours[1]) > 0.0,
            "{}: two different observations gave the same output (inputs not read?)",
            case.name
        );
        let mut vs_reference = vec![];
        if skip_ort() {
            eprintln!(
                "REFLEX_SKIP_ORT=1: {} not compared with ONNX Runtime",
                case.name
            );
        } else {
            let reference = ort_outputs(&model_path, &dir, &observations, &m.action.onnx_output);
            for (k, (o, r)) in ours.iter().zip(&reference).enumerate() {
                let err = relative_error(o, r);
                assert!(
                    err <= tolerance.vs_reference,
                    "{}: observation {k}: {} and ONNX Runtime differ by {err:.2e} relative \
                     (> {:.0e})",
                    case.name,
                    backend.as_str(),
                    tolerance.vs_reference
                );
                vs_reference.push(err);
            }
        }
        reports.push(CaseReport {
            case: case.name,
            vs_reference,
            repeat,
        });
    }
    reports
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_error_is_scaled_and_catches_nan() {
        assert_eq!(relative_error(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert_eq!(relative_error(&[0.5], &[0.0]), 0.5);
        assert_eq!(relative_error(&[4.5], &[4.0]), 0.125);
        assert_eq!(relative_error(&[f32::NAN], &[1.0]), f32::INFINITY);
    }
}
