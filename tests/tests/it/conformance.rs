//! The backend conformance suite (`reflex_testkit::conformance`) run for tract, for reflex's
//! ONNX Runtime session and for the TensorRT session on the stand-in shim: the reference ResNet-18 and ViT-S/16 bundles and a tiny one, outputs
//! against ONNX Runtime's Python API.

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

/// The TensorRT session (its Rust side: probe, deserialization, binding by name, shapes,
/// element types, device buffers, synchronisation) over the stand-in shim, which serves the shim's
/// C surface from tract (`reflex_testkit::fake_tensorrt`): no TensorRT or GPU runs here. The
/// conformance bundles list their policy for tract only, so the factory lists it for tensorrt
/// too and builds a stand-in engine from that same file (the one ONNX Runtime is run on). On a
/// board, the same call with `ThisMachine` and `prepare_policy` runs the real engine.
#[test]
fn tensorrt_session_on_the_stand_in_shim_conforms_to_onnx_runtime() {
    use reflex_runtime::infer::select::prepare_policy_on;
    use reflex_testkit::fake_tensorrt::{build_engine_here, StandIn};
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("conformance-tensorrt-stand-in");
    let mut prepare = |b: &reflex_models::Bundle| {
        let mut b = b.clone();
        for f in &mut b.manifest.models {
            if f.backends.contains(&BackendKind::Tract)
                && !f.backends.contains(&BackendKind::Tensorrt)
            {
                f.backends.push(BackendKind::Tensorrt);
            }
        }
        build_engine_here(&b, false);
        prepare_policy_on(
            &b,
            BackendKind::Tensorrt,
            TractOptions { threads: 2 },
            &StandIn::jetson(),
        )
    };
    let reports = check_backend(BackendKind::Tract, &mut prepare, Tolerance::FP32_CPU, &work);
    for r in &reports {
        println!(
            "tensorrt (stand-in shim) {}: vs ONNX Runtime {:?} (relative), repeat {:.1e}",
            r.case, r.vs_reference, r.repeat
        );
    }
    assert_eq!(reports.len(), 3);
}

/// reflex's ONNX Runtime session (the library of the pip-installed `onnxruntime`, found as
/// `reflex` finds it) against ONNX Runtime's Python API, on the file listed for tract. Without
/// the library this fails (CI has it), unless REFLEX_SKIP_PY=1 (or REFLEX_SKIP_ORT=1).
#[test]
fn onnxruntime_session_conforms_to_onnx_runtime() {
    use reflex_runtime::infer::onnxruntime::library;
    let lib = match library() {
        Ok(lib) => lib,
        Err(e) if ort_skipped() => {
            eprintln!("Python references skipped: ONNX Runtime session not checked ({e})");
            return;
        }
        Err(e) => panic!("{e}; REFLEX_SKIP_PY=1 skips this on machines without Python onnxruntime"),
    };
    println!("{lib}");
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("conformance-onnxruntime");
    let mut prepare = |b: &reflex_models::Bundle| {
        prepare_policy(b, BackendKind::Onnxruntime, TractOptions { threads: 2 })
    };
    let reports = check_backend(
        BackendKind::Onnxruntime,
        &mut prepare,
        Tolerance::FP32_CPU,
        &work,
    );
    for r in &reports {
        println!(
            "onnxruntime {}: vs ONNX Runtime (Python) {:?} (relative), repeat {:.1e}",
            r.case, r.vs_reference, r.repeat
        );
    }
    assert_eq!(reports.len(), 3);
}

/// A backend whose output is off by 1e-2 in one value: the suite must refuse it.
struct Off(Box<dyn reflex_runtime::infer::policy::Policy>, Vec<f32>);

impl reflex_runtime::infer::policy::Policy for Off {
    fn name(&self) -> &'static str {
        "off"
    }
    fn camera_input(&mut self, cam: usize) -> &mut [f32] {
        self.0.camera_input(cam)
    }
    fn state_input(&mut self) -> Option<&mut [f32]> {
        self.0.state_input()
    }
    fn run(&mut self) -> Result<(), reflex_runtime::infer::policy::PolicyError> {
        self.0.run()?;
        self.1.copy_from_slice(self.0.output());
        self.1[0] += 1e-2;
        Ok(())
    }
    fn output(&self) -> &[f32] {
        &self.1
    }
}

#[test]
fn the_suite_fails_a_backend_that_is_off() {
    if std::env::var("REFLEX_SKIP_ORT").as_deref() == Ok("1") {
        return;
    }
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("conformance-off");
    let mut prepare = |b: &reflex_models::Bundle| {
        let p = prepare_policy(b, BackendKind::Tract, TractOptions { threads: 1 })?;
        let n = p.output().len();
        Ok(Box::new(Off(p, vec![0.0; n])) as Box<dyn reflex_runtime::infer::policy::Policy>)
    };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check_backend(BackendKind::Tract, &mut prepare, Tolerance::FP32_CPU, &work)
    }));
    let e = r.expect_err("a backend off by 1e-2 must fail the suite");
    let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("and ONNX Runtime differ"), "{msg}");
}

/// The ONNX Runtime library comes from the pip-installed `onnxruntime` (or
/// `REFLEX_ONNXRUNTIME_LIB`): a machine that skips the Python references may lack it.
fn ort_skipped() -> bool {
    reflex_testkit::python::skipped() || std::env::var("REFLEX_SKIP_ORT").as_deref() == Ok("1")
}
