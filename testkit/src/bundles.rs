//! Bundles for tests: a tiny one that builds in milliseconds, and the demo bundle built once per
//! test binary.

use crate::dirs::fixture_dir;
use reflex_models::manifest::{CaptureSpec, Manifest};
use reflex_models::onnx::builder::{Attr, GraphBuilder};
use reflex_models::onnx::{EncoderKind, HeadKind, PolicyArch};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Side of the tiny bundle's square image input.
pub const TINY_SIDE: usize = 32;
/// Chunk length of the tiny bundle's output.
pub const TINY_HORIZON: usize = 8;

/// Writes a tiny bundle into `dir` and returns its manifest: the reference arm's manifest
/// (6 joints, limits, normalization, 20 Hz, per-joint CAN at 0x100; see
/// `reflex_models::reference::reference_manifest`) with one camera `front` captured as
/// `capture`, resized to 32x32, and tract as the only backend; the network averages the image
/// per channel, concatenates the state and maps the 9 features to a chunk of 8 actions with one
/// linear layer (fixed weights, bias 0).
///
/// Fast enough for software emulation (the QEMU tests) and to build per test, where the
/// ResNet-18 demo bundle takes seconds to export and ~45 MB to write. Panics if the bundle
/// cannot be written (naming the directory).
pub fn write_tiny_bundle(dir: &Path, capture: CaptureSpec) -> Manifest {
    let arch = PolicyArch {
        encoder: EncoderKind::Resnet18,
        cameras: vec!["front".into()],
        shared_encoder: false,
        state_dim: 6,
        action_dim: 6,
        hidden: vec![],
        head: HeadKind::Chunk {
            horizon: TINY_HORIZON,
        },
    };
    let mut m = reflex_models::reference::reference_manifest(&arch, "qemu-tiny", capture);
    m.cameras[0].preprocess.resize.width = TINY_SIDE as u32;
    m.cameras[0].preprocess.resize.height = TINY_SIDE as u32;
    m.models[0].backends = vec![reflex_models::manifest::BackendKind::Tract];

    let mut g = GraphBuilder::new("qemu-tiny");
    let image = g.input("image.front", &[1, 3, TINY_SIDE, TINY_SIDE]);
    let state = g.input("state", &[1, 6]);
    let pooled = g.node("pool", "GlobalAveragePool", &[&image], &[]);
    let flat = g.node("flat", "Flatten", &[&pooled], &[("axis", Attr::Int(1))]);
    let features = g.node(
        "features",
        "Concat",
        &[&flat, &state],
        &[("axis", Attr::Int(1))],
    );
    let out = TINY_HORIZON * 6;
    let w: Vec<f32> = (0..9 * out)
        .map(|i| 0.05 * ((i * 37 % 11) as f32 - 5.0) / 5.0)
        .collect();
    let w = g.initializer("head.weight", &[9, out], &w);
    let b = g.initializer("head.bias", &[out], &vec![0.0; out]);
    let y = g.node("head", "Gemm", &[&features, &w, &b], &[]);
    let shape = g.shape_const(&[1, TINY_HORIZON as i64, 6]);
    let action = g.node("action", "Reshape", &[&y, &shape], &[]);
    g.output(&action, &[1, TINY_HORIZON, 6]);
    let bytes = prost::Message::encode_to_vec(&g.finish());
    reflex_models::bundle::write_bundle(dir, &mut m, &[&bytes])
        .unwrap_or_else(|e| panic!("writing the tiny bundle in {}: {e}", dir.display()));
    m
}

/// The demo bundle (`reflex_models::reference::write_demo_bundle`: ResNet-18, one 640x480
/// camera, chunk of 16), written once per test binary into a fixture directory (see
/// [`crate::dirs::fixture_dir`]) and shared by its tests. Read-only: copy it
/// ([`crate::dirs::copy_files`]) before changing anything.
pub fn demo_bundle() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = fixture_dir("demo").join("bundle");
        reflex_models::reference::write_demo_bundle(&dir)
            .unwrap_or_else(|e| panic!("writing the demo bundle in {}: {e}", dir.display()));
        dir
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dirs::WorkDir;

    #[test]
    fn the_tiny_bundle_loads_with_the_shapes_it_states() {
        let d = WorkDir::new("tiny");
        let m = write_tiny_bundle(&d.join("b"), reflex_models::reference::default_capture());
        let b = reflex_models::Bundle::load(d.join("b")).expect("loads");
        assert_eq!(b.manifest, m);
        assert_eq!(
            b.io.input("image.front"),
            Some(&[1, 3, TINY_SIDE, TINY_SIDE][..])
        );
        assert_eq!(b.io.output("action"), Some(&[1, TINY_HORIZON, 6][..]));
    }
}
