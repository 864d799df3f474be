//! The TensorRT path without TensorRT or a GPU: every reason selection falls back to tract
//! (one test each), a matching engine selecting TensorRT, and the real lean runtime from PyPI
//! detected by `reflex check`. The shim is `reflex_testkit::fake_tensorrt` (tract behind
//! TensorRT's C surface); the library a stand-in reporting a version, or the real lean library.

use reflex_models::manifest::BackendKind;
use reflex_models::reference::default_capture;
use reflex_models::Bundle;
use reflex_runtime::bench::measure::{measure_model, BenchOptions};
use reflex_runtime::infer::select::{
    decide_on, decide_with, prepare_policy_on, BackendChoice, CpuOrder, SelectError,
};
use reflex_runtime::infer::tensorrt::builder::{build_engine, BuildOptions};
use reflex_runtime::infer::tensorrt::cuda::{CudaError, GpuInfo};
use reflex_runtime::infer::tensorrt::engine::{EngineMismatch, EngineSidecar};
use reflex_runtime::infer::tensorrt::library::{TensorrtLibrary, TrtVersion};
use reflex_runtime::infer::tensorrt::shim::ShimApi;
use reflex_runtime::infer::tensorrt::{self, cuda, Blocker};
use reflex_runtime::infer::tract::TractOptions;
use reflex_runtime::timing::Stage;
use reflex_testkit::bundles::write_tiny_bundle;
use reflex_testkit::dirs::WorkDir;
use reflex_testkit::fake_tensorrt::{self, build_engine_here, write_sidecar, StandIn};
use std::ffi::c_void;
use std::path::{Path, PathBuf};

type Stand = StandIn;

/// The tiny bundle with its policy listed for tract and TensorRT.
fn bundle(dir: &Path) -> Bundle {
    write_tiny_bundle(dir, default_capture());
    let mut b = Bundle::load(dir).expect("tiny bundle loads");
    b.manifest.models[0]
        .backends
        .push(reflex_models::manifest::BackendKind::Tensorrt);
    b
}

/// A stand-in engine and its sidecar, as if built here.
fn engine_here(b: &Bundle) -> (PathBuf, EngineSidecar) {
    build_engine_here(b, false)
}

fn blocker(b: &Bundle, p: &Stand) -> Blocker {
    match tensorrt::probe(b, p).outcome {
        Ok(r) => panic!("expected a fallback, TensorRT was ready: {r:?}"),
        Err(e) => e,
    }
}

/// `auto` falls back to tract, and the reason it gives is `expected` (verbatim). (tract is
/// given as the measured CPU winner, so that ONNX Runtime, when its library is here, does not
/// take the fallback's place.)
fn falls_back_with(b: &Bundle, p: &Stand, expected: &str) {
    let tract_first = CpuOrder::Measured {
        winner: BackendKind::Tract,
        median_ms: 1.0,
    };
    let s = decide_with(
        b,
        BackendChoice::Auto,
        TractOptions { threads: 1 },
        tract_first,
        p,
    )
    .expect("tract");
    assert_eq!(s.backend, BackendKind::Tract);
    assert_eq!(s.passed_over.len(), 1, "{s}");
    assert_eq!(s.passed_over[0].0, BackendKind::Tensorrt);
    let reason = s.passed_over[0].1.to_string();
    assert!(reason.contains(expected), "{reason}\nexpected: {expected}");
    // Asked for explicitly, TensorRT fails with the same reason instead of falling back.
    let e = decide_on(b, BackendChoice::Tensorrt, TractOptions { threads: 1 }, p)
        .expect_err("explicit tensorrt refused");
    assert!(matches!(e, SelectError::Unavailable { .. }), "{e}");
    assert!(e.to_string().contains(expected), "{e}");
}

#[test]
fn tensorrt_falls_back_when_the_shim_is_not_compiled_in() {
    let d = WorkDir::new("trt-no-shim");
    let b = bundle(&d);
    let p = Stand {
        shim: None,
        ..Stand::jetson()
    };
    assert!(matches!(blocker(&b, &p), Blocker::NotCompiledIn));
    falls_back_with(&b, &p, "support is not compiled into this build");
}

#[test]
fn tensorrt_falls_back_when_the_library_is_absent() {
    let d = WorkDir::new("trt-no-lib");
    let b = bundle(&d);
    let p = Stand {
        library: Box::new(|| TensorrtLibrary::open("libnvinfer_not_here.so.10".into())),
        ..Stand::jetson()
    };
    assert!(matches!(blocker(&b, &p), Blocker::Library(_)));
    falls_back_with(&b, &p, "library TensorRT not found");
}

#[test]
fn tensorrt_falls_back_when_there_is_no_cuda_device() {
    let d = WorkDir::new("trt-no-cuda");
    let b = bundle(&d);
    engine_here(&b);
    let p = Stand {
        gpu: Err(CudaError::NoDevice),
        ..Stand::jetson()
    };
    let probe = tensorrt::probe(&b, &p);
    assert!(
        matches!(probe.outcome, Err(Blocker::Cuda(CudaError::NoDevice))),
        "{:?}",
        probe.outcome
    );
    // No runtime is created without a device: deserialization is never tried.
    assert!(probe.conditions.iter().all(|c| c.what != "deserializes"));
    falls_back_with(&b, &p, "no usable device: the CUDA driver sees no device");
}

#[test]
fn tensorrt_falls_back_when_no_engine_was_built() {
    let d = WorkDir::new("trt-no-engine");
    let b = bundle(&d);
    let e = blocker(&b, &Stand::jetson());
    assert!(matches!(e, Blocker::EngineMissing { .. }), "{e}");
    falls_back_with(
        &b,
        &Stand::jetson(),
        &format!(
            "no engine at {} (build one on this board: reflex engine build --bundle {})",
            d.join("engines/policy.engine").display(),
            d.display()
        ),
    );
}

#[test]
fn tensorrt_falls_back_on_another_tensorrt_version() {
    let d = WorkDir::new("trt-version");
    let b = bundle(&d);
    engine_here(&b);
    let p = Stand {
        library: Box::new(|| {
            Ok(TensorrtLibrary::stand_in(
                "libnvinfer.so.10",
                TrtVersion::from_int(101601),
            ))
        }),
        ..Stand::jetson()
    };
    assert!(matches!(
        blocker(&b, &p),
        Blocker::Mismatch(EngineMismatch::Version { .. })
    ));
    falls_back_with(
        &b,
        &p,
        "engine policy.engine was built with TensorRT 10.3.0.26, this library is TensorRT 10.16.1",
    );
}

#[test]
fn tensorrt_falls_back_on_another_gpu() {
    let d = WorkDir::new("trt-gpu");
    let b = bundle(&d);
    engine_here(&b);
    let p = Stand {
        gpu: Ok(GpuInfo {
            name: "NVIDIA GeForce RTX 4090".into(),
            compute_capability: (8, 9),
            sm_count: 128,
            integrated: false,
            ordinal: 0,
        }),
        ..Stand::jetson()
    };
    assert!(matches!(
        blocker(&b, &p),
        Blocker::Mismatch(EngineMismatch::Gpu { .. })
    ));
    falls_back_with(
        &b,
        &p,
        "was built on Orin (compute 8.7, 16 SMs), this device is NVIDIA GeForce RTX 4090 \
         (compute 8.9, 128 SMs)",
    );
}

#[test]
fn tensorrt_falls_back_when_the_model_changed_since_the_build() {
    let d = WorkDir::new("trt-model");
    let b = bundle(&d);
    let (engine, mut sidecar) = engine_here(&b);
    // An engine built from an earlier model of the same name (what ONNX Runtime's cache reuses).
    sidecar.source_sha256 = "0".repeat(64);
    write_sidecar(&engine, &sidecar);
    assert!(matches!(
        blocker(&b, &Stand::jetson()),
        Blocker::Mismatch(EngineMismatch::Model { .. })
    ));
    falls_back_with(&b, &Stand::jetson(), "(the model changed: rebuild");
}

#[test]
fn tensorrt_falls_back_when_the_engine_does_not_deserialize() {
    let d = WorkDir::new("trt-deserialize");
    let b = bundle(&d);
    let (engine, mut sidecar) = engine_here(&b);
    // The sidecar describes these bytes (as after a TensorRT build-number change, which the
    // library does not report), but TensorRT refuses them.
    std::fs::write(&engine, b"not an engine").expect("overwrite");
    sidecar.engine_sha256 = reflex_models::bundle::sha256_bytes(b"not an engine");
    write_sidecar(&engine, &sidecar);
    let e = blocker(&b, &Stand::jetson());
    assert!(matches!(e, Blocker::Deserialize { .. }), "{e}");
    // TensorRT's own log line, verbatim.
    falls_back_with(&b, &Stand::jetson(), "Magic tag does not match");
}

#[test]
fn tensorrt_falls_back_when_the_engine_file_is_not_the_one_built() {
    let d = WorkDir::new("trt-engine-bytes");
    let b = bundle(&d);
    let (engine, _) = engine_here(&b);
    // Another board's engine copied over this one, its sidecar kept (or a truncated copy).
    let mut bytes = std::fs::read(&engine).expect("engine");
    bytes.extend_from_slice(b"\n");
    std::fs::write(&engine, bytes).expect("overwrite");
    assert!(matches!(
        blocker(&b, &Stand::jetson()),
        Blocker::Mismatch(EngineMismatch::EngineBytes { .. })
    ));
    falls_back_with(
        &b,
        &Stand::jetson(),
        "(the file changed since it was built: rebuild it here with `reflex engine build`)",
    );
}

#[test]
fn a_matching_engine_selects_tensorrt() {
    let d = WorkDir::new("trt-selected");
    let b = bundle(&d);
    engine_here(&b);
    let probe = tensorrt::probe(&b, &Stand::jetson());
    let whats: Vec<&str> = probe.conditions.iter().map(|c| c.what).collect();
    assert_eq!(
        whats,
        [
            "shim compiled in",
            "library",
            "CUDA device",
            "model",
            "engine",
            "engine matches",
            "engine file intact",
            "deserializes"
        ]
    );
    assert!(probe.conditions.iter().all(|c| c.verdict.is_ok()));
    let s = decide_on(
        &b,
        BackendChoice::Auto,
        TractOptions { threads: 1 },
        &Stand::jetson(),
    )
    .expect("selected");
    assert_eq!(s.backend, BackendKind::Tensorrt);
    assert!(s.passed_over.is_empty());
    assert_eq!(
        s.to_string(),
        format!(
            "auto: TensorRT 10.3.0 on Orin (compute 8.7, 16 SMs) GPU, engine {}",
            d.join("engines/policy.engine").display()
        )
    );
    // The session runs the engine the probe deserialized: one deserialization per prepare.
    let before = fake_tensorrt::deserializations(&b.policy_path);
    let mut trt = prepare_policy_on(
        &b,
        BackendKind::Tensorrt,
        TractOptions { threads: 1 },
        &Stand::jetson(),
    )
    .expect("trt");
    assert_eq!(fake_tensorrt::deserializations(&b.policy_path), before + 1);
    // `reflex bench --model-only` reports the device's own time apart from the host's.
    let opts = BenchOptions {
        rate_hz: 10.0,
        warmup: 1,
        iterations: Some(5),
        duration_s: None,
    };
    let m = measure_model(trt.as_mut(), 1, &opts).expect("bench");
    let gpu = m.timings.get(Stage::GpuCompute);
    let host = m.timings.get(Stage::Inference);
    assert_eq!((gpu.count(), host.count()), (5, 5));
    assert!(gpu.max().unwrap() <= host.max().unwrap());
    assert!(gpu.min().unwrap() > 0);
}

static CREATE_CALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The stand-in shim's `runtime_create` replaced by one that records being called (only the
/// lean-library test uses it): proves no runtime is created without a CUDA device.
#[allow(unsafe_code)]
unsafe extern "C" fn never_create(
    _: Option<reflex_runtime::infer::tensorrt::library::CreateRuntimeFn>,
    _: reflex_runtime::infer::tensorrt::shim::LogFn,
    _: *mut c_void,
    _: i32,
) -> *mut c_void {
    CREATE_CALLED.store(true, std::sync::atomic::Ordering::SeqCst);
    std::ptr::null_mut()
}

const NEVER_CREATES: ShimApi = ShimApi {
    runtime_create: never_create,
    ..fake_tensorrt::API
};

const LEAN_WHEEL: &str = "tensorrt-lean-cu12-libs==10.16.1.11";

/// The real lean runtime from PyPI, installed once into `<target>/tmp/reflex-testkit/cache/`;
/// `None` (the test skips, saying so) under `REFLEX_SKIP_PY=1`.
fn lean_library() -> Option<PathBuf> {
    let cache = reflex_testkit::dirs::root().join("cache/tensorrt-lean-cu12-libs-10.16.1.11");
    let lib = cache.join("tensorrt_lean_libs/libnvinfer_lean.so.10");
    if lib.is_file() {
        return Some(lib);
    }
    if reflex_testkit::python::skipped() {
        eprintln!("REFLEX_SKIP_PY=1: skipped installing {LEAN_WHEEL}");
        return None;
    }
    let run = reflex_testkit::cli::Cli::new("python3")
        .args(["-m", "pip", "install", "--no-deps", "--quiet", "--target"])
        .arg(&cache)
        .arg(LEAN_WHEEL)
        .run();
    assert!(
        run.status.success(),
        "installing {LEAN_WHEEL} failed:\n{run}\n(needs python3 with pip and PyPI; set \
         REFLEX_SKIP_PY=1 to skip the tests that use Python packages)"
    );
    assert!(lib.is_file(), "{} missing after pip install", lib.display());
    Some(lib)
}

#[test]
fn the_real_lean_runtime_is_found_and_no_runtime_is_created_without_cuda() {
    let Some(lib) = lean_library() else { return };
    let loaded = TensorrtLibrary::open(lib.clone().into()).expect("the lean library loads");
    assert_eq!(loaded.version.to_string(), "10.16.1");
    assert_eq!(
        loaded.to_string(),
        format!("{} (TensorRT 10.16.1, lean runtime)", lib.display())
    );
    let device = cuda::first_device();
    if device.is_ok() {
        eprintln!("this machine has a CUDA device: the no-device fallback is not shown here");
        return;
    }
    let d = WorkDir::new("trt-lean");
    let b = bundle(&d);
    engine_here(&b);
    let p = Stand {
        shim: Some(&NEVER_CREATES),
        library: Box::new(move || TensorrtLibrary::open(lib.clone().into())),
        gpu: device,
    };
    let probe = tensorrt::probe(&b, &p);
    assert!(matches!(probe.outcome, Err(Blocker::Cuda(_))), "{probe:?}");
    assert!(!CREATE_CALLED.load(std::sync::atomic::Ordering::SeqCst));
    let library = &probe.conditions[1];
    assert_eq!(library.what, "library");
    assert!(
        library
            .verdict
            .as_ref()
            .is_ok_and(|v| v.contains("TensorRT 10.16.1, lean runtime")),
        "{library:?}"
    );
}

#[test]
fn reflex_check_reports_the_lean_runtime_and_why_it_falls_back() {
    let Some(lib) = lean_library() else { return };
    let d = WorkDir::new("trt-lean-check");
    write_tiny_bundle(&d, default_capture());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_reflex"))
        .args(["check", "--bundle"])
        .arg(d.path())
        .env("REFLEX_TENSORRT_LIB", &lib)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "    tensorrt library: yes: {} (TensorRT 10.16.1, lean runtime)",
            lib.display()
        )),
        "{stdout}"
    );
    if cuda::first_device().is_err() {
        assert!(
            stdout.contains("    tensorrt CUDA device: no: no CUDA device: "),
            "{stdout}"
        );
    }
    assert!(stdout.contains("  backend tract: available"), "{stdout}");
    assert!(
        stdout.contains("  backend tensorrt: not available: "),
        "{stdout}"
    );
}

/// A fake trtexec: writes a stand-in engine for its `--onnx` at its `--saveEngine`, printing a
/// line as trtexec does; with `fail`, writes half an engine and exits 1.
fn fake_trtexec(dir: &Path, fail: bool) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join(if fail { "trtexec-fails" } else { "trtexec" });
    let body = if fail {
        "printf 'reflex fake' > \"$out\"\necho '[E] Error[4]: network build failed' >&2\nexit 1\n"
    } else {
        "printf '%s\\n%s\\n' \"$MAGIC\" \"$onnx\" > \"$out\"\necho '&&&& PASSED TensorRT.trtexec'\n"
    };
    let text = format!(
        "#!/bin/sh\nMAGIC='{}'\nfor a in \"$@\"; do case \"$a\" in --onnx=*) onnx=\"${{a#--onnx=}}\";; \
         --saveEngine=*) out=\"${{a#--saveEngine=}}\";; esac; done\necho \"&&&& RUNNING \
         TensorRT.trtexec [TensorRT v100300] # $0 $*\"\n{body}",
        fake_tensorrt::MAGIC
    );
    std::fs::write(&script, text).expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    script
}

fn build_opts(trtexec: PathBuf) -> BuildOptions {
    BuildOptions {
        trtexec,
        dla_core: None,
        workspace_mib: Some(1024),
    }
}

fn staging_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.contains(".reflex-tmp-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn engine_build_writes_engine_and_sidecar_and_the_engine_runs_like_tract() {
    let d = WorkDir::new("trt-build");
    let b = bundle(&d);
    let trtexec = fake_trtexec(&d, false);
    let mut lines = vec![];
    let sidecar = build_engine(
        &b,
        &build_opts(trtexec.clone()),
        &Stand::jetson(),
        &mut |l: &str| lines.push(l.to_string()),
    )
    .expect("built");
    assert!(lines.iter().any(|l| l.contains("&&&& PASSED")), "{lines:?}");
    let engine = d.join("engines/policy.engine");
    assert!(engine.is_file());
    assert!(staging_files(&d.join("engines")).is_empty());
    let back = EngineSidecar::read(&d.join("engines/policy.engine.toml")).expect("sidecar");
    assert_eq!(back, sidecar);
    assert_eq!(sidecar.tensorrt_version, "10.3.0");
    assert_eq!(sidecar.gpu.compute_capability, "8.7");
    assert_eq!(sidecar.source_sha256, b.manifest.models[0].sha256);
    assert_eq!(sidecar.dla_core, -1);
    assert_eq!(
        sidecar.trtexec_command,
        format!(
            "{} --onnx={} --saveEngine={} --timingCacheFile={} --stronglyTyped \
             --memPoolSize=workspace:1024M --skipInference",
            trtexec.display(),
            d.join("policy.onnx").display(),
            engine.display(),
            d.join("engines/timing-sm87-16sm-trt10.3.0.cache").display()
        )
    );
    assert!(d.join("engines/policy.build.log").is_file());

    // Selected, prepared and run: the same outputs as tract on the same inputs.
    let s = decide_on(
        &b,
        BackendChoice::Auto,
        TractOptions { threads: 1 },
        &Stand::jetson(),
    )
    .expect("selected");
    assert_eq!(s.backend, BackendKind::Tensorrt);
    let one = TractOptions { threads: 1 };
    let mut trt = prepare_policy_on(&b, BackendKind::Tensorrt, one, &Stand::jetson()).expect("trt");
    let mut tract =
        prepare_policy_on(&b, BackendKind::Tract, one, &Stand::jetson()).expect("tract");
    assert_eq!(trt.name(), "tensorrt");
    for p in [&mut trt, &mut tract] {
        for (i, v) in p.camera_input(0).iter_mut().enumerate() {
            *v = (i % 7) as f32 * 0.1;
        }
        for (i, v) in p.state_input().expect("state").iter_mut().enumerate() {
            *v = i as f32 * 0.2 - 0.5;
        }
        p.run().expect("runs");
    }
    assert_eq!(trt.output(), tract.output());
}

#[test]
fn a_failed_engine_build_leaves_no_engine() {
    let d = WorkDir::new("trt-build-fails");
    let b = bundle(&d);
    let e = build_engine(
        &b,
        &build_opts(fake_trtexec(&d, true)),
        &Stand::jetson(),
        &mut |_: &str| {},
    )
    .expect_err("trtexec failed");
    assert!(
        e.to_string().contains("trtexec failed (exit status: 1)"),
        "{e}"
    );
    assert!(e.to_string().contains("network build failed"), "{e}");
    assert!(!d.join("engines/policy.engine").exists());
    assert!(!d.join("engines/policy.engine.toml").exists());
    assert!(staging_files(&d.join("engines")).is_empty());
    assert!(d.join("engines/policy.build.log").is_file());
}

#[test]
fn fp16_io_engines_are_converted_with_half() {
    let d = WorkDir::new("trt-fp16-io");
    let b = bundle(&d);
    build_engine_here(&b, true);
    let one = TractOptions { threads: 1 };
    let mut trt = prepare_policy_on(&b, BackendKind::Tensorrt, one, &Stand::jetson()).expect("trt");
    let mut tract =
        prepare_policy_on(&b, BackendKind::Tract, one, &Stand::jetson()).expect("tract");
    for p in [&mut trt, &mut tract] {
        for (i, v) in p.camera_input(0).iter_mut().enumerate() {
            *v = (i % 5) as f32 * 0.2;
        }
        p.run().expect("runs");
    }
    // fp16 I/O: inputs and outputs rounded to 11 significant bits.
    for (a, b) in trt.output().iter().zip(tract.output()) {
        assert!((a - b).abs() <= 2e-3 * b.abs().max(1.0), "{a} vs {b}");
    }
    assert_ne!(trt.output(), tract.output(), "fp16 rounding must show");
}
