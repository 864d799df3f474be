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

/// This binary's scratch directory for bundle copies, emptied once per run.
fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| reflex_testkit::dirs::fixture_dir("bundle-tests"))
}

/// A pristine bundle, built once per test binary; tests copy it before corrupting.
fn pristine() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = root().join("pristine");
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
    let dst = root().join(name);
    let _ = std::fs::remove_dir_all(&dst);
    reflex_testkit::dirs::copy_files(pristine(), &dst);
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
    // f32 values are written in their shortest form, not widened to f64 digits.
    assert!(text.contains("0.485,") && text.contains("0.229,"), "{text}");
    assert!(!text.contains("0.48500001"), "{text}");
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
    // Even with the hash updated to match, the header read refuses the half file, naming it.
    let actual = reflex_models::bundle::sha256_file(&p).expect("hash");
    edit_manifest(&d, |t| {
        let start = t.find("sha256 = \"").expect("sha") + 10;
        format!("{}{}{}", &t[..start], actual, &t[start + 64..])
    });
    let e = load_err(&d);
    assert!(
        e.contains("policy.onnx") && e.contains("cannot load the model"),
        "{e}"
    );
}

#[test]
fn a_model_file_or_a_folder_without_manifest_is_not_a_bundle() {
    let onnx = pristine().join("policy.onnx");
    let e = Bundle::load(&onnx)
        .expect_err("an ONNX file is not a bundle")
        .to_string();
    assert!(
        e.contains("policy.onnx")
            && e.contains("ONNX graph, not a bundle")
            && e.contains(&format!(
                "pass {} (it holds a policy.toml)",
                pristine().display()
            ))
            && e.contains("reflex-tools export"),
        "{e}"
    );
    let empty = root().join("no-manifest");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let e = Bundle::load(&empty)
        .expect_err("no policy.toml")
        .to_string();
    assert!(
        e.contains("no-manifest") && e.contains("no policy.toml"),
        "{e}"
    );
    // The manifest itself, by its path, still loads.
    Bundle::load(pristine().join(MANIFEST_FILE)).expect("policy.toml loads");
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

/// Replaces the manifest's `[can]` section (up to the next top-level section) with `section`,
/// and makes every unit `rad` (MIT motors take radians; the reference gripper is in metres).
fn with_can(t: String, section: &str) -> String {
    let at = t.find("[can]").expect("[can]");
    let end = at + t[at..].find("\n[provenance]").expect("next section");
    format!("{}{section}{}", &t[..at], &t[end..]).replace("\"m\",", "\"rad\",")
}

fn mit_section(flavor: &str, timeout: Option<u32>, motors: usize) -> String {
    let mut s = format!("[can]\nprotocol = \"mit\"\nflavor = \"{flavor}\"\n");
    if let Some(t) = timeout {
        s += &format!("command_timeout_ms = {t}\n");
    }
    for i in 0..motors {
        s += &format!(
            "\n[[can.motors]]\nid = {}\nfeedback_id = {}\np_max = 12.5\nv_max = 30.0\nt_max = 10.0\nkp = 20.0\nkd = 1.0\n",
            i + 1,
            0x11 + i
        );
    }
    s
}

#[test]
fn mit_section_parses_and_validates() {
    let d = copy_of("mit-ok");
    edit_manifest(&d, |t| with_can(t, &mit_section("damiao", Some(100), 6)));
    let b = Bundle::load(&d).expect("valid MIT bundle");
    let reflex_models::manifest::CanSpec::Mit(m) = &b.manifest.can else {
        panic!("not MIT: {:?}", b.manifest.can)
    };
    assert_eq!(m.motors.len(), 6);
    assert_eq!(m.motors[2].id, 3);
    assert_eq!(m.motors[2].feedback_id, Some(0x13));
    assert_eq!(m.motors[0].kp_max, 500.0, "default");
    assert_eq!(m.command_timeout_ms, Some(100));
    // And it survives a write/parse round trip.
    let text = b.manifest.to_toml().expect("toml");
    assert_eq!(
        parse_manifest(&text, &d).expect("reparse").can,
        b.manifest.can
    );
}

#[test]
fn mit_section_errors_name_the_field() {
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "mit-count",
            mit_section("cubemars", None, 5),
            "5 motors for 6 action dimensions",
        ),
        (
            "mit-timeout",
            mit_section("damiao", None, 6),
            "can.command_timeout_ms",
        ),
        (
            "mit-cm-timeout",
            mit_section("cubemars", Some(50), 6),
            "no command timeout",
        ),
        (
            "mit-range",
            mit_section("cubemars", None, 6).replacen("p_max = 12.5", "p_max = 1.0", 1),
            "can.motors[0] (shoulder_pan).p_max",
        ),
        (
            "mit-kp",
            mit_section("cubemars", None, 6).replacen("kp = 20.0", "kp = 900.0", 1),
            "can.motors[0] (shoulder_pan).kp",
        ),
        (
            "mit-dup",
            mit_section("cubemars", None, 6).replacen("id = 2\n", "id = 1\n", 1),
            "can.motors[1] (shoulder_lift).id",
        ),
        (
            "mit-state",
            mit_section("cubemars", None, 6).replacen(
                "kd = 1.0\n",
                "kd = 1.0\nvelocity_state = \"nope\"\n",
                1,
            ),
            "`nope` is not a state name",
        ),
        (
            "mit-unknown",
            mit_section("cubemars", None, 6).replacen("kd = 1.0\n", "kd = 1.0\nkq = 2\n", 1),
            "kq",
        ),
    ];
    for (name, section, want) in cases {
        let d = copy_of(name);
        edit_manifest(&d, |t| with_can(t, &section));
        let e = load_err(&d);
        assert!(e.contains(want), "{name}: {e}");
    }
    // Units other than rad are refused for MIT motors.
    let d = copy_of("mit-units");
    edit_manifest(&d, |t| {
        with_can(t, &mit_section("cubemars", None, 6)).replacen("\"rad\",", "\"deg\",", 7)
    });
    let e = load_err(&d);
    assert!(e.contains("MIT motors take positions in rad"), "{e}");
}

#[test]
fn dbc_section_checks_mapping_and_file_hash() {
    let dbc =
        "VERSION \"\"\n\nBO_ 256 Cmd: 8 Board\n SG_ A : 0|16@1- (0.001,0) [-30|30] \"rad\" M\n";
    let names = [
        "shoulder_pan",
        "shoulder_lift",
        "elbow_flex",
        "wrist_flex",
        "wrist_roll",
        "gripper",
    ];
    let section = |sha: &str, skip: usize| {
        let mut s = format!("[can]\nprotocol = \"dbc\"\nfile = \"robot.dbc\"\nsha256 = \"{sha}\"\n\n[can.actions]\n");
        for n in names.iter().skip(skip) {
            s += &format!("{n} = \"Cmd.A\"\n");
        }
        s
    };
    let sha = reflex_models::bundle::sha256_bytes(dbc.as_bytes());
    let d = copy_of("dbc-ok");
    std::fs::write(d.join("robot.dbc"), dbc).expect("write");
    edit_manifest(&d, |t| with_can(t, &section(&sha, 0)));
    Bundle::load(&d).expect("valid DBC bundle");
    // An edited DBC file no longer matches its hash.
    std::fs::write(d.join("robot.dbc"), dbc.replace("0.001", "0.01")).expect("write");
    let e = load_err(&d);
    assert!(e.contains("robot.dbc"), "{e}");
    // A missing file, an unmapped action.
    let d = copy_of("dbc-missing");
    edit_manifest(&d, |t| with_can(t, &section(&sha, 0)));
    let e = load_err(&d);
    assert!(e.contains("robot.dbc"), "{e}");
    let d = copy_of("dbc-unmapped");
    std::fs::write(d.join("robot.dbc"), dbc).expect("write");
    edit_manifest(&d, |t| with_can(t, &section(&sha, 1)));
    let e = load_err(&d);
    assert!(e.contains("action `shoulder_pan` is not mapped"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Random text never panics the manifest parser.
    #[test]
    fn manifest_parser_survives_random_text(s in ".{0,400}") {
        let _ = parse_manifest(&s, Path::new("fuzz/policy.toml"));
    }

    /// Any finite f32 in a manifest field survives writing and reading back bit for bit (the
    /// writer shortens f32 floats, `Manifest::to_toml`), subnormals and extremes included.
    #[test]
    fn f32_fields_round_trip_bit_for_bit(bits in proptest::collection::vec(any::<u32>(), 6)) {
        let text = std::fs::read_to_string(pristine().join(MANIFEST_FILE)).expect("read");
        let mut m = parse_manifest(&text, Path::new("x")).expect("parses");
        let values: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).filter(|v| v.is_finite()).collect();
        prop_assume!(!values.is_empty());
        m.action.limits.as_mut().expect("limits").min = values.clone();
        let again = parse_manifest(&m.to_toml().expect("toml"), Path::new("x")).expect("parses");
        let got: Vec<u32> = again.action.limits.expect("limits").min.iter().map(|v| v.to_bits()).collect();
        prop_assert_eq!(got, values.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
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

#[test]
fn chunk_rate_parses_defaults_and_validates() {
    // Absent: the chunk's steps are at the bundle's own rate (old bundles behave as before).
    let m = Bundle::load(pristine()).expect("loads").manifest;
    assert_eq!(m.control.chunk_rate_hz, None);
    assert_eq!(m.control.chunk_rate(), m.control.rate_hz);

    let d = copy_of("chunk-rate-ok");
    edit_manifest(&d, |t| {
        t.replacen("rate_hz =", "chunk_rate_hz = 15.0\nrate_hz =", 1)
    });
    let m = Bundle::load(&d).expect("loads").manifest;
    assert_eq!(m.control.chunk_rate_hz, Some(15.0));
    assert_eq!(m.control.chunk_rate(), 15.0);
    // Written back as it was read.
    let text = toml::to_string(&m).expect("serializes");
    assert!(text.contains("chunk_rate_hz = 15.0"), "{text}");

    for bad in ["0.0", "-20.0", "2000.0", "nan", "inf"] {
        let d = copy_of("chunk-rate-bad");
        edit_manifest(&d, |t| {
            t.replacen("rate_hz =", &format!("chunk_rate_hz = {bad}\nrate_hz ="), 1)
        });
        let e = load_err(&d);
        assert!(
            e.contains(MANIFEST_FILE) && e.contains("control.chunk_rate_hz"),
            "{bad}: {e}"
        );
    }
    // Strict parsing: a near miss is an error, not a silently ignored setting.
    let d = copy_of("chunk-rate-typo");
    edit_manifest(&d, |t| {
        t.replacen("rate_hz =", "chunk_rate = 15.0\nrate_hz =", 1)
    });
    let e = load_err(&d);
    assert!(e.contains("chunk_rate"), "{e}");
}

#[test]
fn a_bundle_is_recognized_and_replaced_only_as_allowed() {
    use reflex_models::bundle::{is_bundle_dir, write_bundle_to};
    use reflex_models::output::Replace;
    let d = copy_of("replace");
    is_bundle_dir(&d).expect("a bundle");
    let b = Bundle::load(&d).expect("loads");
    let bytes = std::fs::read(&b.policy_path).expect("model");
    let mut m = b.manifest.clone();
    m.name = "second".into();
    let e = write_bundle_to(&d, &mut m, &[&bytes], Replace::No)
        .expect_err("needs --force")
        .to_string();
    assert!(
        e.contains("already holds a reflex bundle") && e.contains("--force"),
        "{e}"
    );
    assert_eq!(Bundle::load(&d).expect("kept").manifest.name, "test");
    let again = write_bundle_to(&d, &mut m, &[&bytes], Replace::Ours).expect("replaced");
    assert_eq!(again.dir, d);
    assert_eq!(again.policy_path, d.join("policy.onnx"));
    assert_eq!(Bundle::load(&d).expect("new").manifest.name, "second");

    // What reflex writes on the board keeps it a bundle: engines/ (TensorRT engines, ONNX
    // Runtime's optimized graphs) and the measured backend record.
    std::fs::create_dir_all(d.join("engines/onnxruntime")).expect("mkdir");
    std::fs::write(d.join("engines/onnxruntime/x.ort-1.32.0.abcd.onnx"), "g").expect("write");
    std::fs::write(d.join("engines/policy.engine"), "e").expect("write");
    std::fs::write(d.join("backend-preference.json"), "{}").expect("write");
    is_bundle_dir(&d).expect("still a bundle");

    // A file the manifest does not list makes it someone else's folder: never replaced.
    std::fs::write(d.join("notes.txt"), "mine").expect("write");
    let why = is_bundle_dir(&d).expect_err("not a bundle any more");
    assert!(why.contains("notes.txt"), "{why}");
    let e = write_bundle_to(&d, &mut m, &[&bytes], Replace::Any)
        .expect_err("refused")
        .to_string();
    assert!(
        e.contains("not a reflex bundle") && e.contains("notes.txt"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("notes.txt")).expect("kept"),
        "mine"
    );
}

#[test]
fn a_bundle_that_does_not_load_back_is_never_put_in_place() {
    use reflex_models::manifest::{CanSpec, DbcSpec};
    let b = Bundle::load(pristine()).expect("loads");
    let bytes = std::fs::read(&b.policy_path).expect("model");
    let mut m = b.manifest.clone();
    // A DBC protocol whose file is not in the bundle: caught only when loaded back.
    m.can = CanSpec::Dbc(DbcSpec {
        file: "arm.dbc".into(),
        sha256: "0".repeat(64),
        actions: m
            .action
            .names
            .iter()
            .map(|n| (n.clone(), format!("Cmd.{n}")))
            .collect(),
        constants: Default::default(),
        stop_signal: None,
        fd_brs: false,
        feedback: Default::default(),
    });
    let parent = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bundle-tests/no-load");
    let _ = std::fs::remove_dir_all(&parent);
    let out = parent.join("deep/bundle");
    let e = reflex_models::bundle::write_bundle(&out, &mut m, &[&bytes])
        .expect_err("does not load")
        .to_string();
    // Named where the user would look for it, not in the staging folder.
    assert!(
        e.contains(&out.join("arm.dbc").display().to_string()),
        "{e}"
    );
    assert!(!parent.exists(), "nothing left behind");
}

#[test]
fn model_roles_make_one_kind_of_policy() {
    use reflex_models::bundle::validate_manifest;
    use reflex_models::manifest::ModelRole;
    let text = std::fs::read_to_string(pristine().join(MANIFEST_FILE)).expect("read");
    let m = parse_manifest(&text, Path::new("b/policy.toml")).expect("parses");
    let with_roles = |roles: &[ModelRole]| {
        let mut m = m.clone();
        m.models = roles
            .iter()
            .enumerate()
            .map(|(i, &role)| reflex_models::manifest::ModelFile {
                role,
                file: format!("m{i}.onnx"),
                ..m.models[0].clone()
            })
            .collect();
        if roles.contains(&ModelRole::Encoder) && roles.contains(&ModelRole::Denoiser) {
            m.diffusion = Some(diffusion_section(&m));
        }
        m
    };
    let err = |roles: &[ModelRole]| {
        validate_manifest(&with_roles(roles), Path::new("b/policy.toml"))
            .expect_err("refused")
            .to_string()
    };
    // The encoder + denoiser pair is a valid manifest (Diffusion Policy)...
    validate_manifest(
        &with_roles(&[ModelRole::Encoder, ModelRole::Denoiser]),
        Path::new("b/policy.toml"),
    )
    .expect("an encoder + denoiser pair is valid");
    // ...but half a pair, or a pair next to a policy, is not.
    assert!(err(&[ModelRole::Encoder]).contains("without its `denoiser`"));
    assert!(err(&[ModelRole::Denoiser]).contains("without its `encoder`"));
    assert!(
        err(&[ModelRole::Policy, ModelRole::Encoder, ModelRole::Denoiser]).contains("not both")
    );
    // Two files of one role for one backend are ambiguous, whatever the role.
    let e = err(&[ModelRole::Encoder, ModelRole::Encoder, ModelRole::Denoiser]);
    assert!(e.contains("one encoder file per backend"), "{e}");

    // A pair without its `[diffusion]` section cannot run: refused naming the section (and a
    // policy bundle with one likewise).
    let mut no_section = with_roles(&[ModelRole::Encoder, ModelRole::Denoiser]);
    no_section.diffusion = None;
    let e = validate_manifest(&no_section, Path::new("b/policy.toml"))
        .expect_err("refused")
        .to_string();
    assert!(e.contains("`diffusion`") && e.contains("missing"), "{e}");
    let mut extra = m.clone();
    extra.diffusion = Some(diffusion_section(&m));
    let e = validate_manifest(&extra, Path::new("b/policy.toml"))
        .expect_err("refused")
        .to_string();
    assert!(e.contains("`diffusion`") && e.contains("remove it"), "{e}");
    let d = copy_of("roles");
    edit_manifest(&d, |t| {
        let policy = t.find("[[models]]").expect("models");
        let entry_end = policy + t[policy..].find("\n\n").expect("end of entry");
        let entry = &t[policy..entry_end];
        format!(
            "{}{}\n\n{}{}",
            &t[..policy],
            entry.replace("role = \"policy\"", "role = \"encoder\""),
            entry.replace("role = \"policy\"", "role = \"denoiser\""),
            &t[entry_end..]
        )
    });
    let e = load_err(&d);
    assert!(e.contains("`diffusion`") && e.contains("missing"), "{e}");
}

/// A `[diffusion]` section fitting `m`'s action chunk (history 1, so the sample is the chunk).
fn diffusion_section(
    m: &reflex_models::manifest::Manifest,
) -> reflex_models::manifest::DiffusionSpec {
    use reflex_models::manifest::*;
    DiffusionSpec {
        n_obs_steps: 1,
        horizon: m.action.output.horizon(),
        seed: 0,
        scheduler: SchedulerSpec {
            kind: SchedulerKind::Ddim,
            num_train_timesteps: 100,
            num_inference_steps: 10,
            beta_schedule: BetaSchedule::SquaredcosCapV2,
            beta_start: 1e-4,
            beta_end: 0.02,
            prediction_type: PredictionType::Epsilon,
            clip_sample: true,
            clip_sample_range: 1.0,
            variance: Variance::FixedSmall,
        },
        features_output: "features".into(),
        sample_input: "sample".into(),
        timestep_input: "timestep".into(),
        global_cond_input: "global_cond".into(),
    }
}

#[test]
fn resize_dtype_defaults_to_float_and_parses_uint8() {
    use reflex_models::manifest::ResizeDtype;
    let b = Bundle::load(pristine()).expect("loads");
    assert_eq!(
        b.manifest.cameras[0].preprocess.resize.dtype,
        ResizeDtype::Float
    );

    let d = copy_of("resize-dtype-uint8");
    edit_manifest(&d, |t| {
        t.replacen("antialias = true", "antialias = true\ndtype = \"uint8\"", 1)
    });
    let m = Bundle::load(&d).expect("loads").manifest;
    assert_eq!(m.cameras[0].preprocess.resize.dtype, ResizeDtype::Uint8);
    assert_eq!(m.cameras[1].preprocess.resize.dtype, ResizeDtype::Float);
    assert!(m.to_toml().expect("toml").contains("dtype = \"uint8\""));

    let d = copy_of("resize-dtype-bad");
    edit_manifest(&d, |t| {
        t.replacen("antialias = true", "antialias = true\ndtype = \"int8\"", 1)
    });
    let e = load_err(&d);
    assert!(e.contains("int8") && e.contains("float"), "{e}");

    for dtype in ["uint8-pil", "uint8-avx2"] {
        let d = copy_of(&format!("resize-dtype-{dtype}"));
        edit_manifest(&d, |t| {
            t.replacen(
                "antialias = true",
                &format!("antialias = true\ndtype = \"{dtype}\""),
                1,
            )
        });
        let m = Bundle::load(&d).expect("loads").manifest;
        assert_eq!(m.cameras[0].preprocess.resize.dtype.name(), dtype);
        assert!(m
            .to_toml()
            .expect("toml")
            .contains(&format!("dtype = \"{dtype}\"")));
    }
    // Pillow's BILINEAR always antialiases: uint8-pil without it is refused, naming the field.
    let d = copy_of("resize-dtype-pil-no-aa");
    edit_manifest(&d, |t| {
        t.replacen(
            "antialias = true",
            "antialias = false\ndtype = \"uint8-pil\"",
            1,
        )
    });
    let e = load_err(&d);
    assert!(
        e.contains("resize.dtype") && e.contains("needs antialias = true"),
        "{e}"
    );
}
