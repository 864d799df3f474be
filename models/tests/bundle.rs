//! Bundle round trip and every kind of corruption: each must be refused with a message that
//! names the file and the field or tensor at fault.

use proptest::prelude::*;
use reflex_models::bundle::{parse_manifest, Bundle};
use reflex_models::manifest::{ActionOutput, MANIFEST_FILE};
use reflex_models::onnx::{EncoderKind, HeadKind, PolicyArch, SeededWeights};
use reflex_models::reference::{default_capture, write_reference_bundle};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn arch() -> PolicyArch {
    PolicyArch {
        encoder: EncoderKind::Resnet18,
        cameras: vec!["front".into(), "wrist".into()],
        shared_encoder: true,
        state_dim: 6,
        action_dim: 6,
        hidden: vec![64],
        head: HeadKind::Chunk { horizon: 8 },
    }
}

/// A pristine bundle, built once per test binary; tests copy it before corrupting.
fn pristine() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bundle-tests/pristine");
        write_reference_bundle(
            &d,
            &arch(),
            &mut SeededWeights::new(3),
            "test",
            default_capture(),
        )
        .expect("writes");
        d
    })
}

fn copy_of(name: &str) -> PathBuf {
    let src = pristine();
    let dst = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("bundle-tests")
        .join(name);
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).expect("mkdir");
    for e in std::fs::read_dir(src).expect("read_dir") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), dst.join(e.file_name())).expect("copy");
    }
    dst
}

fn edit_manifest(dir: &Path, f: impl FnOnce(String) -> String) {
    let p = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&p).expect("read");
    std::fs::write(&p, f(text)).expect("write");
}

fn load_err(dir: &Path) -> String {
    Bundle::load(dir).expect_err("must be refused").to_string()
}

#[test]
fn round_trip_export_load_validate() {
    let b = Bundle::load(pristine()).expect("loads");
    assert_eq!(b.manifest.cameras.len(), 2);
    assert_eq!(b.io.input("image.front"), Some(&[1, 3, 224, 224][..]));
    assert_eq!(b.io.input("state"), Some(&[1, 6][..]));
    assert_eq!(b.io.output("action"), Some(&[1, 8, 6][..]));
    assert_eq!(b.manifest.action.output, ActionOutput::Chunk { horizon: 8 });
    // The manifest text round-trips through the parser unchanged.
    let text = std::fs::read_to_string(pristine().join(MANIFEST_FILE)).expect("read");
    let again = parse_manifest(&text, Path::new("x")).expect("parses");
    assert_eq!(again, b.manifest);
    assert_eq!(again.to_toml().expect("toml"), text);
}

#[test]
fn hash_mismatch_is_refused() {
    let d = copy_of("hash");
    let p = d.join("policy.onnx");
    let mut bytes = std::fs::read(&p).expect("read");
    let n = bytes.len();
    bytes[n - 10] ^= 0xff;
    std::fs::write(&p, bytes).expect("write");
    let e = load_err(&d);
    assert!(
        e.contains("policy.onnx") && e.contains("sha256 mismatch"),
        "{e}"
    );
}

#[test]
fn truncated_model_is_refused() {
    let d = copy_of("truncated");
    let p = d.join("policy.onnx");
    let bytes = std::fs::read(&p).expect("read");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).expect("write");
    let e = load_err(&d);
    assert!(e.contains("policy.onnx") && e.contains("truncated"), "{e}");
    // Even with the hash updated to match, tract refuses the half file, naming it.
    let actual = reflex_models::bundle::sha256_file(&p).expect("hash");
    edit_manifest(&d, |t| {
        let start = t.find("sha256 = \"").expect("sha") + 10;
        format!("{}{}{}", &t[..start], actual, &t[start + 64..])
    });
    let e = load_err(&d);
    assert!(
        e.contains("policy.onnx") && e.contains("tract cannot load"),
        "{e}"
    );
}

#[test]
fn missing_model_file_is_refused() {
    let d = copy_of("missing-file");
    std::fs::remove_file(d.join("policy.onnx")).expect("rm");
    let e = load_err(&d);
    assert!(
        e.contains("policy.onnx") && e.contains("cannot read"),
        "{e}"
    );
}

#[test]
fn wrong_shapes_are_refused() {
    let d = copy_of("shape-image");
    edit_manifest(&d, |t| t.replacen("width = 224", "width = 160", 1));
    let e = load_err(&d);
    assert!(
        e.contains("image.front")
            && e.contains("[1, 3, 224, 224]")
            && e.contains("[1, 3, 224, 160]"),
        "{e}"
    );

    let d = copy_of("shape-horizon");
    edit_manifest(&d, |t| {
        t.replace("horizon = 8", "horizon = 10")
            .replace("steps_per_inference = 2", "steps_per_inference = 1")
    });
    let e = load_err(&d);
    assert!(
        e.contains("action") && e.contains("[1, 8, 6]") && e.contains("[1, 10, 6]"),
        "{e}"
    );

    let d = copy_of("input-name");
    edit_manifest(&d, |t| {
        t.replace(
            "onnx_input = \"image.wrist\"",
            "onnx_input = \"image.left\"",
        )
    });
    let e = load_err(&d);
    assert!(
        e.contains("image.left") && e.contains("not an input"),
        "{e}"
    );
}

#[test]
fn missing_field_is_refused() {
    let d = copy_of("missing-field");
    edit_manifest(&d, |t| {
        t.lines()
            .filter(|l| !l.trim_start().starts_with("rate_hz"))
            .collect::<Vec<_>>()
            .join("\n")
    });
    let e = load_err(&d);
    assert!(e.contains(MANIFEST_FILE) && e.contains("rate_hz"), "{e}");
}

#[test]
fn unknown_field_is_refused() {
    let d = copy_of("unknown-field");
    edit_manifest(&d, |t| {
        t.replacen("rate_hz =", "rate_hertz = 3.0\nrate_hz =", 1)
    });
    let e = load_err(&d);
    assert!(e.contains("rate_hertz"), "{e}");
}

#[test]
fn unknown_version_is_refused() {
    let d = copy_of("version");
    edit_manifest(&d, |t| {
        t.replacen("format_version = 1", "format_version = 2", 1)
    });
    let e = load_err(&d);
    assert!(
        e.contains("unsupported bundle version 2") && e.contains(MANIFEST_FILE),
        "{e}"
    );
}

#[test]
fn nan_in_stats_is_refused() {
    let d = copy_of("nan");
    edit_manifest(&d, |t| {
        // The first value of the action normalization's std.
        let at = t.find("[action.normalization]").expect("section");
        let std_at = at + t[at..].find("std = [").expect("std") + 7;
        let end = std_at + t[std_at..].find(',').expect("comma");
        format!("{}nan{}", &t[..std_at], &t[end..])
    });
    let e = load_err(&d);
    assert!(
        e.contains("action.normalization.std[0]") && e.contains("NaN"),
        "{e}"
    );
}

#[test]
fn bad_limits_are_refused() {
    let d = copy_of("limits");
    edit_manifest(&d, |t| {
        let at = t.find("max_rate = [").expect("max_rate") + 12;
        let end = at + t[at..].find(',').expect(",");
        format!("{}-1.0{}", &t[..at], &t[end..])
    });
    let e = load_err(&d);
    assert!(
        e.contains("action.limits.max_rate[0]") && e.contains("shoulder_pan"),
        "{e}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Random text never panics the manifest parser.
    #[test]
    fn manifest_parser_survives_random_text(s in ".{0,400}") {
        let _ = parse_manifest(&s, Path::new("fuzz/policy.toml"));
    }

    /// Mutated valid manifests (bytes flipped, cut, duplicated) parse or fail cleanly, and whatever
    /// parses also goes through validation without a panic.
    #[test]
    fn manifest_parser_survives_mutations(cut in 0usize..4000, pos in 0usize..4000, byte in any::<u8>(), dup in 0usize..200) {
        let text = std::fs::read_to_string(pristine().join(MANIFEST_FILE)).expect("read");
        let mut b = text.into_bytes();
        let p = pos % b.len();
        b[p] = byte;
        b.truncate(cut.max(1).min(b.len()));
        let d = dup.min(b.len());
        let tail = b[b.len() - d..].to_vec();
        b.extend_from_slice(&tail);
        let s = String::from_utf8_lossy(&b);
        if let Ok(m) = parse_manifest(&s, Path::new("fuzz/policy.toml")) {
            let _ = reflex_models::bundle::validate_manifest(&m, Path::new("fuzz/policy.toml"));
        }
    }
}
