//! Issue 15, kinds 2 and 3: a bundle carries and hashes every file its model needs (ONNX
//! external data, a DBC), and the tensor contract includes element types (a float64 or float16
//! input converted at the boundary, other types refused at export naming the tensor, the
//! recorded precision the model's own). The field cases are in `tests/data/cases/` (README);
//! their reference outputs were computed by ONNX Runtime.

use reflex_models::bundle::{sha256_file, BundleError};
use reflex_models::manifest::{BackendKind, CanSpec, Precision};
use reflex_models::npy::read_npy;
use reflex_models::onnx::builder::{Attr, GraphBuilder};
use reflex_models::Bundle;
use reflex_runtime::infer::policy::{Policy, SinglePassPolicy};
use reflex_runtime::infer::tract::TractOptions;
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

fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| reflex_testkit::dirs::fixture_dir("contracts"))
}

fn dir(name: &str) -> PathBuf {
    let d = root().join(name);
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

fn template() -> PathBuf {
    data("stats/policy_template.toml")
}

fn export_onnx(onnx: &Path, tpl: &Path, out: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "export",
        "--onnx",
        s(onnx),
        "--manifest",
        s(tpl),
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    tools(&args)
}

/// The bundle's policy on tract, run on `image` and `state`; the raw output.
fn run_policy(bundle: &Bundle, image: &[f32], state: &[f32]) -> Vec<f32> {
    let mut p = SinglePassPolicy::tract(bundle, TractOptions { threads: 1 }).expect("prepare");
    p.camera_input(0).copy_from_slice(image);
    p.state_input().expect("state").copy_from_slice(state);
    p.run().expect("run");
    p.output().to_vec()
}

/// The case's reference inputs, run through the bundle, against ONNX Runtime's output.
fn assert_matches_ort(bundle: &Bundle, case: &str) {
    let npy = |f: &str| {
        read_npy(&data(&format!("cases/{case}/ref/{f}.npy")))
            .expect("npy")
            .data
            .to_f32()
    };
    let got = run_policy(bundle, &npy("image"), &npy("state"));
    let want = npy("expected_ort");
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= 1e-5, "{case}: output {i}: {g} vs ORT {w}");
    }
}

#[test]
fn external_data_is_read_beside_the_model_copied_and_hashed() {
    let out = dir("external");
    let onnx = data("cases/external-data/model.onnx");
    let stdout = ok(&export_onnx(&onnx, &template(), &out, &[]));
    assert!(stdout.contains("model.onnx.data"), "{stdout}");
    let b = Bundle::load(&out).expect("loads");
    let f = &b.manifest.models[0];
    assert_eq!(f.data_files.len(), 1, "{f:?}");
    assert_eq!(f.data_files[0].file, "model.onnx.data");
    let copied = out.join("model.onnx.data");
    assert_eq!(
        std::fs::read(&copied).expect("copied"),
        std::fs::read(data("cases/external-data/model.onnx.data")).expect("source")
    );
    assert_eq!(f.data_files[0].sha256, sha256_file(&copied).expect("hash"));
    assert_eq!(f.precision, Precision::Fp32);
    // The weights are the data file's: tract's output equals ONNX Runtime's.
    assert_matches_ort(&b, "external-data");

    // One changed byte in the data file: the bundle no longer loads, naming the data file.
    let mut bytes = std::fs::read(&copied).expect("read");
    bytes[10] ^= 0x40;
    std::fs::write(&copied, &bytes).expect("write");
    let e = Bundle::load(&out).expect_err("changed data file");
    assert!(
        matches!(&e, BundleError::HashMismatch { path, .. } if path.ends_with("model.onnx.data")),
        "{e}"
    );
}

#[test]
fn a_bundle_whose_manifest_does_not_hash_the_data_file_is_refused() {
    // As a data file copied into a bundle by hand: the manifest (an older one) lists no
    // data_files, so nothing would notice a changed data file.
    let out = dir("unhashed");
    ok(&export_onnx(
        &data("cases/external-data/model.onnx"),
        &template(),
        &out,
        &[],
    ));
    let mp = out.join("policy.toml");
    let text = std::fs::read_to_string(&mp).expect("manifest");
    let mut raw: toml::Table = text.parse().expect("toml");
    raw["models"].as_array_mut().expect("models")[0]
        .as_table_mut()
        .expect("model")
        .remove("data_files");
    std::fs::write(&mp, toml::to_string(&raw).expect("toml")).expect("write");
    let e = Bundle::load(&out)
        .expect_err("unhashed data file")
        .to_string();
    assert!(
        e.contains("model.onnx.data")
            && e.contains("models[0].data_files")
            && e.contains("re-export"),
        "{e}"
    );
}

#[test]
fn a_missing_data_file_is_named_with_the_users_path_and_nothing_is_written() {
    let src = dir("lonely-model");
    std::fs::create_dir_all(&src).expect("mkdir");
    let onnx = src.join("model.onnx");
    std::fs::copy(data("cases/external-data/model.onnx"), &onnx).expect("copy");
    let out = dir("lonely-out");
    let e = err(&export_onnx(&onnx, &template(), &out, &[]));
    assert!(
        e.contains(s(&onnx)) && e.contains(s(&src.join("model.onnx.data"))),
        "{e}"
    );
    assert!(!out.exists());
}

#[test]
fn a_float64_state_input_is_converted_at_the_boundary() {
    let out = dir("f64");
    let stdout = ok(&export_onnx(
        &data("cases/f64-state/model_f64_state.onnx"),
        &template(),
        &out,
        &[],
    ));
    assert!(stdout.contains("fp32"), "{stdout}");
    let b = Bundle::load(&out).expect("loads");
    let state =
        b.io.inputs
            .iter()
            .find(|t| t.name == "state")
            .expect("state");
    assert_eq!(state.elem.name(), "double");
    // Its weights are float32: the model's real precision is fp32.
    assert_eq!(b.manifest.models[0].precision, Precision::Fp32);
    assert_matches_ort(&b, "f64-state");
}

/// The template's I/O (`image` [1,3,32,32], `state` [1,6], `action` [1,4,6]): action step k,
/// joint j = mean of image channel (j % 3) + state[j] * (k + 1) * 0.5, with the state input
/// declared as ONNX type `state_type` (cast to float inside) and, when `qdq`, the state
/// quantized and dequantized (scale 1/64, uint8) as a QDQ model does. Returns the ONNX bytes.
fn template_graph(state_type: i32, qdq: bool) -> Vec<u8> {
    use tract_onnx::pb::type_proto::Value;
    let mut g = GraphBuilder::new("typed");
    let image = g.input("image", &[1, 3, 32, 32]);
    let state = g.input("state", &[1, 6]);
    let pooled = g.node("pool", "GlobalAveragePool", &[&image], &[]);
    let flat = g.node("flat", "Flatten", &[&pooled], &[("axis", Attr::Int(1))]);
    let mut x = if state_type == 1 {
        state.clone()
    } else {
        g.node("cast", "Cast", &[&state], &[("to", Attr::Int(1))])
    };
    if qdq {
        let scale = g.scalar(1.0 / 64.0);
        let q = g.node("q", "QuantizeLinear", &[&x, &scale], &[]);
        x = g.node("dq", "DequantizeLinear", &[&q, &scale], &[]);
    }
    let features = g.node(
        "features",
        "Concat",
        &[&flat, &x],
        &[("axis", Attr::Int(1))],
    );
    let mut w = vec![0f32; 9 * 24];
    for k in 0..4 {
        for j in 0..6 {
            w[(j % 3) * 24 + k * 6 + j] = 1.0;
            w[(3 + j) * 24 + k * 6 + j] = (k + 1) as f32 * 0.5;
        }
    }
    let w = g.initializer("head.weight", &[9, 24], &w);
    let y = g.node("head", "MatMul", &[&features, &w], &[]);
    let shape = g.shape_const(&[1, 4, 6]);
    let action = g.node("action", "Reshape", &[&y, &shape], &[]);
    g.output(&action, &[1, 4, 6]);
    let mut m = g.finish();
    let graph = m.graph.as_mut().expect("graph");
    let input = graph
        .input
        .iter_mut()
        .find(|v| v.name == "state")
        .expect("state");
    match input.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        Some(Value::TensorType(t)) => t.elem_type = state_type,
        other => panic!("state type {other:?}"),
    }
    prost::Message::encode_to_vec(&m)
}

/// What [`template_graph`] computes (the state already as the graph sees it).
fn template_expected(image: &[f32], state: &[f32]) -> Vec<f32> {
    let mean = |c: usize| image[c * 1024..(c + 1) * 1024].iter().sum::<f32>() / 1024.0;
    (0..4)
        .flat_map(|k| (0..6).map(move |j| (k, j)))
        .map(|(k, j)| mean(j % 3) + state[j] * (k + 1) as f32 * 0.5)
        .collect()
}

fn write_graph(name: &str, bytes: &[u8]) -> PathBuf {
    let d = dir(name);
    std::fs::create_dir_all(&d).expect("mkdir");
    let p = d.join("model.onnx");
    std::fs::write(&p, bytes).expect("write");
    p
}

fn test_image() -> Vec<f32> {
    (0..3 * 1024)
        .map(|i| ((i * 7) % 13) as f32 / 13.0)
        .collect()
}

#[test]
fn a_float16_state_input_is_converted_at_the_boundary() {
    // float16 code 10; the state values are exact in float16.
    let onnx = write_graph("f16-src", &template_graph(10, false));
    let out = dir("f16");
    ok(&export_onnx(&onnx, &template(), &out, &[]));
    let b = Bundle::load(&out).expect("loads");
    let image = test_image();
    let state = [0.5, -0.25, 1.0, 0.125, -2.0, 0.0625];
    let got = run_policy(&b, &image, &state);
    for (g, w) in got.iter().zip(template_expected(&image, &state)) {
        assert!((g - w).abs() <= 1e-5, "{g} vs {w}");
    }
}

#[test]
fn unsupported_element_types_are_refused_at_export_naming_the_tensor() {
    for (code, name) in [(7, "int64"), (9, "bool"), (16, "bfloat16")] {
        let onnx = write_graph(&format!("{name}-src"), &template_graph(code, false));
        let out = dir(&format!("{name}-out"));
        let e = err(&export_onnx(&onnx, &template(), &out, &[]));
        assert!(
            e.contains("input `state` is") && e.contains(name) && e.contains(s(&onnx)),
            "{name}: {e}"
        );
        assert!(!out.exists(), "{name}: nothing written");
    }
}

#[test]
fn a_qdq_model_is_recorded_as_int8_and_runs_on_its_backends() {
    let onnx = write_graph("qdq-src", &template_graph(1, true));
    let out = dir("qdq");
    let stdout = ok(&export_onnx(&onnx, &template(), &out, &[]));
    assert!(stdout.contains("int8"), "{stdout}");
    let b = Bundle::load(&out).expect("loads");
    let f = &b.manifest.models[0];
    assert_eq!(f.precision, Precision::Int8);
    assert_eq!(f.backends, vec![BackendKind::Tract, BackendKind::Tensorrt]);
    // tract runs the QDQ graph: the state quantized to 1/64 steps (uint8, round half to even).
    let image = test_image();
    let state = [0.5, 0.26, 1.0, 0.01, 3.9, 5.0];
    let quantized: Vec<f32> = state
        .iter()
        .map(|x| (x * 64.0f32).round_ties_even().clamp(0.0, 255.0) / 64.0)
        .collect();
    let got = run_policy(&b, &image, &state);
    for (g, w) in got.iter().zip(template_expected(&image, &quantized)) {
        assert!((g - w).abs() <= 1e-5, "{g} vs {w}");
    }
    // The fp32 graph is recorded as fp32.
    let plain = write_graph("fp32-src", &template_graph(1, false));
    let out = dir("fp32");
    ok(&export_onnx(&plain, &template(), &out, &[]));
    let b = Bundle::load(&out).expect("loads");
    assert_eq!(b.manifest.models[0].precision, Precision::Fp32);
}

/// The template with the cp1252 case's `[can]` section appended.
fn dbc_template(name: &str) -> PathBuf {
    let d = dir(name);
    std::fs::create_dir_all(&d).expect("mkdir");
    let text = std::fs::read_to_string(template()).expect("template")
        + "\n"
        + &std::fs::read_to_string(data("cases/dbc-cp1252/can_section.toml")).expect("can");
    let p = d.join("policy.toml");
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn export_bundles_a_dbc_hashed_like_the_model() {
    let tpl = dbc_template("dbc-tpl");
    let out = dir("dbc");
    let dbc = data("cases/dbc-cp1252/robot_cp1252.dbc");
    let onnx = data("stats/tiny_base.onnx");
    ok(&export_onnx(&onnx, &tpl, &out, &["--dbc", s(&dbc)]));
    let b = Bundle::load(&out).expect("loads");
    let CanSpec::Dbc(d) = &b.manifest.can else {
        panic!("{:?}", b.manifest.can)
    };
    assert_eq!(d.file, "robot_cp1252.dbc");
    let copied = out.join(&d.file);
    assert_eq!(
        std::fs::read(&copied).expect("copied"),
        std::fs::read(&dbc).expect("dbc")
    );
    assert_eq!(d.sha256, sha256_file(&dbc).expect("hash"));
    // A changed DBC: the bundle no longer loads, naming it.
    let mut bytes = std::fs::read(&copied).expect("read");
    bytes.extend_from_slice(b"\n");
    std::fs::write(&copied, bytes).expect("write");
    let e = Bundle::load(&out).expect_err("changed dbc");
    assert!(
        matches!(&e, BundleError::HashMismatch { path, .. } if path.ends_with("robot_cp1252.dbc")),
        "{e}"
    );

    // Without --dbc, the file the [can] section names, relative to the template.
    std::fs::copy(&dbc, tpl.with_file_name("robot.dbc")).expect("copy");
    let out2 = dir("dbc-from-template");
    ok(&export_onnx(&onnx, &tpl, &out2, &[]));
    let b = Bundle::load(&out2).expect("loads");
    assert!(matches!(&b.manifest.can, CanSpec::Dbc(d) if d.file == "robot.dbc"));
    assert!(out2.join("robot.dbc").is_file());

    // --dbc with a template that maps nothing onto a DBC: told what the template needs.
    let out3 = dir("dbc-no-section");
    let e = err(&export_onnx(&onnx, &template(), &out3, &["--dbc", s(&dbc)]));
    assert!(
        e.contains("[can]") && e.contains("protocol = \"dbc\""),
        "{e}"
    );
    assert!(!out3.exists());
}

#[test]
fn quantize_carries_the_dbc_and_inlines_external_data() {
    // The same kind of fault in another writer: a bundle made from a DBC bundle whose model
    // keeps its weights in an external data file.
    let tpl = dbc_template("quantize-tpl");
    let src = dir("quantize-src");
    let dbc = data("cases/dbc-cp1252/robot_cp1252.dbc");
    ok(&export_onnx(
        &data("cases/external-data/model.onnx"),
        &tpl,
        &src,
        &["--dbc", s(&dbc)],
    ));
    let out = dir("quantize-fp16");
    ok(&tools(&[
        "quantize",
        "--bundle",
        s(&src),
        "--precision",
        "fp16",
        "--held-out",
        "2",
        "--latency-runs",
        "1",
        "--out",
        s(&out),
    ]));
    let b = Bundle::load(&out).expect("the quantized bundle loads");
    let CanSpec::Dbc(d) = &b.manifest.can else {
        panic!("{:?}", b.manifest.can)
    };
    assert_eq!(d.sha256, sha256_file(&dbc).expect("hash"));
    assert!(out.join(&d.file).is_file());
    for f in &b.manifest.models {
        assert_eq!(f.precision, Precision::Fp16);
        assert!(f.data_files.is_empty(), "{f:?}: weights inlined");
    }
    // The weights were read from the data file: fp16 outputs near ONNX Runtime's fp32 ones.
    let npy = |f: &str| {
        read_npy(&data(&format!("cases/external-data/ref/{f}.npy")))
            .expect("npy")
            .data
            .to_f32()
    };
    let got = run_policy(&b, &npy("image"), &npy("state"));
    for (g, w) in got.iter().zip(npy("expected_ort")) {
        assert!((g - w).abs() <= 1e-2 * (1.0 + w.abs()), "{g} vs ORT {w}");
    }
}
