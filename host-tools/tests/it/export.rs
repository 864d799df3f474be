//! `reflex-tools` as a user runs it: export (seed, checkpoint, ONNX + stats), inspect, infer.

use reflex_models::manifest::{Convention, Normalization};
use reflex_models::npy::{read_npy, write_npy, NpyArray};
use reflex_models::onnx::{
    build_policy, save_safetensors, EncoderKind, HeadKind, KeyLayout, PolicyArch, RecordingWeights,
    SeededWeights,
};
use reflex_models::Bundle;
use reflex_testkit::cli::{Cli, Run};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn tools(args: &[&str]) -> Run {
    Cli::new(env!("CARGO_BIN_EXE_reflex-tools"))
        .args(args)
        .run()
}

fn ok(o: &Run) -> String {
    assert!(o.status.success(), "{o}");
    o.stdout.clone()
}

fn err(o: &Run) -> String {
    assert!(!o.status.success(), "should fail:\n{o}");
    o.stderr.clone()
}

/// This binary's scratch directory, emptied once per run.
fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| reflex_testkit::dirs::fixture_dir("tools"))
}

/// `name` in the scratch directory, removed if it exists.
fn dir(name: &str) -> PathBuf {
    let d = root().join(name);
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

#[test]
fn export_seed_inspect_infer() {
    let out = dir("seed");
    ok(&tools(&[
        "export",
        "--arch",
        "resnet18",
        "--seed",
        "1",
        "--head",
        "single",
        "--out",
        s(&out),
    ]));
    let b = Bundle::load(&out).expect("bundle");
    assert_eq!(b.io.output("action"), Some(&[1, 6][..]));
    let text = ok(&tools(&["inspect", s(&out)]));
    assert!(
        text.contains("input  image.front [1, 3, 224, 224]"),
        "{text}"
    );
    // 11.18 M trunk + head, BatchNorm folded into conv (scale/shift become one bias).
    let params: u64 = text
        .split("parameters: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("parameter count printed");
    assert!((11_200_000..11_400_000).contains(&params), "{params}");
    assert!(text.contains("G multiply-accumulates"), "{text}");

    // infer: the raw network on .npy inputs, same as running it in the runtime's backend.
    let img: Vec<f32> = (0..3 * 224 * 224)
        .map(|i| ((i % 97) as f32 / 97.0) - 0.5)
        .collect();
    let st = vec![0.1f32, -0.2, 0.3, 0.0, 0.5, -0.1];
    let ip = out.with_extension("img.npy");
    let sp = out.with_extension("state.npy");
    write_npy(&ip, &NpyArray::f32(&[1, 3, 224, 224], img.clone())).expect("npy");
    write_npy(&sp, &NpyArray::f32(&[1, 6], st.clone())).expect("npy");
    let op = out.with_extension("out.npy");
    // infer does not overwrite a file without --force: start from none (a previous run's).
    let _ = std::fs::remove_file(&op);
    ok(&tools(&[
        "infer",
        "--bundle",
        s(&out),
        "--input",
        &format!("image.front={}", s(&ip)),
        "--input",
        &format!("state={}", s(&sp)),
        "--output",
        s(&op),
    ]));
    let got = read_npy(&op).expect("output");
    assert_eq!(got.shape, vec![1, 6]);
    let mut backend = reflex_runtime::infer::policy::SinglePassPolicy::tract(
        &b,
        reflex_runtime::infer::tract::TractOptions { threads: 1 },
    )
    .expect("backend");
    use reflex_runtime::infer::policy::Policy;
    backend.camera_input(0).copy_from_slice(&img);
    backend.state_input().expect("state").copy_from_slice(&st);
    backend.run().expect("run");
    let want = backend.output().to_vec();
    for (a, b) in got.data.to_f32().iter().zip(&want) {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
    }

    // A wrong input shape is named.
    let e = err(&tools(&[
        "infer",
        "--bundle",
        s(&out),
        "--input",
        &format!("image.front={}", s(&sp)),
        "--input",
        &format!("state={}", s(&sp)),
        "--output",
        s(&op),
    ]));
    assert!(e.contains("image.front") && e.contains("[1, 6]"), "{e}");
}

#[test]
fn export_from_checkpoint_matches_the_seeded_export() {
    let arch = PolicyArch {
        encoder: EncoderKind::Resnet18,
        cameras: vec!["front".into()],
        shared_encoder: false,
        state_dim: 6,
        action_dim: 6,
        hidden: vec![256],
        head: HeadKind::Chunk { horizon: 16 },
    };
    // A checkpoint as `save_file(policy.state_dict())` writes it: encoder.* and head.*.
    let layout = KeyLayout {
        per_camera_encoder: "encoder.".into(),
        ..KeyLayout::default()
    };
    let mut rec = RecordingWeights::new(SeededWeights::new(5), layout);
    build_policy(&arch, &mut rec).expect("build");
    let ckpt = dir("ckpt").with_extension("safetensors");
    save_safetensors(&ckpt, &rec.into_tensors()).expect("save");

    let a = dir("from-ckpt");
    ok(&tools(&[
        "export",
        "--arch",
        "resnet18",
        "--weights",
        s(&ckpt),
        "--out",
        s(&a),
    ]));
    let b = dir("from-seed");
    ok(&tools(&[
        "export",
        "--arch",
        "resnet18",
        "--seed",
        "5",
        "--out",
        s(&b),
    ]));
    let ha = Bundle::load(&a).expect("a").manifest.models[0]
        .sha256
        .clone();
    let hb = Bundle::load(&b).expect("b").manifest.models[0]
        .sha256
        .clone();
    assert_eq!(ha, hb, "same weights, same ONNX bytes");

    // Wrong prefix: every key is reported missing, and nothing is written.
    let c = dir("bad-prefix");
    let e = err(&tools(&[
        "export",
        "--arch",
        "resnet18",
        "--weights",
        s(&ckpt),
        "--encoder-prefix",
        "model.backbone.",
        "--out",
        s(&c),
    ]));
    assert!(
        e.contains("model.backbone.conv1.weight") && e.contains("missing"),
        "{e}"
    );
    assert!(!c.exists());
}

#[test]
fn export_onnx_with_lerobot_stats() {
    let src = dir("onnx-src");
    ok(&tools(&[
        "export",
        "--arch",
        "resnet18",
        "--seed",
        "2",
        "--out",
        s(&src),
    ]));
    // LeRobot-style stats: observation.state.* and action.*, plus image stats that are skipped.
    use safetensors::tensor::TensorView;
    let v = |x: &[f32]| x.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
    let (m6, s6, mn, mx) = (v(&[0.1; 6]), v(&[0.5; 6]), v(&[-1.0; 6]), v(&[1.0; 6]));
    let img = v(&[0.4; 3]);
    fn f32t(b: &[u8], n: usize) -> TensorView<'_> {
        TensorView::new(safetensors::Dtype::F32, vec![n], b).expect("view")
    }
    let stats = vec![
        ("observation.state.mean", f32t(&m6, 6)),
        ("observation.state.std", f32t(&s6, 6)),
        ("action.min", f32t(&mn, 6)),
        ("action.max", f32t(&mx, 6)),
        ("observation.images.front.mean", f32t(&img, 3)),
    ];
    let sp = dir("stats").with_extension("safetensors");
    std::fs::write(&sp, safetensors::serialize(stats, &None).expect("ser")).expect("write");

    let out = dir("onnx-out");
    ok(&tools(&[
        "export",
        "--onnx",
        s(&src.join("policy.onnx")),
        "--manifest",
        s(&src.join("policy.toml")),
        "--stats",
        s(&sp),
        "--action-norm",
        "min_max",
        "--out",
        s(&out),
    ]));
    let b = Bundle::load(&out).expect("bundle");
    assert_eq!(
        b.manifest.state.normalization,
        Normalization::MeanStd {
            mean: vec![0.1; 6],
            std: vec![0.5; 6],
            convention: Convention::Lerobot,
        }
    );
    assert_eq!(
        b.manifest.action.normalization,
        Normalization::MinMax {
            min: vec![-1.0; 6],
            max: vec![1.0; 6],
            convention: Convention::Lerobot,
        }
    );

    // Stats that do not cover what the normalization needs: an error naming it, nothing written.
    let out2 = dir("onnx-out-bad");
    let e = err(&tools(&[
        "export",
        "--onnx",
        s(&src.join("policy.onnx")),
        "--manifest",
        s(&src.join("policy.toml")),
        "--stats",
        s(&sp),
        "--out",
        s(&out2),
    ]));
    assert!(
        e.contains("action.mean") && e.contains("action.max, action.min"),
        "{e}"
    );
    assert!(!out2.exists());
}

#[test]
fn help_teaches() {
    let o = ok(&tools(&["--help"]));
    assert!(
        o.contains("Exit status:") && o.contains("--quiet") && o.contains("--verbose"),
        "{o}"
    );
    let o = ok(&tools(&["export", "--help"]));
    for w in [
        "--arch",
        "--weights",
        "--seed",
        "--onnx",
        "--stats",
        "--out",
    ] {
        assert!(o.contains(w), "{o}");
    }
}

// ---- Stats files as LeRobot writes them, and the framework's exact formulas (issue 15, kind 5).

fn stats_case(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/stats")
        .join(name)
}

/// Exports the tiny policy with `stats` and extra flags; the tool's output.
fn export_tiny(out: &Path, stats: &str, extra: &[&str]) -> Run {
    let (onnx, tpl, st) = (
        stats_case("tiny_base.onnx"),
        stats_case("policy_template.toml"),
        stats_case(stats),
    );
    let mut args = vec![
        "export",
        "--onnx",
        s(&onnx),
        "--manifest",
        s(&tpl),
        "--stats",
        s(&st),
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    tools(&args)
}

fn expected_meanstd(key: &str) -> Vec<f32> {
    let text = std::fs::read_to_string(stats_case("expected_meanstd.json")).expect("read");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    serde_json::from_value::<Vec<f64>>(v[key].clone())
        .expect("numbers")
        .into_iter()
        .map(|x| x as f32)
        .collect()
}

/// LeRobot's current normalizer file and a dataset's meta/stats.json export with the expected
/// mean/std under LeRobot's convention; `-v` lists the statistics the normalization leaves unused.
#[test]
fn export_with_lerobot_stats_files() {
    for file in ["normalizer_processor.safetensors", "meta_stats.json"] {
        let out = dir(&format!("lerobot-{file}"));
        let o = export_tiny(&out, file, &["-v"]);
        ok(&o);
        let stderr = o.stderr.clone();
        assert!(
            stderr.contains("not used by this normalization")
                && stderr.contains("state.q10")
                && stderr.contains("action.count"),
            "{file}: {stderr}"
        );
        // The normalizer's image stats (0.45, 0.43, 0.40 / 0.22, 0.21, 0.20) are not the
        // template's ImageNet preprocessing: said for the normalizer, which holds what the policy
        // was trained with, not for the dataset file (LeRobot may have used ImageNet's instead).
        assert_eq!(
            stderr.contains("camera `front`: the file's image statistics"),
            file.ends_with(".safetensors"),
            "{file}: {stderr}"
        );
        let m = Bundle::load(&out).expect("bundle").manifest;
        for (feature, n) in [
            ("state", &m.state.normalization),
            ("action", &m.action.normalization),
        ] {
            assert_eq!(
                *n,
                Normalization::MeanStd {
                    mean: expected_meanstd(&format!("{feature}_mean")),
                    std: expected_meanstd(&format!("{feature}_std")),
                    convention: Convention::Lerobot,
                },
                "{file} {feature}"
            );
        }
    }
}

/// A gripper that never moved in the dataset (std = 0): exported under LeRobot's convention with
/// a warning naming the joint and the file, normalized as LeRobot does; refused, with the fix,
/// when the plain formula (no epsilon) is asked for.
#[test]
fn export_with_a_constant_joint() {
    let file = "stats_gripper_constant.safetensors";
    let out = dir("constant-joint");
    let o = export_tiny(&out, file, &[]);
    ok(&o);
    let stderr = o.stderr.clone();
    assert!(
        stderr.contains("`gripper` never moved") && stderr.contains(file),
        "{stderr}"
    );
    let b = Bundle::load(&out).expect("bundle");
    let (state, action) = (
        &b.manifest.state.normalization,
        &b.manifest.action.normalization,
    );
    assert_eq!(state.convention(), Convention::Lerobot);
    assert_eq!(state.constant_dims(), vec![5]);
    // LeRobot MEAN_STD with std 0: (x - 0.035) / (0 + 1e-8), inverse y * 0 + 0.035.
    let g = state.affine(5);
    assert_eq!(g.normalize(0.035), 0.0);
    assert!(
        (g.normalize(0.036) - 1e-3 / 1e-8).abs() < 1e2,
        "{}",
        g.normalize(0.036)
    );
    assert_eq!(action.affine(5).unnormalize(0.7), 0.035);

    let out = dir("constant-joint-plain");
    let e = err(&export_tiny(&out, file, &["--norm-convention", "plain"]));
    assert!(
        e.contains("state.normalization[5]") && e.contains("gripper") && e.contains("convention"),
        "{e}"
    );
    assert!(!out.exists());
}

#[test]
fn export_reads_the_head_sizes_from_the_checkpoint() {
    // The case: a checkpoint with another head than the flags' defaults (14 joints, two
    // hidden layers of 256, one action per inference).
    let arch = PolicyArch {
        encoder: EncoderKind::Resnet18,
        cameras: vec!["front".into()],
        shared_encoder: false,
        state_dim: 14,
        action_dim: 14,
        hidden: vec![256, 256],
        head: HeadKind::Single,
    };
    let layout = KeyLayout {
        per_camera_encoder: "encoder.".into(),
        ..KeyLayout::default()
    };
    let mut rec = RecordingWeights::new(SeededWeights::new(3), layout);
    build_policy(&arch, &mut rec).expect("build");
    let ckpt = dir("ckpt14").with_extension("safetensors");
    save_safetensors(&ckpt, &rec.into_tensors()).expect("save");
    let export = |out: &Path, extra: &[&str]| {
        let mut args = vec!["export", "--arch", "resnet18", "--weights", s(&ckpt)];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--out", s(out)]);
        tools(&args)
    };

    // No flags: every size comes from the checkpoint, and the tool says which.
    let out = dir("head-inferred");
    let run = export(&out, &[]);
    ok(&run);
    for said in [
        "--state-dim 14",
        "--hidden 256,256",
        "--head single",
        "--action-dim 14",
    ] {
        assert!(run.stderr.contains(said), "{said}: {}", run.stderr);
    }
    let m = Bundle::load(&out).expect("loads").manifest;
    assert_eq!(m.state.names.len(), 14);
    assert_eq!(m.action.names.len(), 14);
    assert_eq!(
        m.action.output,
        reflex_models::manifest::ActionOutput::Single
    );

    // --action-dim splits the last layer's 14 outputs: a chunk of 2 steps of 7.
    let out = dir("head-chunk");
    ok(&export(&out, &["--action-dim", "7"]));
    let m = Bundle::load(&out).expect("loads").manifest;
    assert_eq!(
        m.action.output,
        reflex_models::manifest::ActionOutput::Chunk { horizon: 2 }
    );
    assert_eq!(m.action.names.len(), 7);

    // A flag that contradicts the checkpoint: told the value it needs; nothing written.
    for (flag, value, hint) in [
        ("--state-dim", "6", "use --state-dim 14"),
        ("--hidden", "256", "use --hidden 256,256"),
        ("--head", "chunk:4", "not a multiple of the horizon"),
    ] {
        let out = dir("head-wrong");
        let e = err(&export(&out, &[flag, value]));
        assert!(e.contains(hint), "{flag} {value}: {e}");
        assert!(!out.exists());
    }
}
