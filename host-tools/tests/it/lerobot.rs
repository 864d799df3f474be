//! `reflex-tools import lerobot` against LeRobot 0.6.1 itself.
//!
//! `tests/data/lerobot/act/` holds what `scripts/lerobot/make_act_reference.py` wrote from a real
//! LeRobot ACT policy (default sizes, two 96x128 cameras): the checkpoint folder's small files,
//! the list of its tensors, the inputs and LeRobot's outputs (`predict_action_chunk`, then the
//! postprocessor). `model.safetensors` is regenerated here from the same deterministic function
//! (`reflex_testkit::lerobot_weights`, bit for bit `scripts/lerobot/weights.py`), so CI needs
//! neither LeRobot nor a 207 MB file in the repository.

use reflex_models::manifest::{Manifest, PixelFormat};
use reflex_models::npy::{read_npy, write_npy, NpyArray, NpyData};
use reflex_models::onnx::{save_safetensors, NamedTensor};
use reflex_runtime::infer::session::Session;
use reflex_runtime::infer::tract::{TractOptions, TractSession};
use reflex_runtime::preprocess::Preprocessor;
use reflex_testkit::cli::{Cli, Run};
use reflex_testkit::lerobot_weights;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Agreement with LeRobot and ONNX Runtime, normalized and in action units.
const TOL: f32 = 1e-4;

fn data() -> PathBuf {
    reflex_testkit::lerobot::act_data()
}

fn tools(args: &[&str]) -> Run {
    Cli::new(env!("CARGO_BIN_EXE_reflex-tools"))
        .args(args)
        .run()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// This binary's scratch directory for these tests, emptied once per run.
fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| reflex_testkit::dirs::fixture_dir("lerobot"))
}

/// The small files of the reference folder in a fresh `name` folder (no model.safetensors).
fn small_folder(name: &str) -> PathBuf {
    let dir = root().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    reflex_testkit::lerobot::act_small_folder(&dir);
    dir
}

/// The whole checkpoint folder, model.safetensors regenerated from `model_tensors.json`.
fn act_folder() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = root().join("act_checkpoint");
        reflex_testkit::lerobot::act_folder(&dir);
        dir
    })
}

/// The imported bundle (frames as raw RGB so the test feeds LeRobot's uint8 images as they are).
fn act_bundle() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = root().join("act_bundle");
        let run = tools(&[
            "import",
            "lerobot",
            s(act_folder()),
            "--out",
            s(&out),
            "--rate",
            "50",
            "--capture-format",
            "rgb24",
        ]);
        assert!(run.status.success(), "{run}");
        // What the checkpoint does not say is repeated after the import.
        assert!(
            run.stdout.contains("control rate 50 Hz (--rate)")
                && run.stdout.contains("joints in rad (--unit)")
                && run.stdout.contains("no [action.limits] yet"),
            "{run}"
        );
        out
    })
}

fn manifest(bundle: &Path) -> Manifest {
    reflex_models::Bundle::load(bundle)
        .expect("bundle loads")
        .manifest
}

fn f32s(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let a = read_npy(path).expect("npy");
    (a.shape.clone(), a.data.to_f32())
}

/// The graph inputs exactly as the robot makes them: each camera's uint8 HWC frame through the
/// runtime's preprocessing, the state through the manifest's normalization.
fn graph_inputs(m: &Manifest) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut out = vec![];
    for cam in &m.cameras {
        let a = read_npy(&data().join(format!("{}.npy", cam.onnx_input))).expect("image npy");
        let NpyData::U8(pixels) = &a.data else {
            panic!("{}: expected uint8", cam.onnx_input)
        };
        let mut p = Preprocessor::new(cam).expect("preprocessor");
        let mut chw = vec![0.0; p.output_len()];
        p.run(
            pixels,
            cam.capture.width,
            cam.capture.height,
            PixelFormat::Rgb24,
            &mut chw,
        )
        .expect("preprocess");
        let shape = vec![
            1,
            3,
            cam.capture.height as usize,
            cam.capture.width as usize,
        ];
        out.push((cam.onnx_input.clone(), shape, chw));
    }
    let (_, state) = f32s(&data().join("observation.state.npy"));
    let normalized = state
        .iter()
        .enumerate()
        .map(|(i, &x)| m.state.normalization.affine(i).normalize(x))
        .collect::<Vec<_>>();
    let name = m.state.onnx_input.clone().expect("state input");
    out.push((name, vec![1, state.len()], normalized));
    out
}

fn run_tract(bundle: &Path, inputs: &[(String, Vec<usize>, Vec<f32>)]) -> Vec<f32> {
    let mut sess = TractSession::prepare(&bundle.join("policy.onnx"), TractOptions::default())
        .expect("tract prepares the graph");
    for (name, _, v) in inputs {
        let i = sess.input_index(name).expect("graph input");
        sess.input_mut(i).copy_from_slice(v);
    }
    sess.run().expect("run");
    sess.output(0).to_vec()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn weights_match_python_bit_for_bit() {
    // Computed once with `values()` of scripts/lerobot/weights.py.
    let w = |name: &str, shape: &[usize], i: u64| lerobot_weights::value(name, shape, i) as f32;
    assert_eq!(
        lerobot_weights::fnv1a64("model.backbone.conv1.weight"),
        18033443607421315512
    );
    assert_eq!(
        w("model.backbone.conv1.weight", &[64, 3, 7, 7], 0),
        0.082_022_6_f32
    );
    assert_eq!(
        w("model.backbone.conv1.weight", &[64, 3, 7, 7], 9407),
        0.110_174_775_f32
    );
    assert_eq!(
        w("model.backbone.bn1.running_var", &[64], 5),
        1.202_416_2_f32
    );
    assert_eq!(
        w("model.backbone.bn1.running_mean", &[64], 5),
        0.075_684_65_f32
    );
    assert_eq!(w("model.backbone.bn1.weight", &[64], 63), 1.092_004_4_f32);
    assert_eq!(w("model.action_head.bias", &[14], 3), 0.035_468_49_f32);
}

#[test]
fn act_import_matches_lerobot() {
    let bundle = act_bundle();
    let m = manifest(bundle);
    assert_eq!(m.action.output.horizon(), 100);
    assert_eq!(m.control.steps_per_inference, 100);
    assert_eq!(m.control.temporal_ensemble_m, None);
    assert_eq!(m.control.rate_hz, 50.0);
    assert_eq!(m.cameras.len(), 2);
    let inputs = graph_inputs(&m);
    let chunk = run_tract(bundle, &inputs);
    let (shape, expected) = f32s(&data().join("chunk_normalized.npy"));
    assert_eq!(shape, vec![1, 100, 6]);
    let d = max_diff(&chunk, &expected);
    eprintln!("ACT normalized chunk vs LeRobot: max |diff| {d:e}");
    assert!(d <= TOL, "normalized chunk differs from LeRobot's by {d}");
    // The chunk varies over time and joints (a constant chunk would pass a loose check).
    let spread = expected.iter().fold(0.0f32, |a, &x| a.max(x.abs()));
    assert!(spread > 0.5, "reference chunk is degenerate ({spread})");

    let dim = m.action.names.len();
    let actions: Vec<f32> = chunk
        .iter()
        .enumerate()
        .map(|(k, &y)| m.action.normalization.affine(k % dim).unnormalize(y))
        .collect();
    let (_, expected) = f32s(&data().join("actions.npy"));
    let d = max_diff(&actions, &expected);
    eprintln!("ACT actions vs LeRobot's postprocessor: max |diff| {d:e}");
    assert!(
        d <= TOL,
        "postprocessed actions differ from LeRobot's by {d}"
    );
}

#[test]
fn act_graph_passes_the_onnx_checker_and_matches_onnx_runtime() {
    let bundle = act_bundle();
    let m = manifest(bundle);
    let inputs = graph_inputs(&m);
    let chunk = run_tract(bundle, &inputs);
    let dir = root().join("ort");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut args = vec![s(&bundle.join("policy.onnx")).to_string()];
    for (name, shape, v) in &inputs {
        let p = dir.join(format!("{name}.npy"));
        write_npy(&p, &NpyArray::f32(shape, v.clone())).expect("write npy");
        args.push(format!("{name}={}", s(&p)));
    }
    let outdir = dir.join("out");
    args.push(s(&outdir).to_string());
    let Some(_) = reflex_testkit::python::reference("ort_run.py", &args, "numpy onnx onnxruntime")
    else {
        return;
    };
    let (_, ort) = f32s(&outdir.join("action.npy"));
    let d = max_diff(&chunk, &ort);
    eprintln!("ACT graph, tract vs ONNX Runtime: max |diff| {d:e}");
    assert!(d <= TOL, "tract and ONNX Runtime differ by {d}");
}

fn refused(dir: &Path, out: &str) -> String {
    let out = root().join(out);
    let run = tools(&["import", "lerobot", s(dir), "--out", s(&out)]);
    assert!(!run.status.success(), "should be refused:\n{run}");
    assert!(!out.exists(), "a refused import wrote {}", out.display());
    run.stderr.clone()
}

#[test]
fn an_unknown_policy_type_is_refused_naming_the_file_and_field() {
    let dir = small_folder("type_pi0");
    let p = dir.join("config.json");
    let text = std::fs::read_to_string(&p).expect("config");
    std::fs::write(&p, text.replace("\"type\": \"act\"", "\"type\": \"pi0\"")).expect("write");
    let e = refused(&dir, "type_pi0_out");
    assert!(
        e.contains("config.json") && e.contains("`type` = \"pi0\""),
        "{e}"
    );
}

#[test]
fn an_unsupported_backbone_is_refused_naming_the_field() {
    let dir = small_folder("resnet34");
    let p = dir.join("config.json");
    let text = std::fs::read_to_string(&p).expect("config");
    std::fs::write(&p, text.replace("\"resnet18\"", "\"resnet34\"")).expect("write");
    let e = refused(&dir, "resnet34_out");
    assert!(
        e.contains("config.json") && e.contains("`vision_backbone` = \"resnet34\""),
        "{e}"
    );
}

#[test]
fn a_mismatched_stats_file_is_refused_naming_the_file_and_key() {
    // The stats of another policy: its state has 7 dimensions.
    let dir = small_folder("stats7");
    let f = "policy_preprocessor_step_3_normalizer_processor.safetensors";
    let mut tensors = vec![];
    for (key, n) in [
        ("observation.state.mean", 7),
        ("observation.state.std", 7),
        ("action.mean", 6),
        ("action.std", 6),
        ("observation.images.top.mean", 3),
        ("observation.images.top.std", 3),
        ("observation.images.wrist.mean", 3),
        ("observation.images.wrist.std", 3),
    ] {
        tensors.push(NamedTensor {
            key: key.into(),
            shape: vec![n],
            data: vec![0.5; n],
        });
    }
    save_safetensors(&dir.join(f), &tensors).expect("write stats");
    let e = refused(&dir, "stats7_out");
    assert!(
        e.contains(f) && e.contains("`observation.state.mean`"),
        "{e}"
    );

    // A camera's statistics missing.
    let missing: Vec<NamedTensor> = tensors
        .iter()
        .filter(|t| !t.key.starts_with("observation.images.wrist"))
        .map(|t| NamedTensor {
            shape: vec![if t.key.starts_with("observation.state") {
                6
            } else {
                t.shape[0]
            }],
            data: vec![
                0.5;
                if t.key.starts_with("observation.state") {
                    6
                } else {
                    t.shape[0]
                }
            ],
            key: t.key.clone(),
        })
        .collect();
    save_safetensors(&dir.join(f), &missing).expect("write stats");
    let e = refused(&dir, "stats_missing_out");
    assert!(
        e.contains(f) && e.contains("`observation.images.wrist.mean` is missing"),
        "{e}"
    );

    // A statistic of a feature the policy does not have.
    let mut extra = missing;
    for key in [
        "observation.images.wrist.mean",
        "observation.images.wrist.std",
        "observation.velocity.mean",
    ] {
        extra.push(NamedTensor {
            key: key.into(),
            shape: vec![3],
            data: vec![0.5; 3],
        });
    }
    save_safetensors(&dir.join(f), &extra).expect("write stats");
    let e = refused(&dir, "stats_extra_out");
    assert!(
        e.contains(f) && e.contains("`observation.velocity.mean`"),
        "{e}"
    );
}

#[test]
fn missing_weights_are_refused_naming_the_file_and_keys() {
    let dir = small_folder("no_weights");
    let e = refused(&dir, "no_weights_out");
    assert!(e.contains("model.safetensors"), "{e}");

    // A checkpoint lacking tensors (here: all but the action head's bias).
    save_safetensors(
        &dir.join("model.safetensors"),
        &[NamedTensor {
            key: "model.action_head.bias".into(),
            shape: vec![6],
            data: vec![0.0; 6],
        }],
    )
    .expect("write");
    let e = refused(&dir, "few_weights_out");
    assert!(
        e.contains("model.safetensors")
            && e.contains("missing: model.backbone.conv1.weight [64, 3, 7, 7]")
            && e.contains("missing: model.action_head.weight [6, 512]"),
        "{e}"
    );
}
