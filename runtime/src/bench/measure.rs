//! The `reflex bench` measurement: the network alone on fixed inputs ([`measure_model`]) or the
//! whole control loop on a replayed episode with a null sink ([`measure_pipeline`]), and the
//! report built from either ([`report`]).
//!
//! The loop runs exactly as on the robot (real backend, preprocessing, inference on its worker
//! thread, safety filter) except that it replays frames as fast as the loop asks for them and
//! drops the commands; it is timed with the loop's own per-stage histograms.

use crate::bench::{self, BenchReport};
use crate::camera::replay::{generate_synthetic_episode, Episode, EpisodeError, ReplayMode};
use crate::can::sink::NullSink;
use crate::clock::{Clock, MonotonicClock};
use crate::control::{ControlLoop, LoopError, LoopOptions};
use crate::infer::policy::{Policy, PolicyError};
use crate::infer::runner::{Request, ThreadedRunner};
use crate::io::{Camera, Fault, FaultKind};
use crate::preprocess::PreprocessError;
use crate::spec::SpecError;
use crate::timing::{Stage, StageTimings};
use reflex_models::manifest::Manifest;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

/// How long the loop may take to deliver its first action before the pipeline bench gives up.
const WARM_UP_TIMEOUT_NS: u64 = 5_000_000_000;

/// Seconds of ticks timed when neither a tick count nor a duration is given.
pub const DEFAULT_DURATION_S: f64 = 10.0;

/// Why a bench could not run or its report could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Episode(#[from] EpisodeError),
    #[error(transparent)]
    Backend(#[from] PolicyError),
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error(transparent)]
    Loop(#[from] LoopError),
    #[error("starting the inference thread")]
    Thread(#[source] std::io::Error),
    #[error("reading {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a reflex-bench/1 report", .path.display())]
    NotAReport {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: schema {schema} (expected {})", .path.display(), bench::SCHEMA)]
    Schema { path: PathBuf, schema: String },
}

impl Fault for BenchError {
    fn kind(&self) -> FaultKind {
        match self {
            BenchError::Episode(e) => e.kind(),
            BenchError::Backend(e) => e.kind(),
            BenchError::Preprocess(e) => e.kind(),
            BenchError::Loop(e) => e.kind(),
            _ => FaultKind::Fatal,
        }
    }
}

/// Where the pipeline bench's frames and state come from (`--camera`): `synthetic` (an episode
/// generated to match the bundle's cameras, cached in the temp dir) or `replay:EPISODE_DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BenchSource {
    Synthetic,
    Replay(PathBuf),
}

/// The accepted forms of a [`BenchSource`].
pub const BENCH_SOURCE_FORMS: &str = "expected synthetic or replay:EPISODE_DIR (one episode \
     feeds every camera: no NAME= as in `reflex run --camera`)";

impl FromStr for BenchSource {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        match s.strip_prefix("replay:") {
            _ if s == "synthetic" => Ok(BenchSource::Synthetic),
            Some(dir) if !dir.is_empty() => Ok(BenchSource::Replay(PathBuf::from(dir))),
            _ => Err(SpecError::Form {
                spec: s.to_owned(),
                forms: BENCH_SOURCE_FORMS,
            }),
        }
    }
}

impl BenchSource {
    /// The episode to replay: the given one, or the synthetic episode of `m` (generated, 2 s at
    /// 30 fps, in `$TMPDIR/reflex-bench-episode-NAME` unless already there).
    pub fn episode(&self, m: &Manifest) -> Result<Episode, EpisodeError> {
        let dir = match self {
            BenchSource::Replay(dir) => dir.clone(),
            BenchSource::Synthetic => {
                // The bundle's name, reduced to a safe file name (it could hold `/` or `..`).
                let safe: String = m
                    .name
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                let d = std::env::temp_dir().join(format!("reflex-bench-episode-{safe}"));
                if Episode::load(&d).is_err() {
                    generate_synthetic_episode(m, &d, 2.0, 30)?;
                }
                d
            }
        };
        Episode::load(&dir)
    }
}

/// How long and how fast to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchOptions {
    /// Control rate, Hz (the bundle's unless overridden).
    pub rate_hz: f64,
    /// Untimed ticks (or runs) first; model-only runs at least one.
    pub warmup: u64,
    /// Timed ticks (or runs); `None` = by duration.
    pub iterations: Option<u64>,
    /// Timed seconds; `None` = [`DEFAULT_DURATION_S`] unless `iterations` is given.
    pub duration_s: Option<f64>,
}

impl BenchOptions {
    /// The control period, ns.
    pub fn period_ns(&self) -> u64 {
        (1e9 / self.rate_hz).round() as u64
    }
}

/// What a bench measured, before statistics.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// Per-stage histograms of the timed part.
    pub timings: StageTimings,
    /// Start-to-start interval of every timed tick, ms (empty in model-only mode).
    pub periods_ms: Vec<f64>,
    /// Timed ticks (runs in model-only mode).
    pub ticks: u64,
    /// Wall time of the timed part, s.
    pub duration_s: f64,
    /// Inferences completed in the timed part.
    pub inferences: u64,
    pub missed_deadlines: u64,
    pub overruns: u64,
    /// Model-only mode: the raw output of the last run on the fixed inputs, row-major
    /// `[horizon][dim]`, normalized units ([`Policy::output`]); `None` in pipeline mode.
    pub model_output: Option<Vec<f32>>,
}

/// Times the network alone: `backend` is run on fixed inputs (zero, i.e. a mid-grey normalized
/// image, and zero state, written once) `warmup` times (at least once) untimed, then for
/// `iterations` runs or `duration_s` seconds (default [`DEFAULT_DURATION_S`]; both given: the
/// first reached).
pub fn measure_model(
    backend: &mut dyn Policy,
    cameras: usize,
    opts: &BenchOptions,
) -> Result<Measurement, BenchError> {
    for i in 0..cameras {
        backend.camera_input(i).fill(0.0);
    }
    if let Some(s) = backend.state_input() {
        s.fill(0.0);
    }
    for _ in 0..opts.warmup.max(1) {
        backend.run()?;
    }
    let n = opts.iterations.unwrap_or(0);
    let dur = opts.duration_s.unwrap_or(if n == 0 {
        DEFAULT_DURATION_S
    } else {
        f64::INFINITY
    });
    let mut timings = StageTimings::new();
    let start = Instant::now();
    let mut k = 0;
    while (n == 0 || k < n) && start.elapsed().as_secs_f64() < dur {
        let t = Instant::now();
        backend.run()?;
        timings.record(Stage::Inference, t.elapsed().as_nanos() as u64);
        if let Some(gpu_ms) = backend.device_time_ms() {
            timings.record(Stage::GpuCompute, (f64::from(gpu_ms) * 1e6) as u64);
        }
        if let Some(d) = backend.diffusion_timings() {
            timings.record(Stage::Encoder, d.encoder.as_nanos() as u64);
            timings.record(Stage::DenoiserStep, d.per_denoiser_step().as_nanos() as u64);
        }
        k += 1;
    }
    Ok(Measurement {
        timings,
        periods_ms: vec![],
        ticks: k,
        duration_s: start.elapsed().as_secs_f64(),
        inferences: k,
        missed_deadlines: 0,
        overruns: 0,
        model_output: Some(backend.output().to_vec()),
    })
}

/// Times the whole loop: `episode` replayed as fast as possible into the control loop of `m`
/// at `opts.rate_hz` (inference on its worker thread, commands into a [`NullSink`], action
/// limits not required), after the loop's warm-up and `opts.warmup` untimed ticks; then
/// `iterations` ticks, or `duration_s` seconds of ticks (default [`DEFAULT_DURATION_S`]).
pub fn measure_pipeline(
    m: &Manifest,
    backend: Box<dyn Policy>,
    episode: &Episode,
    opts: &BenchOptions,
) -> Result<Measurement, BenchError> {
    let mut cams: Vec<Box<dyn Camera>> = vec![];
    for c in &m.cameras {
        cams.push(Box::new(
            episode.camera(&c.name, ReplayMode::AsFastAsPossible)?,
        ));
    }
    let state = episode.state_source(&m.state.names, ReplayMode::AsFastAsPossible)?;
    let runner =
        ThreadedRunner::spawn(backend, Request::for_manifest(m)).map_err(BenchError::Thread)?;
    let loop_opts = LoopOptions {
        rate_hz: Some(opts.rate_hz),
        allow_unlimited: true,
    };
    let mut lp = ControlLoop::new(m, cams, state, NullSink::default(), runner, &loop_opts)?;
    let clock = MonotonicClock::new();
    lp.warm_up(&clock, WARM_UP_TIMEOUT_NS)?;
    let period_ns = opts.period_ns();
    let mut next = clock.now_ns();
    for _ in 0..opts.warmup {
        lp.tick(clock.now_ns())?;
        next += period_ns;
        clock.sleep_until(next);
    }
    // Only the timed ticks count.
    lp.reset_statistics();
    let ticks = match opts.iterations {
        Some(n) if n > 0 => n,
        _ => (opts.duration_s.unwrap_or(DEFAULT_DURATION_S) * opts.rate_hz).ceil() as u64,
    };
    let mut periods_ms = Vec::with_capacity(ticks as usize);
    let start = Instant::now();
    let mut last: Option<u64> = None;
    for _ in 0..ticks {
        let now = clock.now_ns();
        if let Some(l) = last {
            periods_ms.push((now - l) as f64 / 1e6);
        }
        last = Some(now);
        lp.tick(now)?;
        next += period_ns;
        clock.sleep_until(next);
    }
    let measured = Measurement {
        timings: lp.timings.clone(),
        periods_ms,
        ticks,
        duration_s: start.elapsed().as_secs_f64(),
        inferences: lp.counters.inferences,
        missed_deadlines: lp.counters.missed_deadlines,
        overruns: lp.counters.overruns,
        model_output: None,
    };
    // The stop command at the end is not part of the measurement.
    lp.shutdown(clock.now_ns());
    Ok(measured)
}

/// What ran, for the report.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchSetup {
    /// Backend name and why it was selected.
    pub backend: String,
    pub backend_reason: String,
    /// Network alone (`model-only`) or the whole loop (`pipeline`).
    pub model_only: bool,
    /// Safety margin on the budgets (0.2 = the p99 must fit in 80% of the budget).
    pub margin: f64,
}

/// The `reflex-bench/1` report of a measurement of `m`'s bundle at `opts.rate_hz`, with the
/// verdict ([`bench::verdict`]), this machine's identity and its peak memory.
pub fn report(
    m: &Manifest,
    setup: BenchSetup,
    opts: &BenchOptions,
    measured: Measurement,
) -> BenchReport {
    let stages = bench::stage_stats(&measured.timings);
    let period_ms = opts.period_ns() as f64 / 1e6;
    let steps = m.control.steps_per_inference as u64;
    let verdict = bench::verdict(&stages, period_ms, steps, setup.margin, setup.model_only);
    let duration_s = measured.duration_s;
    BenchReport {
        schema: bench::SCHEMA.into(),
        mode: if setup.model_only {
            bench::MODEL_ONLY
        } else {
            "pipeline"
        }
        .into(),
        bundle: m.name.clone(),
        backend: setup.backend,
        backend_reason: setup.backend_reason,
        board: reflex_board::BoardIdentity::detect(),
        rate_hz: opts.rate_hz,
        period_ms,
        steps_per_inference: steps,
        margin: setup.margin,
        tick_budget_ms: period_ms * (1.0 - setup.margin),
        latency_budget_ms: period_ms * steps as f64 * (1.0 - setup.margin),
        ticks: measured.ticks,
        duration_s,
        throughput_hz: measured.ticks as f64 / duration_s.max(1e-9),
        inferences_per_s: measured.inferences as f64 / duration_s.max(1e-9),
        peak_rss_kib: bench::peak_rss_kib(),
        stages,
        missed_deadlines: measured.missed_deadlines,
        overruns: measured.overruns,
        periods_ms: measured.periods_ms,
        model_output: measured.model_output,
        verdict,
    }
}

/// Reads a `reflex-bench/1` JSON report (for `--compare`), refusing other schemas.
pub fn read_report(path: &Path) -> Result<BenchReport, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|source| BenchError::Read {
        path: path.to_owned(),
        source,
    })?;
    let r: BenchReport = serde_json::from_str(&text).map_err(|source| BenchError::NotAReport {
        path: path.to_owned(),
        source,
    })?;
    if r.schema != bench::SCHEMA {
        return Err(BenchError::Schema {
            path: path.to_owned(),
            schema: r.schema,
        });
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::select::{select_backend, BackendChoice};
    use crate::infer::tract::TractOptions;
    use reflex_models::manifest::{CaptureSpec, PixelFormat};
    use reflex_models::onnx::{EncoderKind, HeadKind, PolicyArch, SeededWeights};
    use reflex_models::reference::{write_reference_bundle, ARM_JOINTS};
    use reflex_models::Bundle;
    use std::sync::OnceLock;

    /// The smallest reference bundle there is: ResNet-18 on one 64x48 YUYV camera, a chunk of
    /// 4 actions straight from the features. Written once into the temp dir.
    fn tiny_bundle() -> &'static Bundle {
        static B: OnceLock<Bundle> = OnceLock::new();
        B.get_or_init(|| {
            let dir = std::env::temp_dir().join("reflex-bench-measure-tiny");
            if let Ok(b) = Bundle::load(&dir) {
                return b;
            }
            let arch = PolicyArch {
                encoder: EncoderKind::Resnet18,
                cameras: vec!["front".into()],
                shared_encoder: false,
                state_dim: ARM_JOINTS.len(),
                action_dim: ARM_JOINTS.len(),
                hidden: vec![],
                head: HeadKind::Chunk { horizon: 4 },
            };
            let capture = CaptureSpec {
                width: 64,
                height: 48,
                format: PixelFormat::Yuyv,
                fps: 30,
            };
            write_reference_bundle(
                &dir,
                &arch,
                &mut SeededWeights::new(1),
                "bench-tiny",
                capture,
            )
            .expect("writes the bundle");
            Bundle::load(&dir).expect("loads the bundle")
        })
    }

    fn backend(b: &Bundle) -> (Box<dyn Policy>, String) {
        let (p, sel) =
            select_backend(b, BackendChoice::Tract, TractOptions { threads: 1 }).expect("tract");
        (p, sel.to_string())
    }

    #[test]
    fn bench_sources() {
        assert_eq!("synthetic".parse(), Ok(BenchSource::Synthetic));
        assert_eq!(
            "replay:ep".parse(),
            Ok(BenchSource::Replay(PathBuf::from("ep")))
        );
        for bad in ["replay:", "/dev/video0", "", "front=replay:ep"] {
            assert_eq!(
                bad.parse::<BenchSource>().unwrap_err().to_string(),
                format!(
                    "`{bad}`: expected synthetic or replay:EPISODE_DIR (one episode feeds every \
                     camera: no NAME= as in `reflex run --camera`)"
                )
            );
        }
    }

    #[test]
    fn the_pipeline_bench_times_every_stage_of_the_real_loop() {
        let b = tiny_bundle();
        let m = &b.manifest;
        let (be, reason) = backend(b);
        let ep = BenchSource::Synthetic.episode(m).expect("episode");
        let opts = BenchOptions {
            rate_hz: 50.0,
            warmup: 2,
            iterations: Some(20),
            duration_s: None,
        };
        let measured = measure_pipeline(m, be, &ep, &opts).expect("measures");
        assert_eq!(measured.ticks, 20);
        assert_eq!(measured.periods_ms.len(), 19);
        assert!(
            measured.periods_ms.iter().all(|&p| p > 0.0),
            "{:?}",
            measured.periods_ms
        );
        assert!(measured.duration_s > 0.0);
        // (How many inferences complete in 0.4 s depends on the machine's load: not checked.)
        let setup = BenchSetup {
            backend: "tract".into(),
            backend_reason: reason,
            model_only: false,
            margin: 1.0,
        };
        let r = report(m, setup, &opts, measured);
        assert_eq!(
            (r.mode.as_str(), r.bundle.as_str()),
            ("pipeline", "bench-tiny")
        );
        assert_eq!(r.period_ms, 20.0);
        let names: Vec<&str> = r.stages.iter().map(|s| s.stage.as_str()).collect();
        for s in ["capture_wait", "preprocess", "send", "tick"] {
            assert!(names.contains(&s), "{names:?}");
        }
        let tick = r.stages.iter().find(|s| s.stage == "tick").unwrap();
        assert_eq!(tick.n, 20);
        // The table's periods and the timeline's are the same 19 intervals between timed ticks
        // (none from the last warm-up tick).
        let period = r.stages.iter().find(|s| s.stage == "period").unwrap();
        assert_eq!((period.n, r.periods_ms.len()), (19, 19));
        // A zero budget cannot be met.
        assert!(!r.verdict.pass, "{}", r.verdict.reason);
        let table = r.table();
        assert!(
            table.contains("20 ticks in") && table.contains("missed deadlines: "),
            "{table}"
        );
    }

    #[test]
    fn the_model_bench_counts_runs_and_reads_back_its_report() {
        let b = tiny_bundle();
        let m = &b.manifest;
        let (mut be, reason) = backend(b);
        // A 10 s period: any network fits.
        let opts = BenchOptions {
            rate_hz: 0.1,
            warmup: 1,
            iterations: Some(5),
            duration_s: None,
        };
        let measured = measure_model(be.as_mut(), m.cameras.len(), &opts).expect("measures");
        assert_eq!((measured.ticks, measured.inferences), (5, 5));
        assert_eq!(measured.timings.get(Stage::Inference).count(), 5);
        let setup = BenchSetup {
            backend: be.name().into(),
            backend_reason: reason,
            model_only: true,
            margin: 0.0,
        };
        let r = report(m, setup, &opts, measured);
        assert_eq!(r.mode, "model-only");
        assert!(r.verdict.pass, "{}", r.verdict.reason);
        // No loop ran: the table speaks of runs and the inference budget, not of ticks.
        let table = r.table();
        assert!(
            table.contains("5 runs in")
                && table.contains(&format!("budget: inference {:.2} ms", r.latency_budget_ms)),
            "{table}"
        );
        assert!(
            !table.contains("ticks") && !table.contains("missed deadlines"),
            "{table}"
        );
        let path =
            std::env::temp_dir().join(format!("reflex-bench-measure-{}.json", std::process::id()));
        std::fs::write(&path, serde_json::to_string(&r).unwrap()).unwrap();
        // Read back as written; serde_json's default float parsing may differ from the printed
        // value in the last bit, so floats are compared to 1e-12 relative.
        let back = read_report(&path).unwrap();
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(b.abs());
        assert!(close(back.throughput_hz, r.throughput_hz) && close(back.duration_s, r.duration_s));
        assert_eq!(
            (
                &back.schema,
                &back.mode,
                &back.bundle,
                back.ticks,
                &back.verdict
            ),
            (&r.schema, &r.mode, &r.bundle, r.ticks, &r.verdict)
        );
        assert_eq!(back.stages.len(), r.stages.len());
        for (x, y) in back.stages.iter().zip(&r.stages) {
            assert_eq!((&x.stage, x.n), (&y.stage, y.n));
            assert!(close(x.p99_ms, y.p99_ms) && close(x.median_ms, y.median_ms));
        }
        std::fs::write(&path, "{}").unwrap();
        let e = read_report(&path).unwrap_err().to_string();
        assert!(e.ends_with("not a reflex-bench/1 report"), "{e}");
        std::fs::remove_file(&path).unwrap();
    }
}
