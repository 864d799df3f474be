//! Manifests for the reference policies.
//!
//! The demo, the tests and `reflex-tools export --arch` all need a complete, plausible bundle
//! around a reference network: a 6-DoF arm with a gripper (the SO-100 / Koch layout LeRobot users
//! know), one or more 640x480 cameras preprocessed the torchvision/ImageNet way, realistic
//! normalization statistics and hard limits. This module writes that manifest; the network itself
//! comes from [`crate::onnx`].

use crate::manifest::*;
use crate::onnx::{HeadKind, PolicyArch};
use std::collections::BTreeMap;

/// The reference arm's joints: (name, unit, min, max, max rate per second).
pub const ARM_JOINTS: [(&str, &str, f32, f32, f32); 6] = [
    ("shoulder_pan", "rad", -2.0, 2.0, 1.5),
    ("shoulder_lift", "rad", -1.6, 1.6, 1.5),
    ("elbow_flex", "rad", -1.6, 1.6, 1.5),
    ("wrist_flex", "rad", -1.8, 1.8, 2.0),
    ("wrist_roll", "rad", -2.8, 2.8, 2.0),
    ("gripper", "m", 0.0, 0.08, 0.2),
];

/// Joint `i` of a `dim`-dimensional reference vector: the arm's joints for dim 6, generic
/// `joint_i` in radians otherwise.
fn joint(i: usize, dim: usize) -> (String, String, f32, f32, f32) {
    if dim == ARM_JOINTS.len() {
        let (n, u, lo, hi, r) = ARM_JOINTS[i];
        (n.into(), u.into(), lo, hi, r)
    } else {
        (format!("joint_{i}"), "rad".into(), -1.5, 1.5, 1.5)
    }
}

/// A default capture for reference cameras: 640x480 YUYV at 30 fps, what most UVC cameras give.
pub fn default_capture() -> CaptureSpec {
    CaptureSpec {
        width: 640,
        height: 480,
        format: PixelFormat::Yuyv,
        fps: 30,
    }
}

/// ImageNet preprocessing to 224x224 with antialiased bilinear resize (torchvision defaults).
pub fn imagenet_preprocess() -> PreprocessSpec {
    PreprocessSpec {
        crop: None,
        resize: ResizeSpec {
            width: 224,
            height: 224,
            interpolation: Interpolation::Bilinear,
            antialias: true,
            dtype: ResizeDtype::Float,
        },
        color: ColorOrder::Rgb,
        mean: vec![0.485, 0.456, 0.406],
        std: vec![0.229, 0.224, 0.225],
        layout: Layout::Nchw,
    }
}

/// The complete manifest of a reference policy; `models[0].file` is `policy.onnx`, its hash is
/// filled in by [`crate::bundle::write_bundle`].
pub fn reference_manifest(arch: &PolicyArch, name: &str, capture: CaptureSpec) -> Manifest {
    let mut state_names = vec![];
    let mut state_units = vec![];
    let (mut smean, mut sstd) = (vec![], vec![]);
    for i in 0..arch.state_dim {
        let (n, u, lo, hi, _) = joint(i, arch.state_dim);
        state_names.push(n);
        state_units.push(u);
        smean.push(0.5 * (lo + hi));
        sstd.push(0.25 * (hi - lo));
    }
    let mut action_names = vec![];
    let mut action_units = vec![];
    let (mut amean, mut astd, mut min, mut max, mut rate) =
        (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..arch.action_dim {
        let (n, u, lo, hi, r) = joint(i, arch.action_dim);
        action_names.push(n);
        action_units.push(u);
        amean.push(0.5 * (lo + hi));
        astd.push(0.25 * (hi - lo));
        min.push(lo);
        max.push(hi);
        rate.push(r);
    }
    let (output, control) = match arch.head {
        HeadKind::Single => (
            ActionOutput::Single,
            ControlSpec {
                rate_hz: 10.0,
                chunk_rate_hz: None,
                steps_per_inference: 1,
                temporal_ensemble_m: None,
                latency_compensation: true,
                watchdog_periods: 3,
            },
        ),
        HeadKind::Chunk { horizon } => (
            ActionOutput::Chunk { horizon },
            ControlSpec {
                rate_hz: 20.0,
                chunk_rate_hz: None,
                steps_per_inference: (horizon / 4).max(1),
                temporal_ensemble_m: Some(0.01),
                latency_compensation: true,
                watchdog_periods: 5,
            },
        ),
    };
    let cameras = arch
        .cameras
        .iter()
        .map(|c| CameraSpec {
            name: c.clone(),
            onnx_input: format!("image.{c}"),
            capture,
            preprocess: imagenet_preprocess(),
            max_age_ms: 200,
            viewpoint: None,
        })
        .collect();
    let mut provenance = BTreeMap::new();
    provenance.insert(
        "source".to_string(),
        toml::Value::String("reference architecture with generated weights".into()),
    );
    provenance.insert(
        "architecture".to_string(),
        toml::Value::try_from(arch).unwrap_or_else(|e| toml::Value::String(e.to_string())),
    );
    Manifest {
        format_version: FORMAT_VERSION,
        name: name.to_string(),
        description: String::new(),
        control,
        models: vec![ModelFile {
            role: ModelRole::Policy,
            file: "policy.onnx".into(),
            sha256: "0".repeat(64),
            precision: Precision::Fp32,
            backends: vec![BackendKind::Tract, BackendKind::Tensorrt],
            data_files: vec![],
        }],
        cameras,
        state: StateSpec {
            onnx_input: (arch.state_dim > 0).then(|| "state".to_string()),
            names: state_names,
            units: state_units,
            normalization: Normalization::MeanStd {
                mean: smean,
                std: sstd,
                convention: Convention::Plain,
            },
            max_age_ms: 200,
        },
        action: ActionSpec {
            onnx_output: "action".into(),
            names: action_names,
            units: action_units,
            output,
            normalization: Normalization::MeanStd {
                mean: amean,
                std: astd,
                convention: Convention::Plain,
            },
            limits: Some(ActionLimits {
                min,
                max,
                max_rate: rate,
            }),
            parity_tolerance: None,
        },
        can: CanSpec::default(),
        diffusion: None,
        provenance,
    }
}

/// Why a reference bundle could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error(transparent)]
    Export(#[from] crate::onnx::OnnxExportError),
    #[error(transparent)]
    Bundle(#[from] crate::bundle::BundleError),
}

/// Builds the network of `arch` with `weights` and writes a complete bundle around it.
pub fn write_reference_bundle(
    dir: &std::path::Path,
    arch: &PolicyArch,
    weights: &mut dyn crate::onnx::WeightSource,
    name: &str,
    capture: CaptureSpec,
) -> Result<Manifest, ReferenceError> {
    let bytes = crate::onnx::export_policy(arch, weights)?;
    let mut m = reference_manifest(arch, name, capture);
    crate::bundle::write_bundle(dir, &mut m, &[&bytes])?;
    Ok(m)
}

/// The architecture `reflex demo` runs: ResNet-18, one 640x480 camera `front`, the 6-DoF arm,
/// a chunk head of 16 steps behind a 256-wide hidden layer.
pub fn demo_arch() -> PolicyArch {
    PolicyArch {
        encoder: crate::onnx::EncoderKind::Resnet18,
        cameras: vec!["front".into()],
        shared_encoder: false,
        state_dim: 6,
        action_dim: 6,
        hidden: vec![256],
        head: HeadKind::Chunk { horizon: 16 },
    }
}

/// The demo bundle: [`demo_arch`] with seed-0 weights.
pub fn write_demo_bundle(dir: &std::path::Path) -> Result<Manifest, ReferenceError> {
    let mut w = crate::onnx::SeededWeights::new(0);
    write_reference_bundle(
        dir,
        &demo_arch(),
        &mut w,
        "reference-resnet18-chunk",
        default_capture(),
    )
}

/// An MIT-mode `[can]` section for an arm of `dims` rotary joints, as a starting point for a
/// robot's own and for tests: motor `i` has CAN ID `i + 1` and replies on `0x11 + i`, Damiao
/// DM-J4310-like packing ranges (12.5 rad, 30 rad/s, 10 N·m), kp 20, kd 1; Damiao motors get a
/// 100 ms command timeout. MIT motors take radians: the manifest's action units must be `rad`.
pub fn example_mit_can(dims: usize, flavor: MitFlavor, stop: MitStop) -> CanSpec {
    CanSpec::Mit(MitSpec {
        flavor,
        command_timeout_ms: (flavor == MitFlavor::Damiao).then_some(100),
        stop,
        motors: (0..dims as u32)
            .map(|i| MitMotor {
                id: i + 1,
                feedback_id: Some(0x11 + i),
                p_max: 12.5,
                v_max: 30.0,
                t_max: 10.0,
                kp_max: 500.0,
                kd_max: 5.0,
                kp: 20.0,
                kd: 1.0,
                damp_kd: 0.5,
                position_state: None,
                velocity_state: None,
                torque_state: None,
            })
            .collect(),
    })
}

/// Rewrites the manifest of the bundle in `dir` to speak `can` (and its units to `rad`, as MIT
/// motors need), keeping its model files: the reference bundles on MIT motors, for tests and
/// demos.
pub fn set_bundle_can(dir: &std::path::Path, can: CanSpec) -> Result<Manifest, ReferenceError> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|error| crate::bundle::BundleError::Io {
        path: path.clone(),
        op: "read",
        error,
    })?;
    let mut m = crate::bundle::parse_manifest(&text, &path)?;
    if matches!(can, CanSpec::Mit(_)) {
        m.action.units = vec!["rad".into(); m.action.units.len()];
        m.state.units = vec!["rad".into(); m.state.units.len()];
    }
    m.can = can;
    crate::bundle::validate_manifest(&m, &path)?;
    let text = m
        .to_toml()
        .map_err(|e| crate::bundle::BundleError::field(&path, "can", e.to_string()))?;
    // Atomic: a failed write leaves the previous manifest, never a truncated one.
    crate::output::write_file(
        &path,
        text.as_bytes(),
        crate::output::Replace::Any,
        &crate::output::ANY_FILE,
    )
    .map_err(crate::bundle::BundleError::from)?;
    Ok(m)
}
