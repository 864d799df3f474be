//! The backend conformance suite (`reflex_testkit::conformance`) run for tract: the reference
//! ResNet-18 and ViT-S/16 bundles and a tiny one, outputs against ONNX Runtime.

use reflex_models::manifest::BackendKind;
use reflex_runtime::infer::select::prepare_policy;
use reflex_runtime::infer::tract::TractOptions;
use reflex_testkit::conformance::{check_backend, Tolerance};
use std::path::PathBuf;

#[test]
fn tract_conforms_to_onnx_runtime() {
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("conformance-tract");
    let mut prepare = |b: &reflex_models::Bundle| {
        prepare_policy(b, BackendKind::Tract, TractOptions { threads: 2 })
    };
    let reports = check_backend(BackendKind::Tract, &mut prepare, Tolerance::FP32_CPU, &work);
    for r in &reports {
        println!(
            "tract {}: vs ONNX Runtime {:?} (relative), repeat {:.1e}",
            r.case, r.vs_reference, r.repeat
        );
    }
    assert_eq!(reports.len(), 3);
}
