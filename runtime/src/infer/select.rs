//! Backends: what each needs to run a bundle here, and the choice among them, with reasons.
//!
//! Every backend kind has an availability check ([`availability`]) that either says how it
//! would run (`CPU, 2 threads`) or returns why it cannot ([`Unavailable`]: not compiled in,
//! library missing, no device, no model listed for it in the bundle, no usable engine).
//! Selection ([`decide`], [`select_backend`]) walks the backends in order of preference, records
//! the reason for every one it passed over, and returns the chosen one with its reason
//! ([`Selection`]); `reflex check` prints every backend's verdict ([`survey`]).
//!
//! tract (CPU) is always compiled in. ONNX Runtime (CPU) is with the cargo feature
//! `onnxruntime` (default), available when its library loads (`infer::onnxruntime::library`).
//! TensorRT (cargo feature `tensorrt`) needs the NVIDIA libraries of a Jetson or a GPU
//! workstation and an engine built for the bundle; its check ([`crate::infer::tensorrt::probe`])
//! names the first failing condition. A new backend adds its kind to [`PREFERENCE`], an arm to
//! [`availability`] and one to [`prepare_policy`].
//!
//! Between the CPU backends `auto` takes the one measured faster on this board for this model
//! when `reflex bench --model-only --backend all --record` has recorded it
//! ([`crate::infer::preference`]); without a record, ONNX Runtime before tract (the order of
//! [`PREFERENCE`]: measured 2.4x faster on the reference ResNet-18 on an x86 CPU, see
//! docs/benchmarks.md), and the selection says it used that default.

use crate::infer::diffusion::{EncoderDenoiserPolicy, SeededNoise};
use crate::infer::policy::{Policy, PolicyError, PolicyKind, SinglePassPolicy};
use crate::infer::session::SessionError;
use crate::infer::tensorrt::session::TensorrtSession;
use crate::infer::tensorrt::{self, Blocker, Platform, Probe, ThisMachine};
use crate::infer::tract::{TractOptions, TractSession};
use reflex_models::manifest::{BackendKind, ModelRole};
use reflex_models::Bundle;

/// The order `auto` tries backends in without a measured record: the GPU engine first, then
/// ONNX Runtime, the CPU fallback last.
pub const PREFERENCE: [BackendKind; 3] = [
    BackendKind::Tensorrt,
    BackendKind::Onnxruntime,
    BackendKind::Tract,
];

pub use crate::infer::preference::CPU_BACKENDS;

/// Which backend the user asked for (`--backend auto|tract|onnxruntime|tensorrt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    Auto,
    Tract,
    Tensorrt,
    Onnxruntime,
    /// Every available backend, one after the other: `reflex bench --model-only` only.
    All,
}

/// A `--backend` value that names no backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown backend `{0}` (auto, tract, onnxruntime, tensorrt, all)")]
pub struct UnknownBackend(pub String);

impl std::str::FromStr for BackendChoice {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> Result<Self, UnknownBackend> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "tract" => Ok(BackendChoice::Tract),
            "tensorrt" | "trt" => Ok(BackendChoice::Tensorrt),
            "onnxruntime" | "ort" => Ok(BackendChoice::Onnxruntime),
            "all" => Ok(BackendChoice::All),
            other => Err(UnknownBackend(other.to_string())),
        }
    }
}

/// Why a backend cannot run a bundle on this machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// The backend's code is not in this binary.
    #[error("support is not compiled into this build ({hint})")]
    NotCompiledIn { hint: &'static str },
    /// The backend's shared library was not found or does not load.
    #[error("library {library} not found: {detail}")]
    LibraryMissing { library: String, detail: String },
    /// No usable device (no driver, no GPU).
    #[error("no usable device: {detail}")]
    NoDevice { detail: String },
    /// The bundle lists no model of a role for this backend.
    #[error("the bundle lists no {role} model for it ({role} files are listed for: {listed})")]
    NotListed { role: &'static str, listed: String },
    /// No engine built for this bundle, or one built for another library version or board.
    #[error("no usable engine: {detail}")]
    NoEngine { detail: String },
    /// The backend does not run this kind of policy in this version.
    #[error("{what}")]
    PolicyKind { what: &'static str },
}

/// One backend's verdict for a bundle on this machine: how it would run, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendStatus {
    pub backend: BackendKind,
    pub status: Result<String, Unavailable>,
}

/// The bundle's model roles this runtime needs a file for, per backend.
fn roles(bundle: &Bundle) -> &'static [ModelRole] {
    match PolicyKind::of(&bundle.manifest) {
        PolicyKind::SinglePass => &[ModelRole::Policy],
        PolicyKind::EncoderDenoiser => &[ModelRole::Encoder, ModelRole::Denoiser],
    }
}

/// Whether `backend` can run `bundle` here: `Ok` says how, `Err` says why not.
pub fn availability(
    bundle: &Bundle,
    backend: BackendKind,
    tract: TractOptions,
) -> Result<String, Unavailable> {
    availability_on(bundle, backend, tract, &ThisMachine)
}

/// [`availability`] with TensorRT's shim, library and device from `trt` (tests pass stand-ins).
pub fn availability_on(
    bundle: &Bundle,
    backend: BackendKind,
    tract: TractOptions,
    trt: &dyn Platform,
) -> Result<String, Unavailable> {
    let how = match backend {
        BackendKind::Tract => format!("tract on {} thread(s)", tract.threads),
        BackendKind::Tensorrt
            if PolicyKind::of(&bundle.manifest) == PolicyKind::EncoderDenoiser =>
        {
            return Err(Unavailable::NoEngine {
                detail: "TensorRT engines for an encoder + denoiser bundle (Diffusion Policy) are \
                         not built by this version; tract runs it"
                    .into(),
            })
        }
        BackendKind::Tensorrt => match tensorrt::probe(bundle, trt).outcome {
            Ok(ready) => Probe::how(&ready),
            Err(blocker) => return Err(tensorrt_unavailable(blocker)),
        },
        BackendKind::Onnxruntime
            if PolicyKind::of(&bundle.manifest) == PolicyKind::EncoderDenoiser =>
        {
            return Err(Unavailable::PolicyKind {
                what: "ONNX Runtime sessions for an encoder + denoiser bundle (Diffusion Policy) \
                       are not wired by this version; tract runs it",
            })
        }
        BackendKind::Onnxruntime => onnxruntime_availability(tract)?,
    };
    let m = &bundle.manifest;
    for &role in roles(bundle) {
        if m.model_for(role, backend).is_none() {
            let mut listed: Vec<&str> = m
                .models_with_role(role)
                .flat_map(|f| f.backends.iter().map(|b| b.as_str()))
                .collect();
            listed.dedup();
            return Err(Unavailable::NotListed {
                role: role.as_str(),
                listed: if listed.is_empty() {
                    "none".into()
                } else {
                    listed.join(", ")
                },
            });
        }
    }
    Ok(how)
}

/// TensorRT's first failing condition as a selection reason.
fn tensorrt_unavailable(b: Blocker) -> Unavailable {
    match b {
        Blocker::NotCompiledIn => Unavailable::NotCompiledIn {
            hint: "rebuild with `--features reflex-runtime/tensorrt` against TensorRT's headers",
        },
        Blocker::Library(e) => Unavailable::LibraryMissing {
            library: "TensorRT".into(),
            detail: e.to_string(),
        },
        Blocker::Cuda(e) => Unavailable::NoDevice {
            detail: e.to_string(),
        },
        other => Unavailable::NoEngine {
            detail: other.to_string(),
        },
    }
}

/// ONNX Runtime's library (found and loaded once per process), or why it is not here.
#[cfg(feature = "onnxruntime")]
fn onnxruntime_availability(tract: TractOptions) -> Result<String, Unavailable> {
    match crate::infer::onnxruntime::library() {
        Ok(lib) => Ok(format!(
            "onnxruntime {} on {} thread(s) (C API {}, {} {})",
            lib.version,
            tract.threads,
            lib.api_version,
            lib.path.display(),
            lib.source
        )),
        Err(e) => Err(Unavailable::LibraryMissing {
            library: "libonnxruntime".into(),
            detail: e.to_string(),
        }),
    }
}

#[cfg(not(feature = "onnxruntime"))]
fn onnxruntime_availability(_: TractOptions) -> Result<String, Unavailable> {
    Err(Unavailable::NotCompiledIn {
        hint: "built without the `onnxruntime` cargo feature",
    })
}

/// Every backend's verdict, in order of preference: what `reflex check` prints.
pub fn survey(bundle: &Bundle, tract: TractOptions) -> Vec<BackendStatus> {
    PREFERENCE
        .iter()
        .map(|&backend| BackendStatus {
            backend,
            status: availability(bundle, backend, tract),
        })
        .collect()
}

/// The backend chosen, why, and why each one tried before it was passed over.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    pub choice: BackendChoice,
    pub backend: BackendKind,
    /// How it runs (`tract on 2 thread(s)`).
    pub how: String,
    /// Backends preferred over it that cannot run here, with the reason, in order tried.
    pub passed_over: Vec<(BackendKind, Unavailable)>,
    /// Among the available CPU backends, how `auto` ordered them: a measured record for this
    /// board and model, or the documented default. `None` for an explicit choice.
    pub cpu_order: Option<CpuOrder>,
}

/// How `auto` ordered the CPU backends.
#[derive(Debug, Clone, PartialEq)]
pub enum CpuOrder {
    /// No record for this board and model: [`PREFERENCE`]'s order.
    Default,
    /// The record `reflex bench --backend all --record` wrote: the winner and its median.
    Measured { winner: BackendKind, median_ms: f64 },
}

impl std::fmt::Display for CpuOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CpuOrder::Default => write!(
                f,
                "CPU backends in the default order onnxruntime, tract: no measured record for \
                 this board and model (reflex bench --model-only --backend all --record)"
            ),
            CpuOrder::Measured { winner, median_ms } => write!(
                f,
                "{} measured fastest on this board for this model ({median_ms:.2} ms median)",
                winner.as_str()
            ),
        }
    }
}

impl std::fmt::Display for Selection {
    /// `auto: tract on 2 thread(s) (tensorrt: support is not compiled into this build (...))`,
    /// or `tract on 2 thread(s), as asked`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.choice != BackendChoice::Auto {
            return write!(f, "{}, as asked", self.how);
        }
        write!(f, "auto: {}", self.how)?;
        let mut why: Vec<String> = self
            .passed_over
            .iter()
            .map(|(b, u)| format!("{}: {u}", b.as_str()))
            .collect();
        if let Some(order) = &self.cpu_order {
            if CPU_BACKENDS.contains(&self.backend) {
                why.push(order.to_string());
            }
        }
        if !why.is_empty() {
            write!(f, " ({})", why.join("; "))?;
        }
        Ok(())
    }
}

/// Why no backend was selected, or the chosen one failed to prepare.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// The backend asked for cannot run this bundle here.
    #[error("backend {}: not usable: {reason}", backend.as_str())]
    Unavailable {
        backend: BackendKind,
        reason: Unavailable,
    },
    /// `auto` found no backend able to run the bundle.
    #[error("no backend can run this bundle: {}", list(passed_over))]
    NoneAvailable {
        passed_over: Vec<(BackendKind, Unavailable)>,
    },
    /// `--backend all` outside `reflex bench --model-only`.
    #[error("--backend all times every backend and is for `reflex bench --model-only`; choose one backend (auto, tract, onnxruntime, tensorrt)")]
    AllNotHere,
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

fn list(v: &[(BackendKind, Unavailable)]) -> String {
    v.iter()
        .map(|(b, u)| format!("{}: {u}", b.as_str()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Chooses a backend for `bundle` without preparing anything.
///
/// `auto` takes the first available backend of [`PREFERENCE`], except that the CPU backends are
/// tried fastest first when this board has a measured record for the bundle's model
/// ([`crate::infer::preference::measured_winner`]); an explicit choice is that backend or an
/// error with its reason.
pub fn decide(
    bundle: &Bundle,
    choice: BackendChoice,
    tract: TractOptions,
) -> Result<Selection, SelectError> {
    decide_on(bundle, choice, tract, &ThisMachine)
}

/// [`decide`] with TensorRT's shim, library and device from `trt`.
pub fn decide_on(
    bundle: &Bundle,
    choice: BackendChoice,
    tract: TractOptions,
    trt: &dyn Platform,
) -> Result<Selection, SelectError> {
    let order = match crate::infer::preference::measured_winner(bundle, tract.threads) {
        Some((winner, median_ms)) => CpuOrder::Measured { winner, median_ms },
        None => CpuOrder::Default,
    };
    decide_with(bundle, choice, tract, order, trt)
}

/// [`decide_on`] with the CPU order given (tests give a measured one without writing a record).
pub fn decide_with(
    bundle: &Bundle,
    choice: BackendChoice,
    tract: TractOptions,
    order: CpuOrder,
    trt: &dyn Platform,
) -> Result<Selection, SelectError> {
    let explicit = match choice {
        BackendChoice::All => return Err(SelectError::AllNotHere),
        BackendChoice::Auto => None,
        BackendChoice::Tract => Some(BackendKind::Tract),
        BackendChoice::Tensorrt => Some(BackendKind::Tensorrt),
        BackendChoice::Onnxruntime => Some(BackendKind::Onnxruntime),
    };
    if let Some(backend) = explicit {
        return match availability_on(bundle, backend, tract, trt) {
            Ok(how) => Ok(Selection {
                choice,
                backend,
                how,
                passed_over: vec![],
                cpu_order: None,
            }),
            Err(reason) => Err(SelectError::Unavailable { backend, reason }),
        };
    }
    let mut preference = PREFERENCE.to_vec();
    if let CpuOrder::Measured { winner, .. } = order {
        // The measured winner goes first among the CPU backends, which keep their places.
        let slots: Vec<usize> = (0..preference.len())
            .filter(|&i| CPU_BACKENDS.contains(&preference[i]))
            .collect();
        let mut cpu: Vec<BackendKind> = slots.iter().map(|&i| preference[i]).collect();
        if let Some(w) = cpu.iter().position(|&b| b == winner) {
            let w = cpu.remove(w);
            cpu.insert(0, w);
        }
        for (&i, b) in slots.iter().zip(cpu) {
            preference[i] = b;
        }
    }
    let mut passed_over = vec![];
    for backend in preference {
        match availability_on(bundle, backend, tract, trt) {
            Ok(how) => {
                return Ok(Selection {
                    choice,
                    backend,
                    how,
                    passed_over,
                    cpu_order: Some(order),
                })
            }
            Err(reason) => passed_over.push((backend, reason)),
        }
    }
    Err(SelectError::NoneAvailable { passed_over })
}

/// Where ONNX Runtime's optimized graphs are kept, relative to the bundle directory.
pub const ORT_CACHE_DIR: &str = "engines/onnxruntime";

/// Prepares the bundle's policy on `backend` (which [`availability`] accepted).
pub fn prepare_policy(
    bundle: &Bundle,
    backend: BackendKind,
    tract: TractOptions,
) -> Result<Box<dyn Policy>, PolicyError> {
    prepare_policy_on(bundle, backend, tract, &ThisMachine)
}

/// [`prepare_policy`] writing nothing next to the bundle (ONNX Runtime optimizes the graph at
/// every start instead of keeping it in [`ORT_CACHE_DIR`]): for tools reading a user's bundle.
pub fn prepare_policy_read_only(
    bundle: &Bundle,
    backend: BackendKind,
    tract: TractOptions,
) -> Result<Box<dyn Policy>, PolicyError> {
    prepare(bundle, backend, tract, &ThisMachine, false)
}

/// [`prepare_policy`] with TensorRT's shim, library and device from `trt`.
pub fn prepare_policy_on(
    bundle: &Bundle,
    backend: BackendKind,
    tract: TractOptions,
    trt: &dyn Platform,
) -> Result<Box<dyn Policy>, PolicyError> {
    prepare(bundle, backend, tract, trt, true)
}

fn prepare(
    bundle: &Bundle,
    backend: BackendKind,
    tract: TractOptions,
    trt: &dyn Platform,
    keep_optimized: bool,
) -> Result<Box<dyn Policy>, PolicyError> {
    #[cfg(not(feature = "onnxruntime"))]
    let _ = keep_optimized;
    if PolicyKind::of(&bundle.manifest) == PolicyKind::EncoderDenoiser {
        let seed = bundle.manifest.diffusion.as_ref().map_or(0, |d| d.seed);
        return match backend {
            BackendKind::Tract => Ok(Box::new(EncoderDenoiserPolicy::tract(
                bundle,
                tract,
                SeededNoise::new(seed),
            )?)),
            BackendKind::Tensorrt => Err(PolicyError::Unsupported {
                what: "an encoder + denoiser policy (Diffusion Policy) on TensorRT",
            }),
            BackendKind::Onnxruntime => Err(PolicyError::Unsupported {
                what: "an encoder + denoiser policy (Diffusion Policy) on ONNX Runtime",
            }),
        };
    }
    let file = bundle
        .manifest
        .policy_model_for(backend)
        .ok_or(PolicyError::Unsupported {
            what: "a backend with no policy file listed for it",
        })?;
    let path = bundle.model_path(file);
    match backend {
        BackendKind::Tract => {
            let session = TractSession::prepare(&path, tract)?;
            Ok(Box::new(SinglePassPolicy::new(
                session,
                &bundle.manifest,
                &path,
            )?))
        }
        BackendKind::Tensorrt => {
            let session = prepare_tensorrt(bundle, trt)?;
            Ok(Box::new(SinglePassPolicy::new(
                session,
                &bundle.manifest,
                &path,
            )?))
        }
        #[cfg(feature = "onnxruntime")]
        BackendKind::Onnxruntime => {
            use crate::infer::onnxruntime::{OptimizedCache, OrtOptions, OrtSession};
            // The optimized graph is kept next to TensorRT's engines, keyed by the model's
            // sha256 (a read-only bundle is optimized at every start, with a warning).
            let opts = OrtOptions {
                threads: tract.threads,
                cache: keep_optimized.then(|| OptimizedCache {
                    dir: bundle.dir.join(ORT_CACHE_DIR),
                    model_sha256: file.sha256.clone(),
                }),
            };
            let session = OrtSession::prepare(&path, opts)?;
            log::info!(
                "onnxruntime: prepared {} in {:.0} ms (optimized graph: {:?})",
                path.display(),
                session.prepare_ms,
                session.cache
            );
            Ok(Box::new(SinglePassPolicy::new(
                session,
                &bundle.manifest,
                &path,
            )?))
        }
        #[cfg(not(feature = "onnxruntime"))]
        BackendKind::Onnxruntime => Err(PolicyError::Unsupported {
            what: "ONNX Runtime (built without the `onnxruntime` feature)",
        }),
    }
}

/// The bundle's TensorRT engine as a session: the probe's conditions again (the engine may have
/// changed since [`decide`]), then the engine prepared on a device of `trt`.
fn prepare_tensorrt(bundle: &Bundle, trt: &dyn Platform) -> Result<TensorrtSession, PolicyError> {
    let ready = tensorrt::probe(bundle, trt)
        .outcome
        .map_err(|b| SessionError::Graph {
            backend: "tensorrt",
            path: bundle.dir.clone(),
            problem: b.to_string(),
        })?;
    let device = trt.device(&ready.gpu).map_err(|e| SessionError::Prepare {
        backend: "tensorrt",
        path: ready.engine.clone(),
        source: e.into(),
    })?;
    Ok(TensorrtSession::prepare(ready, device)?)
}

/// Picks a backend ([`decide`]) and prepares the bundle's policy on it; the [`Selection`]
/// (its `Display` is the reason) is for the start-up log.
pub fn select_backend(
    bundle: &Bundle,
    choice: BackendChoice,
    tract: TractOptions,
) -> Result<(Box<dyn Policy>, Selection), SelectError> {
    let sel = decide(bundle, choice, tract)?;
    let policy = prepare_policy(bundle, sel.backend, tract)?;
    Ok((policy, sel))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reflex_models::reference::{default_capture, demo_arch, reference_manifest};
    use reflex_models::GraphIo;

    /// A bundle whose policy file is listed for `backends` (selection reads only the manifest).
    fn bundle(backends: Vec<BackendKind>) -> Bundle {
        let mut manifest = reference_manifest(&demo_arch(), "t", default_capture());
        manifest.models[0].backends = backends;
        Bundle {
            dir: "b".into(),
            manifest,
            policy_path: "b/policy.onnx".into(),
            io: GraphIo::default(),
        }
    }

    const TWO: TractOptions = TractOptions { threads: 2 };

    #[test]
    fn auto_passes_over_tensorrt_with_its_reason_and_picks_tract() {
        let b = bundle(vec![BackendKind::Tract, BackendKind::Tensorrt]);
        // tract measured fastest, so ONNX Runtime (if its library is here) comes after it.
        let measured = CpuOrder::Measured {
            winner: BackendKind::Tract,
            median_ms: 1.0,
        };
        let s = decide_with(&b, BackendChoice::Auto, TWO, measured, &ThisMachine).expect("tract");
        assert_eq!(s.backend, BackendKind::Tract);
        assert_eq!(s.passed_over.len(), 1);
        assert_eq!(s.passed_over[0].0, BackendKind::Tensorrt);
        assert!(matches!(
            s.passed_over[0].1,
            Unavailable::NotCompiledIn { .. }
        ));
        assert!(
            s.to_string()
                .starts_with("auto: tract on 2 thread(s) (tensorrt: support is not compiled"),
            "{s}"
        );
        let asked = decide(&b, BackendChoice::Tract, TWO).expect("tract");
        assert_eq!(asked.to_string(), "tract on 2 thread(s), as asked");
    }

    #[test]
    fn unusable_backends_are_refused_with_their_reason() {
        let b = bundle(vec![BackendKind::Tensorrt]);
        let e = decide(&b, BackendChoice::Tract, TWO).expect_err("tract not listed");
        assert!(
            matches!(
                &e,
                SelectError::Unavailable {
                    backend: BackendKind::Tract,
                    reason: Unavailable::NotListed { role: "policy", listed },
                } if listed == "tensorrt"
            ),
            "{e}"
        );
        let e = decide(&b, BackendChoice::Tensorrt, TWO).expect_err("not compiled in");
        assert!(
            e.to_string().contains("backend tensorrt: not usable"),
            "{e}"
        );
        match decide(&b, BackendChoice::Auto, TWO) {
            Err(SelectError::NoneAvailable { passed_over }) => {
                let kinds: Vec<BackendKind> = passed_over.iter().map(|p| p.0).collect();
                assert_eq!(kinds, PREFERENCE);
            }
            other => panic!("expected NoneAvailable, got {other:?}"),
        }
        let verdicts = survey(&b, TWO);
        assert_eq!(verdicts.len(), PREFERENCE.len());
        assert!(verdicts.iter().all(|v| v.status.is_err()));
    }

    #[test]
    fn backend_choice_parses_and_names_the_accepted_forms() {
        assert_eq!("auto".parse(), Ok(BackendChoice::Auto));
        assert_eq!("trt".parse(), Ok(BackendChoice::Tensorrt));
        let e = "cuda".parse::<BackendChoice>().expect_err("unknown");
        assert_eq!(
            e.to_string(),
            "unknown backend `cuda` (auto, tract, onnxruntime, tensorrt, all)"
        );
    }

    #[test]
    fn selection_reason_lists_what_auto_passed_over() {
        let s = Selection {
            choice: BackendChoice::Auto,
            backend: BackendKind::Tract,
            how: "tract on 2 thread(s)".into(),
            passed_over: vec![(
                BackendKind::Tensorrt,
                Unavailable::NotCompiledIn { hint: "x" },
            )],
            cpu_order: None,
        };
        assert_eq!(
            s.to_string(),
            "auto: tract on 2 thread(s) (tensorrt: support is not compiled into this build (x))"
        );
    }

    #[test]
    fn auto_orders_the_cpu_backends_by_the_measured_record_else_the_default() {
        let b = bundle(vec![BackendKind::Tract]);
        let ort = availability(&b, BackendKind::Onnxruntime, TWO);
        let onnx_first = CpuOrder::Measured {
            winner: BackendKind::Onnxruntime,
            median_ms: 2.5,
        };
        for order in [CpuOrder::Default, onnx_first] {
            let s = decide_with(&b, BackendChoice::Auto, TWO, order.clone(), &ThisMachine)
                .expect("a CPU backend");
            match &ort {
                // ONNX Runtime runs the file listed for tract.
                Ok(how) => {
                    assert_eq!(s.backend, BackendKind::Onnxruntime);
                    assert_eq!(&s.how, how);
                    assert!(s.to_string().contains(&order.to_string()), "{s}");
                }
                Err(why) => {
                    assert_eq!(s.backend, BackendKind::Tract);
                    assert!(
                        s.passed_over
                            .contains(&(BackendKind::Onnxruntime, why.clone())),
                        "{s}"
                    );
                }
            }
        }
        let tract_first = CpuOrder::Measured {
            winner: BackendKind::Tract,
            median_ms: 9.0,
        };
        let s =
            decide_with(&b, BackendChoice::Auto, TWO, tract_first, &ThisMachine).expect("tract");
        assert_eq!(s.backend, BackendKind::Tract);
        assert!(
            s.to_string()
                .ends_with("tract measured fastest on this board for this model (9.00 ms median))"),
            "{s}"
        );
        let e = decide(&b, BackendChoice::All, TWO).expect_err("all is for bench");
        assert!(e.to_string().contains("reflex bench --model-only"), "{e}");
    }
}
