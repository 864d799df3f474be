//! Every normalization convention against its framework's own formula (tests/python/normalize_ref.py
//! writes LeRobot 0.6.1's and openpi's expressions out as their sources have them), with
//! statistics where the epsilon decides the result: a std of 1e-9, a joint that never moved
//! (std = 0, min = max), ranges of 1e-9. Needs `python3` with numpy; without it the comparison
//! fails, unless REFLEX_SKIP_ORT=1 (then only the hand-derived values below are checked).

use reflex_models::bundle::validate_manifest;
use reflex_models::manifest::{Convention, Normalization};
use reflex_models::onnx::{EncoderKind, HeadKind, PolicyArch};
use reflex_models::reference::{default_capture, reference_manifest};
use std::path::{Path, PathBuf};
use std::process::Command;

fn norm(kind: &str, a: &[f32], b: &[f32], convention: Convention) -> Normalization {
    let (a, b) = (a.to_vec(), b.to_vec());
    match kind {
        "mean_std" => Normalization::MeanStd {
            mean: a,
            std: b,
            convention,
        },
        "min_max" => Normalization::MinMax {
            min: a,
            max: b,
            convention,
        },
        "quantile" => Normalization::Quantile {
            q01: a,
            q99: b,
            convention,
        },
        "quantile10" => Normalization::Quantile10 {
            q10: a,
            q90: b,
            convention,
        },
        other => panic!("{other}"),
    }
}

/// One case: a normalization, physical rows to normalize, normalized rows to unnormalize.
struct Case {
    norm: Normalization,
    x: Vec<Vec<f32>>,
    y: Vec<Vec<f32>>,
}

/// Normalized rows: the network's outputs span well past [-1, 1].
fn y_rows() -> Vec<Vec<f32>> {
    vec![
        vec![1.0, -2.0, 0.5, 3.0],
        vec![-1.0, 0.25, -0.75, 0.0],
        vec![0.0, 7.5, 1e-3, -12.0],
    ]
}

fn cases() -> Vec<Case> {
    use Convention::*;
    let mut out = vec![];
    // Dimension 0: std 1e-9 (the epsilon dominates), 2: a joint that never moved (std 0, only
    // with an epsilon; plain gets 3e-7 instead), 1 and 3: ordinary.
    let mean = [0.0, -0.25, 0.035, 0.5];
    let x_ms = vec![
        vec![1e-9, 0.3, 0.035, 0.5],
        vec![2e-8, -1.0, 0.035001, -1.5],
        vec![-3e-9, 0.0, 0.034999, 2.25],
    ];
    for (conv, std) in [
        (Lerobot, [1e-9, 0.57, 0.0, 2.0]),
        (Openpi, [1e-9, 0.57, 0.0, 2.0]),
        (Plain, [1e-9, 0.57, 3e-7, 2.0]),
    ] {
        out.push(Case {
            norm: norm("mean_std", &mean, &std, conv),
            x: x_ms.clone(),
            y: y_rows(),
        });
    }
    // Ranges: dimension 0 never moved (lo == hi) where an epsilon allows it, 1 spans 1e-9, 2 and
    // 3 are ordinary.
    let x_r = vec![
        vec![0.035, 5e-10, 0.5, -2.0],
        vec![0.035001, 1e-9, -1.0, 0.0],
        vec![0.034999, -2e-9, 0.999, 3.5],
    ];
    let lo = [0.035, 0.0, -1.0, -3.0];
    let hi_eps = [0.035, 1e-9, 1.0, 4.0];
    let hi_plain = [0.036, 1e-9, 1.0, 4.0];
    for kind in ["min_max", "quantile", "quantile10"] {
        out.push(Case {
            norm: norm(kind, &lo, &hi_eps, Lerobot),
            x: x_r.clone(),
            y: y_rows(),
        });
        out.push(Case {
            norm: norm(kind, &lo, &hi_plain, Plain),
            x: x_r.clone(),
            y: y_rows(),
        });
    }
    // openpi has only the quantile form among the ranges; its epsilon is always added.
    out.push(Case {
        norm: norm("quantile", &lo, &hi_eps, Openpi),
        x: x_r.clone(),
        y: y_rows(),
    });
    out
}

fn apply(n: &Normalization, rows: &[Vec<f32>], inverse: bool) -> Vec<Vec<f32>> {
    rows.iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(i, &v)| {
                    let a = n.affine(i);
                    if inverse {
                        a.unnormalize(v)
                    } else {
                        a.normalize(v)
                    }
                })
                .collect()
        })
        .collect()
}

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("normalization");
    std::fs::create_dir_all(&d).expect("mkdir");
    d.join(name)
}

/// Runs normalize_ref.py on `cases`; `None` when REFLEX_SKIP_ORT=1.
/// Rows of values, one per input row.
type Rows = Vec<Vec<f64>>;

fn reference(cases: &[Case]) -> Option<Vec<(Rows, Rows)>> {
    if std::env::var("REFLEX_SKIP_ORT").as_deref() == Ok("1") {
        eprintln!("REFLEX_SKIP_ORT=1: skipped the comparison with normalize_ref.py");
        return None;
    }
    let json: Vec<serde_json::Value> = cases
        .iter()
        .map(|c| {
            let stats: serde_json::Map<String, serde_json::Value> = c
                .norm
                .vectors()
                .into_iter()
                .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
                .collect();
            serde_json::json!({
                "convention": c.norm.convention().as_str(),
                "kind": c.norm.kind_str(),
                "stats": stats,
                "x": c.x,
                "y": c.y,
            })
        })
        .collect();
    let (inp, outp) = (scratch("cases.json"), scratch("ref.json"));
    std::fs::write(&inp, serde_json::to_string(&json).expect("json")).expect("write");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/normalize_ref.py");
    let help = "the reference needs python3 with numpy (scripts/setup.sh installs it); set \
                REFLEX_SKIP_ORT=1 to skip it";
    let o = Command::new("python3")
        .arg(&script)
        .arg(&inp)
        .arg(&outp)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 {}: {e}; {help}", script.display()));
    assert!(
        o.status.success(),
        "{} failed: {}\n{help}",
        script.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&outp).expect("read")).expect("json");
    let rows = |v: &serde_json::Value| -> Rows {
        serde_json::from_value(v.clone()).expect("rows of numbers")
    };
    Some(
        v.as_array()
            .expect("list")
            .iter()
            .map(|c| (rows(&c["normalized"]), rows(&c["unnormalized"])))
            .collect(),
    )
}

/// Ours against the framework's, relative to max(1, |reference|): f32 arithmetic against the
/// framework's (f32 for LeRobot, f64 for openpi and plain).
fn assert_close(what: &str, ours: &[Vec<f32>], theirs: &[Vec<f64>]) {
    for (r, (a, b)) in ours.iter().zip(theirs).enumerate() {
        for (i, (&o, &t)) in a.iter().zip(b).enumerate() {
            let tol = 2e-6 * t.abs().max(1.0);
            assert!(
                (f64::from(o) - t).abs() <= tol,
                "{what}: row {r} dim {i}: ours {o}, framework {t}"
            );
        }
    }
}

#[test]
fn every_convention_matches_its_framework() {
    let cases = cases();
    let Some(reference) = reference(&cases) else {
        return;
    };
    assert_eq!(reference.len(), cases.len());
    for (c, (norm_ref, unnorm_ref)) in cases.iter().zip(&reference) {
        let what = format!("{} {}", c.norm.convention().as_str(), c.norm.kind_str());
        assert_close(
            &format!("{what} normalize"),
            &apply(&c.norm, &c.x, false),
            norm_ref,
        );
        assert_close(
            &format!("{what} unnormalize"),
            &apply(&c.norm, &c.y, true),
            unnorm_ref,
        );
    }
}

/// Hand-derived values, so the epsilons are checked even where Python is not available, and so
/// the cases above are seen to tell the conventions apart.
#[test]
fn epsilons_by_hand() {
    use Convention::*;
    let x = 1e-9f32;
    let n = |conv| norm("mean_std", &[0.0], &[1e-9], conv).affine(0);
    // plain: 1e-9 / 1e-9 = 1.
    assert!((n(Plain).normalize(x) - 1.0).abs() < 1e-6);
    // LeRobot: 1e-9 / (1e-9 + 1e-8) = 1 / 11; inverse without epsilon: 2 * 1e-9.
    assert!((n(Lerobot).normalize(x) - 1.0 / 11.0).abs() < 1e-6);
    assert!((n(Lerobot).unnormalize(2.0) - 2e-9).abs() < 1e-15);
    // openpi: 1e-9 / (1e-9 + 1e-6) = 1 / 1001; inverse with it: 2 * 1.001e-6.
    assert!((n(Openpi).normalize(x) - 1.0 / 1001.0).abs() < 1e-8);
    assert!((n(Openpi).unnormalize(2.0) - 2.002e-6).abs() < 1e-12);

    // A joint that never moved: LeRobot std 0 -> (x - 0.035) / 1e-8, and its command is the mean.
    let g = norm("mean_std", &[0.035], &[0.0], Lerobot).affine(0);
    assert_eq!(g.normalize(0.035), 0.0);
    // 0.035001f32 - 0.035f32 = 9.983778e-7 (f32 spacing near 0.035 is 3.7e-9); / 1e-8 = 99.83778.
    assert!(
        (g.normalize(0.035001) - 99.837_78).abs() < 1e-3,
        "{}",
        g.normalize(0.035001)
    );
    assert_eq!(g.unnormalize(5.0), 0.035);
    // LeRobot MIN_MAX, min == max: the range becomes 1e-8, so x == min maps to -1 exactly and
    // -1 maps back to min.
    let r = norm("min_max", &[0.035], &[0.035], Lerobot).affine(0);
    assert_eq!(r.normalize(0.035), -1.0);
    assert_eq!(r.unnormalize(-1.0), 0.035);
    // openpi quantile over a 1e-9 range: 2 (5e-10 - 0) / (1e-9 + 1e-6) - 1 = 1 / 1001 - 1.
    let q = norm("quantile", &[0.0], &[1e-9], Openpi).affine(0);
    assert!((q.normalize(5e-10) - (1.0 / 1001.0 - 1.0)).abs() < 1e-6);
}

fn manifest_with(n: Normalization) -> reflex_models::manifest::Manifest {
    let arch = PolicyArch {
        encoder: EncoderKind::Resnet18,
        cameras: vec!["front".into()],
        shared_encoder: false,
        state_dim: 1,
        action_dim: 1,
        hidden: vec![8],
        head: HeadKind::Single,
    };
    let mut m = reference_manifest(&arch, "t", default_capture());
    m.state.normalization = n;
    m
}

#[test]
fn zero_spread_needs_an_epsilon_convention() {
    let p = Path::new("policy.toml");
    for conv in [Convention::Lerobot, Convention::Openpi] {
        let m = manifest_with(norm("mean_std", &[0.035], &[0.0], conv));
        validate_manifest(&m, p).expect("std 0 with an epsilon");
        assert_eq!(m.state.normalization.constant_dims(), vec![0]);
    }
    let m = manifest_with(norm("mean_std", &[0.035], &[0.0], Convention::Plain));
    let e = validate_manifest(&m, p)
        .expect_err("plain std 0")
        .to_string();
    let joint = &m.state.names[0];
    assert!(
        e.contains("state.normalization[0]")
            && e.contains(joint.as_str())
            && e.contains("std = 0 is not > 0")
            && e.contains("convention"),
        "{e}"
    );
    // A negative spread is refused under every convention.
    let m = manifest_with(norm("mean_std", &[0.0], &[-1e-9], Convention::Lerobot));
    let e = validate_manifest(&m, p)
        .expect_err("negative std")
        .to_string();
    assert!(e.contains("is not >= 0"), "{e}");
    let m = manifest_with(norm("min_max", &[1.0], &[0.5], Convention::Lerobot));
    let e = validate_manifest(&m, p).expect_err("max < min").to_string();
    assert!(e.contains("max 0.5 < min 1"), "{e}");
    let m = manifest_with(norm("min_max", &[1.0], &[1.0], Convention::Lerobot));
    validate_manifest(&m, p).expect("LeRobot min == max");
    // openpi has no min/max normalization.
    let m = manifest_with(norm("min_max", &[0.0], &[1.0], Convention::Openpi));
    let e = validate_manifest(&m, p)
        .expect_err("openpi min_max")
        .to_string();
    assert!(e.contains("state.normalization.convention"), "{e}");
}

#[test]
fn convention_in_the_manifest() {
    // Written only when not plain, so existing manifests read and write as before.
    let plain = manifest_with(norm("mean_std", &[0.0], &[1.0], Convention::Plain));
    let text = plain.to_toml().expect("toml");
    assert!(!text.contains("convention"), "{text}");
    let lerobot = manifest_with(norm("mean_std", &[0.0], &[1.0], Convention::Lerobot));
    let text = lerobot.to_toml().expect("toml");
    assert!(text.contains("convention = \"lerobot\""), "{text}");
    let back =
        reflex_models::bundle::parse_manifest(&text, Path::new("policy.toml")).expect("parses");
    assert_eq!(back, lerobot);
    // Strict: an unknown convention is an error naming the choices.
    let bad = text.replace("\"lerobot\"", "\"lerobot-v2\"");
    let e = reflex_models::bundle::parse_manifest(&bad, Path::new("policy.toml"))
        .expect_err("unknown convention")
        .to_string();
    assert!(e.contains("lerobot-v2") && e.contains("openpi"), "{e}");
}
