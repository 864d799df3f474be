//! The reference policies as real graphs: sizes as PyTorch counts them, reproducible bytes, every
//! variant loading and running in tract, agreement with ONNX Runtime, and checkpoints loading by
//! torchvision/timm names.
//!
//! The ONNX Runtime comparison needs `python3` with onnx, onnxruntime and numpy
//! (scripts/setup.sh installs them); without them it fails, unless REFLEX_SKIP_PY=1 (TESTING.md).

use reflex_models::npy::{read_npy, write_npy, NpyArray};
use reflex_models::onnx::{
    build_policy, export_policy, macs, param_count, resnet18, save_safetensors, vit, EncoderKind,
    HeadKind, Init, KeyLayout, NamedTensor, OnnxExportError, Owner, Param, PolicyArch,
    RecordingWeights, SafetensorsWeights, SeededWeights, WeightSource,
};
use reflex_testkit::dirs::WorkDir;
use reflex_testkit::python;
use safetensors::tensor::{Dtype, TensorView};
use std::path::Path;
use std::time::Instant;
use tract_onnx::prelude::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn arch(encoder: EncoderKind, cameras: &[&str], shared: bool, head: HeadKind) -> PolicyArch {
    PolicyArch {
        encoder,
        cameras: cameras.iter().map(|c| c.to_string()).collect(),
        shared_encoder: shared,
        state_dim: 6,
        action_dim: 6,
        hidden: vec![256, 256],
        head,
    }
}

const CHUNK: HeadKind = HeadKind::Chunk { horizon: 10 };

/// A fresh directory for this test's files (removed when the test passes).
fn scratch(name: &str) -> WorkDir {
    WorkDir::new(&format!("graphs-{name}"))
}

/// Deterministic test inputs in [-2, 2) (xorshift64*).
fn inputs_for(arch: &PolicyArch, seed: u64) -> Vec<(String, NpyArray)> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        (s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
    };
    let mut v = vec![];
    for c in &arch.cameras {
        let shape = [1, 3, 224, 224];
        let data = (0..3 * 224 * 224).map(|_| next()).collect();
        v.push((format!("image.{c}"), NpyArray::f32(&shape, data)));
    }
    if arch.state_dim > 0 {
        let data = (0..arch.state_dim).map(|_| next() / 2.0).collect();
        v.push((
            "state".to_string(),
            NpyArray::f32(&[1, arch.state_dim], data),
        ));
    }
    v
}

fn run_tract(model: &Path, inputs: &[(String, NpyArray)]) -> TractResult<(Vec<usize>, Vec<f32>)> {
    let plan = tract_onnx::onnx()
        .model_for_path(model)?
        .into_optimized()?
        .into_runnable()?;
    let values: TVec<TValue> = inputs
        .iter()
        .map(|(_, a)| {
            let t = tract_ndarray::ArrayD::from_shape_vec(a.shape.clone(), a.data.to_f32())?;
            Ok(t.into_tensor().into_tvalue())
        })
        .collect::<TractResult<_>>()?;
    let out = plan.run(values)?;
    let view = out[0].to_plain_array_view::<f32>()?;
    Ok((view.shape().to_vec(), view.iter().copied().collect()))
}

#[test]
fn parameter_counts_are_pytorchs() -> TestResult {
    assert_eq!(resnet18::param_count(), 11_176_512);
    assert_eq!(vit::param_count(), 21_665_664);
    // The counts are formulas; check them against the tensors the graph builders really ask for.
    for a in [
        arch(EncoderKind::Resnet18, &["top", "wrist"], false, CHUNK),
        arch(EncoderKind::VitS16, &["top"], true, HeadKind::Single),
    ] {
        let mut rec = RecordingWeights::new(SeededWeights::new(0), KeyLayout::default());
        build_policy(&a, &mut rec)?;
        let trainable: usize = rec
            .into_tensors()
            .iter()
            .filter(|t| !t.key.ends_with("running_mean") && !t.key.ends_with("running_var"))
            .map(|t| t.data.len())
            .sum();
        assert_eq!(trainable as u64, param_count(&a), "{a:?}");
    }
    // A shared encoder counts once; the head is 2 * 512 + 6 -> 256 -> 256 -> 60.
    let head = (1030 * 256 + 256) + (256 * 256 + 256) + (256 * 60 + 60);
    let shared = arch(EncoderKind::Resnet18, &["a", "b"], true, CHUNK);
    assert_eq!(param_count(&shared), 11_176_512 + head);
    Ok(())
}

#[test]
fn macs_match_published_figures() {
    // torchvision lists ResNet-18 at 1.81 GFLOPS and timm ViT-S/16 at 4.61 GMACs (both MACs).
    let r = resnet18::macs() as f64 / 1e9;
    let v = vit::macs() as f64 / 1e9;
    assert!((1.80..1.83).contains(&r), "{r}");
    assert!((4.55..4.65).contains(&v), "{v}");
    let a = arch(EncoderKind::VitS16, &["a", "b"], true, HeadKind::Single);
    assert!(macs(&a) > 2 * vit::macs());
}

#[test]
fn same_seed_same_bytes() -> TestResult {
    let a = arch(
        EncoderKind::Resnet18,
        &["top", "wrist"],
        false,
        HeadKind::Single,
    );
    let one = export_policy(&a, &mut SeededWeights::new(1))?;
    let again = export_policy(&a, &mut SeededWeights::new(1))?;
    let other = export_policy(&a, &mut SeededWeights::new(2))?;
    assert!(one == again, "same seed gave different bytes");
    assert!(one != other, "different seeds gave the same bytes");
    Ok(())
}

/// max |a - b| over max(1, max |b|): the relative error the comparisons bound.
fn relative_error(ours: &[f32], reference: &[f32]) -> (f32, f32) {
    assert_eq!(ours.len(), reference.len());
    let scale = reference.iter().fold(1f32, |m, v| m.max(v.abs()));
    let err = ours
        .iter()
        .zip(reference)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    (err, scale)
}

/// Every kind of graph runs in tract with bounded outputs and agrees with ONNX Runtime.
#[test]
fn graphs_run_in_tract_and_match_onnx_runtime() -> TestResult {
    let archs = [
        (
            "resnet_1cam_single",
            arch(EncoderKind::Resnet18, &["top"], false, HeadKind::Single),
        ),
        (
            "resnet_2cam_shared_chunk",
            arch(EncoderKind::Resnet18, &["top", "wrist"], true, CHUNK),
        ),
        (
            "resnet_2cam_separate_single",
            arch(
                EncoderKind::Resnet18,
                &["top", "wrist"],
                false,
                HeadKind::Single,
            ),
        ),
        (
            "vit_1cam_chunk_no_state",
            PolicyArch {
                state_dim: 0,
                ..arch(EncoderKind::VitS16, &["top"], false, CHUNK)
            },
        ),
        (
            "vit_2cam_shared_single",
            arch(
                EncoderKind::VitS16,
                &["top", "wrist"],
                true,
                HeadKind::Single,
            ),
        ),
        (
            "vit_2cam_separate_chunk",
            arch(EncoderKind::VitS16, &["left", "right"], false, CHUNK),
        ),
    ];
    let root = scratch("parity");
    let mut ort_args: Vec<String> = vec![];
    let mut tract_outputs = vec![];
    for (i, (name, a)) in archs.iter().enumerate() {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)?;
        let t0 = Instant::now();
        let bytes = export_policy(a, &mut SeededWeights::new(i as u64))?;
        let model = dir.join("model.onnx");
        std::fs::write(&model, &bytes)?;
        let inputs = inputs_for(a, 100 + i as u64);
        if !ort_args.is_empty() {
            ort_args.push("--and".into());
        }
        ort_args.push(model.display().to_string());
        for (input, array) in &inputs {
            let file = dir.join(format!("{input}.npy"));
            write_npy(&file, array)?;
            ort_args.push(format!("{input}={}", file.display()));
        }
        ort_args.push(dir.join("ort").display().to_string());
        let t1 = Instant::now();
        let (shape, out) = run_tract(&model, &inputs)?;
        let t2 = Instant::now();
        assert_eq!(shape, a.action_shape(), "{name}");
        let max = out.iter().fold(0f32, |m, v| m.max(v.abs()));
        let mean = out.iter().sum::<f32>() / out.len() as f32;
        let std = (out.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / out.len() as f32).sqrt();
        assert!(
            out.iter().all(|v| v.is_finite()),
            "{name}: non-finite action"
        );
        assert!(
            max < 20.0 && std > 0.01,
            "{name}: actions not O(1): max |a| {max}, std {std}"
        );
        eprintln!(
            "{name}: {:.1} MB, build {:.2}s, tract load+optimize+run {:.2}s, max |action| {max:.3}, std {std:.3}",
            bytes.len() as f64 / 1e6,
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
        );
        tract_outputs.push((name, dir, out));
    }

    let t = Instant::now();
    if python::reference("ort_run.py", &ort_args, "numpy onnx onnxruntime").is_none() {
        return Ok(());
    }
    eprintln!(
        "ONNX Runtime, all models: {:.2}s",
        t.elapsed().as_secs_f64()
    );
    for (name, dir, ours) in tract_outputs {
        let reference = read_npy(&dir.join("ort/action.npy"))?;
        let (err, scale) = relative_error(&ours, &reference.data.to_f32());
        eprintln!("{name}: tract vs ONNX Runtime max |diff| {err:.2e} (scale {scale:.3})");
        assert!(
            err <= 1e-4 * scale,
            "{name}: tract and ONNX Runtime differ by {err} (scale {scale})"
        );
    }
    Ok(())
}

/// The graphs compute what torchvision's and timm's modules compute from the same state dict,
/// by an independent numpy implementation of their forward passes.
#[test]
fn graphs_match_numpy_reimplementation_of_torchvision_and_timm() -> TestResult {
    let root = scratch("numpy_ref");
    for (name, a) in [
        (
            "resnet_2cam_separate_chunk",
            arch(EncoderKind::Resnet18, &["top", "wrist"], false, CHUNK),
        ),
        (
            "vit_2cam_shared_single",
            arch(
                EncoderKind::VitS16,
                &["top", "wrist"],
                true,
                HeadKind::Single,
            ),
        ),
    ] {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)?;
        let (bytes, tensors) = seeded_state_dict(&a, KeyLayout::default())?;
        let model = dir.join("model.onnx");
        std::fs::write(&model, &bytes)?;
        let checkpoint = dir.join("policy.safetensors");
        save_safetensors(&checkpoint, &tensors)?;
        let arch_file = dir.join("arch.json");
        std::fs::write(&arch_file, serde_json::to_string(&a)?)?;
        let inputs = inputs_for(&a, 7);
        let mut args = vec![
            arch_file.display().to_string(),
            checkpoint.display().to_string(),
        ];
        for (input, array) in &inputs {
            let file = dir.join(format!("{input}.npy"));
            write_npy(&file, array)?;
            args.push(format!("{input}={}", file.display()));
        }
        let out = dir.join("numpy_action.npy");
        args.push(out.display().to_string());
        let (_, ours) = run_tract(&model, &inputs)?;
        let t = Instant::now();
        if python::reference("numpy_ref.py", &args, "numpy safetensors").is_none() {
            return Ok(());
        }
        let reference = read_npy(&out)?;
        assert_eq!(reference.shape, a.action_shape(), "{name}");
        let (err, scale) = relative_error(&ours, &reference.data.to_f32());
        eprintln!(
            "{name}: tract vs numpy reference max |diff| {err:.2e} (scale {scale:.3}), numpy {:.2}s",
            t.elapsed().as_secs_f64()
        );
        assert!(
            err <= 1e-4 * scale,
            "{name}: tract and the numpy reference differ by {err} (scale {scale})"
        );
    }
    Ok(())
}

/// The seeded state dict under `layout`, and the graph built from it.
fn seeded_state_dict(
    a: &PolicyArch,
    layout: KeyLayout,
) -> Result<(Vec<u8>, Vec<NamedTensor>), OnnxExportError> {
    let mut rec = RecordingWeights::new(SeededWeights::new(5), layout);
    let bytes = export_policy(a, &mut rec)?;
    Ok((bytes, rec.into_tensors()))
}

#[test]
fn safetensors_checkpoint_round_trips() -> TestResult {
    let dir = scratch("round_trip");
    for (i, a) in [
        arch(EncoderKind::Resnet18, &["top", "wrist"], false, CHUNK),
        arch(
            EncoderKind::VitS16,
            &["top", "wrist"],
            true,
            HeadKind::Single,
        ),
    ]
    .iter()
    .enumerate()
    {
        let (seeded, tensors) = seeded_state_dict(a, KeyLayout::default())?;
        let keys: Vec<&str> = tensors.iter().map(|t| t.key.as_str()).collect();
        let expected = match a.encoder {
            EncoderKind::Resnet18 => [
                "encoders.top.layer2.0.downsample.1.running_var",
                "encoders.wrist.conv1.weight",
            ],
            EncoderKind::VitS16 => ["encoder.blocks.11.attn.qkv.weight", "encoder.pos_embed"],
        };
        for key in expected.iter().chain(&["head.0.weight", "head.4.bias"]) {
            assert!(keys.contains(key), "state dict lacks {key}");
        }
        let path = dir.join(format!("policy{i}.safetensors"));
        save_safetensors(&path, &tensors)?;
        let loaded = export_policy(a, &mut SafetensorsWeights::open(&path)?)?;
        assert!(
            loaded == seeded,
            "graph from the checkpoint differs from the seeded one"
        );
    }
    Ok(())
}

#[test]
fn custom_prefixes_and_ignored_keys() -> TestResult {
    let dir = scratch("prefix");
    let a = arch(EncoderKind::Resnet18, &["top"], true, HeadKind::Single);
    // LeRobot ACT keeps its torchvision ResNet under `model.backbone.`.
    let layout = KeyLayout {
        shared_encoder: "model.backbone.".into(),
        head: "model.action_head.".into(),
        ..KeyLayout::default()
    };
    let (seeded, tensors) = seeded_state_dict(&a, layout.clone())?;
    // What torch saves besides: BN batch counters (int64) and unrelated modules.
    let counter = 7i64.to_le_bytes();
    let other = [0u8; 16];
    let mut extra = vec![
        (
            "model.backbone.bn1.num_batches_tracked".to_string(),
            TensorView::new(Dtype::I64, vec![], &counter)?,
        ),
        (
            "model.backbone.layer1.0.bn2.num_batches_tracked".to_string(),
            TensorView::new(Dtype::I64, vec![], &counter)?,
        ),
        (
            "model.transformer.weight".to_string(),
            TensorView::new(Dtype::F32, vec![4], &other)?,
        ),
    ];
    let raw: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    for (t, b) in tensors.iter().zip(&raw) {
        extra.push((
            t.key.clone(),
            TensorView::new(Dtype::F32, t.shape.clone(), b)?,
        ));
    }
    let path = dir.join("act.safetensors");
    safetensors::serialize_to_file(extra, &None, &path)?;
    let loaded = export_policy(
        &a,
        &mut SafetensorsWeights::open(&path)?.with_layout(layout),
    )?;
    assert!(
        loaded == seeded,
        "graph from the prefixed checkpoint differs from the seeded one"
    );
    // With the default layout nothing is found, and the error says so for every key.
    let err = export_policy(&a, &mut SafetensorsWeights::open(&path)?)
        .expect_err("default layout must not fit");
    let text = err.to_string();
    assert!(
        text.contains("encoder.layer4.1.bn2.running_var") && text.contains("head.4.weight"),
        "{text}"
    );
    Ok(())
}

#[test]
fn checkpoint_problems_are_reported_together() -> TestResult {
    let dir = scratch("bad_checkpoint");
    let a = arch(EncoderKind::Resnet18, &["top"], true, HeadKind::Single);
    let (_, mut tensors) = seeded_state_dict(&a, KeyLayout::default())?;
    tensors.retain(|t| t.key != "encoder.layer3.1.bn1.running_mean" && t.key != "head.2.bias");
    for t in tensors
        .iter_mut()
        .filter(|t| t.key == "encoder.layer1.0.conv2.weight")
    {
        t.shape = vec![64, 64, 9];
    }
    tensors.push(NamedTensor {
        key: "encoder.fc.weight".into(),
        shape: vec![2],
        data: vec![0.0; 2],
    });
    tensors.push(NamedTensor {
        key: "encoder.bn1.num_batches_tracked".into(),
        shape: vec![],
        data: vec![3.0],
    });
    tensors.push(NamedTensor {
        key: "normalize.mean".into(),
        shape: vec![1],
        data: vec![0.0],
    });
    let path = dir.join("bad.safetensors");
    save_safetensors(&path, &tensors)?;
    let err = export_policy(&a, &mut SafetensorsWeights::open(&path)?)
        .expect_err("bad checkpoint must fail");
    let OnnxExportError::CheckpointMismatch { path: p, mismatch } = &err else {
        panic!("wrong error: {err}");
    };
    assert_eq!(p, &path);
    let missing: Vec<&str> = mismatch.missing.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        missing,
        ["encoder.layer3.1.bn1.running_mean", "head.2.bias"]
    );
    assert_eq!(mismatch.unexpected, ["encoder.fc.weight"]);
    assert_eq!(mismatch.mis_shaped.len(), 1);
    assert_eq!(mismatch.mis_shaped[0].found, [64, 64, 9]);
    let text = err.to_string();
    eprintln!("{text}");
    for needle in [
        path.display().to_string().as_str(),
        "missing: encoder.layer3.1.bn1.running_mean [256]",
        "missing: head.2.bias [256]",
        "unexpected: encoder.fc.weight",
        "mis-shaped: encoder.layer1.0.conv2.weight expected [64, 64, 3, 3], found [64, 64, 9]",
    ] {
        assert!(text.contains(needle), "error lacks `{needle}`:\n{text}");
    }
    assert!(
        !text.contains("num_batches_tracked") && !text.contains("normalize.mean"),
        "{text}"
    );
    Ok(())
}

#[test]
fn half_precision_checkpoints_read_as_f32() -> TestResult {
    let dir = scratch("half");
    let values = [1.5f32, -0.25, 3.0];
    let f16: Vec<u8> = values
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    let bf16: Vec<u8> = values
        .iter()
        .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
        .collect();
    let f64: Vec<u8> = values
        .iter()
        .flat_map(|&v| f64::from(v).to_le_bytes())
        .collect();
    let i32: Vec<u8> = values
        .iter()
        .flat_map(|&v| (v as i32).to_le_bytes())
        .collect();
    let tensors = vec![
        ("head.0.weight", TensorView::new(Dtype::F16, vec![3], &f16)?),
        ("head.0.bias", TensorView::new(Dtype::BF16, vec![3], &bf16)?),
        ("head.2.weight", TensorView::new(Dtype::F64, vec![3], &f64)?),
        ("head.2.bias", TensorView::new(Dtype::I32, vec![3], &i32)?),
    ];
    let path = dir.join("half.safetensors");
    safetensors::serialize_to_file(tensors, &None, &path)?;
    let mut w = SafetensorsWeights::open(&path)?;
    let init = Init::Uniform {
        low: 0.0,
        high: 1.0,
    };
    let mut get = |name| {
        w.tensor(&Param {
            owner: Owner::Head,
            name,
            shape: &[3],
            init,
        })
    };
    assert_eq!(get("0.weight")?, values);
    assert_eq!(get("0.bias")?, values);
    assert_eq!(get("2.weight")?, values);
    get("2.bias")?;
    let err = w.finish().expect_err("an int32 tensor is not a weight");
    assert!(
        err.to_string()
            .contains("unreadable dtype: head.2.bias is I32"),
        "{err}"
    );
    Ok(())
}

#[test]
fn architecture_reads_from_toml() -> TestResult {
    let text = r#"
        encoder = "vit-s16"
        cameras = ["top", "wrist"]
        shared_encoder = true
        state_dim = 6
        action_dim = 7
        hidden = [512]
        head = { kind = "chunk", horizon = 50 }
    "#;
    let a: PolicyArch = toml::from_str(text)?;
    assert_eq!(a.encoder, EncoderKind::VitS16);
    assert_eq!(a.head, HeadKind::Chunk { horizon: 50 });
    assert_eq!(a.action_shape(), [1, 50, 7]);
    let back: PolicyArch = toml::from_str(&toml::to_string(&a)?)?;
    assert_eq!(back, a);
    let single: PolicyArch = toml::from_str(
        "encoder = \"resnet18\"\ncameras = [\"c\"]\nstate_dim = 0\naction_dim = 2\nhead = { kind = \"single\" }",
    )?;
    assert_eq!((single.shared_encoder, single.hidden.len()), (false, 0));
    for bad in [
        PolicyArch {
            cameras: vec![],
            ..single.clone()
        },
        PolicyArch {
            cameras: vec!["a".into(), "a".into()],
            ..single.clone()
        },
        PolicyArch {
            cameras: vec!["front.left".into()],
            ..single.clone()
        },
        PolicyArch {
            hidden: vec![0],
            ..single.clone()
        },
        PolicyArch {
            head: HeadKind::Chunk { horizon: 0 },
            ..single.clone()
        },
    ] {
        let err =
            build_policy(&bad, &mut SeededWeights::new(0)).expect_err("invalid arch must fail");
        assert!(matches!(err, OnnxExportError::InvalidArch(_)), "{err}");
    }
    Ok(())
}
