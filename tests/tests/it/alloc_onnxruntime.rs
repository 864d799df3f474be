//! reflex's ONNX Runtime session in the control loop allocates nothing on reflex's side, not even
//! on the ticks that run the network: inputs and outputs are bound once (`OrtIoBinding`) and a
//! run is one `RunWithBinding` call.
//!
//! The counting allocator sees Rust's heap only; ONNX Runtime's own (C++) allocations go to
//! `malloc` directly. Those are measured with glibc's `mallinfo2` (bytes in use and bytes held
//! from the system) across the timed ticks, and printed: ONNX Runtime's CPU arena and memory
//! pattern make them flat after warm-up.

use reflex_models::Bundle;
use reflex_runtime::camera::replay::{generate_synthetic_episode, Episode, ReplayMode};
use reflex_runtime::can::sink::NullSink;
use reflex_runtime::clock::ManualClock;
use reflex_runtime::control::{ControlLoop, LoopOptions};
use reflex_runtime::infer::onnxruntime::{library, OrtOptions, OrtSession};
use reflex_runtime::infer::policy::SinglePassPolicy;
use reflex_runtime::infer::runner::{InlineRunner, Request};
use reflex_testkit::bundles::demo_bundle;
use reflex_testkit::counting;
use reflex_testkit::dirs::WorkDir;

/// glibc's heap figures: (bytes in use by malloc, bytes held from the system incl. mmap).
#[allow(unsafe_code)]
fn heap() -> (u64, u64) {
    // SAFETY: mallinfo2 only reads the allocator's statistics (glibc >= 2.33).
    let m = unsafe { libc::mallinfo2() };
    ((m.uordblks + m.hblkhd) as u64, (m.arena + m.hblkhd) as u64)
}

#[test]
fn onnxruntime_ticks_allocate_nothing_on_our_side() {
    if let Err(e) = library() {
        if ort_skipped() {
            eprintln!("Python references skipped: not measured ({e})");
            return;
        }
        panic!("{e}; REFLEX_SKIP_PY=1 skips this on machines without Python onnxruntime");
    }
    let dir = WorkDir::new("alloc-onnxruntime");
    let bundle = Bundle::load(demo_bundle()).expect("bundle");
    let m = &bundle.manifest;
    generate_synthetic_episode(m, &dir.join("episode"), 1.0, 30).expect("episode");
    let ep = Episode::load(&dir.join("episode")).expect("episode");
    // One intra-op thread: ONNX Runtime computes on the calling (counted) thread.
    let session = OrtSession::prepare(
        &bundle.policy_path,
        OrtOptions {
            threads: 1,
            cache: None,
        },
    )
    .expect("onnxruntime");
    let backend = SinglePassPolicy::new(session, m, &bundle.policy_path).expect("policy");
    let req = Request::for_manifest(m);
    let cams = vec![ep
        .camera("front", ReplayMode::AsFastAsPossible)
        .expect("cam")];
    let st = ep
        .state_source(&m.state.names, ReplayMode::AsFastAsPossible)
        .expect("state");
    let mut lp = ControlLoop::new(
        m,
        cams,
        st,
        NullSink::default(),
        InlineRunner::new(backend, req),
        &LoopOptions::default(),
    )
    .expect("loop");
    let clock = ManualClock::new(0);
    lp.warm_up(&clock, 1_000_000_000).expect("warm-up");
    let period = lp.period_ns();
    for k in 0..8 {
        lp.tick(k * period).expect("tick");
    }
    counting::assert_installed();
    let (used0, held0) = heap();
    let a0 = counting::allocs();
    let mut infer_ticks = 0;
    for k in 8..40 {
        if lp.tick(k * period).expect("tick").inference_submitted {
            infer_ticks += 1;
        }
    }
    let ours = counting::allocs() - a0;
    let (used1, held1) = heap();
    assert!(infer_ticks >= 7, "{infer_ticks}");
    println!(
        "onnxruntime (ResNet-18 chunk policy, 1 thread): {ours} allocations on reflex's side in \
         32 ticks ({infer_ticks} inferences); ONNX Runtime's heap: in use {:+} bytes, held from \
         the system {:+} bytes",
        used1 as i64 - used0 as i64,
        held1 as i64 - held0 as i64
    );
    assert_eq!(
        ours, 0,
        "ticks with the ONNX Runtime session allocate on our side"
    );
}

/// The ONNX Runtime library comes from the pip-installed `onnxruntime` (or
/// `REFLEX_ONNXRUNTIME_LIB`): a machine that skips the Python references may lack it.
fn ort_skipped() -> bool {
    reflex_testkit::python::skipped() || std::env::var("REFLEX_SKIP_ORT").as_deref() == Ok("1")
}
