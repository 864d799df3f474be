//! Loop overhead beyond inference, and control-period jitter at 50 Hz.
//!
//! `cargo bench -p reflex-runtime --bench loop_overhead`
//!
//! The network is replaced by a backend that returns at once, so what is timed is everything the
//! loop itself does per tick: camera poll, preprocessing of a 640x480 YUYV frame, chunk
//! scheduling, safety filter, command encoding. Reported as median and p99 per tick, with and
//! without the preprocessing share, then the period jitter of a real-time run at 50 Hz on the
//! monotonic clock. Ratios are against a memory copy of the same frame, measured in the same run.

use reflex_models::reference::{default_capture, demo_arch, reference_manifest};
use reflex_runtime::camera::replay::{generate_synthetic_episode, Episode, ReplayMode};
use reflex_runtime::can::sink::NullSink;
use reflex_runtime::clock::{Clock, ManualClock, MonotonicClock};
use reflex_runtime::control::{ControlLoop, LoopOptions};
use reflex_runtime::infer::policy::{Policy, PolicyError};
use reflex_runtime::infer::runner::{InlineRunner, Request, ThreadedRunner};
use reflex_runtime::preprocess::Preprocessor;
use reflex_runtime::timing::{Histogram, Stage};
use std::time::Instant;

/// Returns a constant chunk at once.
struct Instant0 {
    images: Vec<f32>,
    state: Vec<f32>,
    out: Vec<f32>,
}

impl Policy for Instant0 {
    fn name(&self) -> &'static str {
        "instant"
    }
    fn camera_input(&mut self, _: usize) -> &mut [f32] {
        &mut self.images
    }
    fn state_input(&mut self) -> Option<&mut [f32]> {
        Some(&mut self.state)
    }
    fn run(&mut self) -> Result<(), PolicyError> {
        Ok(())
    }
    fn output(&self) -> &[f32] {
        &self.out
    }
}

fn ms(v: Option<u64>) -> f64 {
    v.unwrap_or(0) as f64 / 1e6
}

fn main() {
    // `cargo test` runs bench binaries without `--bench`: a short smoke run then.
    let full = std::env::args().any(|a| a == "--bench");
    let mut m = reference_manifest(&demo_arch(), "bench", default_capture());
    m.control.rate_hz = 50.0;
    let dir = std::env::temp_dir().join("reflex-bench-loop-episode");
    generate_synthetic_episode(&m, &dir, 1.0, 30).expect("episode");
    let ep = Episode::load(&dir).expect("episode");
    let pre = Preprocessor::new(&m.cameras[0]).expect("pre");
    let n_img = pre.output_len();
    let out_len = m.action.output.horizon() * m.action.names.len();
    let backend = || Instant0 {
        images: vec![0.0; n_img],
        state: vec![0.0; 6],
        out: vec![0.1; out_len],
    };
    let req = || Request::new(&[n_img], 6, out_len);

    // 1. Tick cost, manual clock, inline "inference", every tick a new frame.
    let cam = ep
        .camera("front", ReplayMode::AsFastAsPossible)
        .expect("cam");
    let st = ep
        .state_source(&m.state.names, ReplayMode::AsFastAsPossible)
        .expect("state");
    let mut lp = ControlLoop::new(
        &m,
        vec![cam],
        st,
        NullSink::default(),
        InlineRunner::new(backend(), req()),
        &LoopOptions::default(),
    )
    .expect("loop");
    let clock = ManualClock::new(0);
    lp.warm_up(&clock, 1_000_000_000).expect("warm");
    let period = lp.period_ns();
    for k in 0..50 {
        lp.tick(k * period).expect("tick");
    }
    lp.timings = Default::default();
    let n = if full { 2000 } else { 20 };
    let mut ticks = Histogram::new();
    for k in 50..50 + n {
        let t = Instant::now();
        lp.tick(k * period).expect("tick");
        ticks.record(t.elapsed().as_nanos() as u64);
    }
    let pre_h = lp.timings.get(Stage::Preprocess).clone();
    // Tick minus its preprocessing, per tick (both histograms over the same ticks).
    let frame = &ep.data[0][..640 * 480 * 2];
    let mut copy = vec![0u8; frame.len()];
    let mut memcpy = Histogram::new();
    for _ in 0..n {
        let t = Instant::now();
        copy.copy_from_slice(std::hint::black_box(frame));
        std::hint::black_box(&copy);
        memcpy.record(t.elapsed().as_nanos() as u64);
    }
    println!("loop overhead per tick (no inference), {n} ticks, 640x480 YUYV -> 224x224, chunk 16, 6 joints:");
    println!(
        "  whole tick:        median {:.3} ms  p99 {:.3} ms",
        ms(ticks.quantile(0.5)),
        ms(ticks.quantile(0.99))
    );
    println!(
        "  of which preprocess: median {:.3} ms  p99 {:.3} ms",
        ms(pre_h.quantile(0.5)),
        ms(pre_h.quantile(0.99))
    );
    println!(
        "  tick without preprocess (mean difference): {:.4} ms",
        (ticks.mean().unwrap_or(0.0) - pre_h.mean().unwrap_or(0.0)) / 1e6
    );
    println!(
        "  memcpy of the same frame: median {:.4} ms; tick / memcpy = {:.1}x",
        ms(memcpy.quantile(0.5)),
        ms(ticks.quantile(0.5)) / ms(memcpy.quantile(0.5)).max(1e-9)
    );

    // 2. Period jitter at 50 Hz, real clock, inference on the worker thread.
    let cam = ep.camera("front", ReplayMode::RealTime).expect("cam");
    let st = ep
        .state_source(&m.state.names, ReplayMode::RealTime)
        .expect("state");
    let runner = ThreadedRunner::spawn(backend(), req()).expect("worker");
    let mut lp = ControlLoop::new(
        &m,
        vec![cam],
        st,
        NullSink::default(),
        runner,
        &LoopOptions::default(),
    )
    .expect("loop");
    let clock = MonotonicClock::new();
    lp.warm_up(&clock, 1_000_000_000).expect("warm");
    let ticks = if full { 500 } else { 10 };
    let mut jitter = Histogram::new();
    let mut last = None;
    let start = clock.now_ns();
    for k in 0..ticks {
        let now = clock.now_ns();
        if let Some(l) = last {
            let d: u64 = now - l;
            jitter.record(d.abs_diff(period));
        }
        last = Some(now);
        lp.tick(now).expect("tick");
        clock.sleep_until(start + (k + 1) * period);
    }
    println!(
        "period jitter at 50 Hz ({ticks} ticks, |period - 20 ms|): median {:.3} ms  p99 {:.3} ms  max {:.3} ms; missed deadlines {}",
        ms(jitter.quantile(0.5)),
        ms(jitter.quantile(0.99)),
        ms(jitter.max()),
        lp.counters.missed_deadlines
    );
}
