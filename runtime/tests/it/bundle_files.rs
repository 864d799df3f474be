//! `reflex check` on a bundle whose model keeps its weights in an ONNX external data file
//! (issue 15, kind 2): every file the model needs is hashed, and a changed or unhashed data
//! file fails the check, naming it.

use reflex_models::bundle::{parse_manifest, sha256_file};
use reflex_models::manifest::{DataFile, PixelFormat};
use reflex_testkit::bundles::write_tiny_bundle;
use reflex_testkit::cli::Cli;
use reflex_testkit::dirs::WorkDir;
use std::path::Path;
use tract_onnx::pb::{tensor_proto::DataLocation, ModelProto, StringStringEntryProto};

fn reflex() -> Cli {
    Cli::new(env!("CARGO_BIN_EXE_reflex"))
}

/// Moves every initializer's data of `dir/policy.onnx` into `dir/policy.onnx.data`, as
/// `torch.onnx.export(..., dynamo=True)` and `onnx.save(..., save_as_external_data=True)` lay
/// it out (`location`, `offset`, `length`), and records the data file in the manifest.
fn externalize(dir: &Path) {
    use prost::Message as _;
    let model_path = dir.join("policy.onnx");
    let mut m = ModelProto::decode(&*std::fs::read(&model_path).expect("read")).expect("onnx");
    let mut data = vec![];
    for t in &mut m.graph.as_mut().expect("graph").initializer {
        let bytes: Vec<u8> = if t.raw_data.is_empty() {
            t.float_data.iter().flat_map(|f| f.to_le_bytes()).collect()
        } else {
            std::mem::take(&mut t.raw_data)
        };
        if t.data_type != 1 || bytes.is_empty() {
            t.raw_data = bytes;
            continue;
        }
        t.float_data.clear();
        let entry = |k: &str, v: String| StringStringEntryProto {
            key: k.into(),
            value: v,
        };
        t.external_data = vec![
            entry("location", "policy.onnx.data".into()),
            entry("offset", data.len().to_string()),
            entry("length", bytes.len().to_string()),
        ];
        t.data_location = Some(DataLocation::External as i32);
        data.extend_from_slice(&bytes);
    }
    std::fs::write(&model_path, m.encode_to_vec()).expect("write");
    std::fs::write(dir.join("policy.onnx.data"), &data).expect("write data");
    let mp = dir.join("policy.toml");
    let mut manifest =
        parse_manifest(&std::fs::read_to_string(&mp).expect("read"), &mp).expect("manifest");
    manifest.models[0].sha256 = sha256_file(&model_path).expect("hash");
    manifest.models[0].data_files = vec![DataFile {
        file: "policy.onnx.data".into(),
        sha256: sha256_file(&dir.join("policy.onnx.data")).expect("hash"),
    }];
    std::fs::write(&mp, manifest.to_toml().expect("toml")).expect("write");
}

#[test]
fn check_hashes_the_external_data_file() {
    let dir = WorkDir::new("external-data-check");
    write_tiny_bundle(
        &dir,
        reflex_models::manifest::CaptureSpec {
            width: 64,
            height: 48,
            format: PixelFormat::Rgb24,
            fps: 30,
        },
    );
    externalize(&dir);
    let out = reflex()
        .args(["check", "--bundle"])
        .arg(&*dir)
        .run()
        .success();
    assert!(out.stdout.contains("OK"), "{}", out.stdout);

    // One byte of the weights changed: refused, naming the data file.
    let data = dir.join("policy.onnx.data");
    let mut bytes = std::fs::read(&data).expect("read");
    bytes[0] ^= 0x01;
    std::fs::write(&data, &bytes).expect("write");
    let out = reflex()
        .args(["check", "--bundle"])
        .arg(&*dir)
        .run()
        .failure();
    assert!(
        out.stderr.contains("policy.onnx.data") && out.stderr.contains("sha256 mismatch"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("OK"), "{}", out.stdout);

    // An older manifest that does not list the data file: refused, with the fix.
    bytes[0] ^= 0x01;
    std::fs::write(&data, &bytes).expect("write");
    let mp = dir.join("policy.toml");
    let mut manifest =
        parse_manifest(&std::fs::read_to_string(&mp).expect("read"), &mp).expect("manifest");
    manifest.models[0].data_files.clear();
    std::fs::write(&mp, manifest.to_toml().expect("toml")).expect("write");
    let out = reflex()
        .args(["check", "--bundle"])
        .arg(&*dir)
        .run()
        .failure();
    assert!(
        out.stderr.contains("policy.onnx.data")
            && out.stderr.contains("data_files")
            && out.stderr.contains("re-export"),
        "{}",
        out.stderr
    );
}
