//! Engine files and their sidecars: which TensorRT, which GPU and which model bytes an engine was
//! built for, so that a stale or foreign engine is refused with a reason before TensorRT sees it.
//!
//! A TensorRT engine ("plan") only deserializes on the exact TensorRT version and GPU it was
//! built for, and TensorRT has no preflight check (deserialization returns null and logs an
//! error). ONNX Runtime's TensorRT cache keys engines on the model's file name, so a retrained
//! model of the same name reuses a stale engine. reflex keys each engine on the model's bytes.
//!
//! Layout, in the bundle directory (the manifest is never rewritten):
//! - `engines/<model stem>.engine`: the serialized engine, as `trtexec --saveEngine` wrote it;
//! - `engines/<model stem>.engine.toml`: its sidecar ([`EngineSidecar`], TOML);
//! - `engines/timing-<gpu tag>-trt<version>.cache`: the board's timing cache
//!   (`trtexec --timingCacheFile`), reused by later builds on the same GPU and TensorRT.
//!
//! Sidecar format (`format_version = 1`), every field required:
//!
//! ```toml
//! format_version = 1
//! engine = "policy.engine"            # file name in engines/
//! engine_sha256 = "..."               # of the engine file's bytes
//! source_model = "policy.onnx"        # the model file, relative to the bundle
//! source_sha256 = "..."               # of its bytes when the engine was built
//! precision = "fp16"                  # the manifest's precision of that file
//! tensorrt_version = "10.3.0"         # M.m.p as the library reports it (getInferLibVersion),
//!                                     # M.m.p.b when trtexec's log names the build
//! dla_core = -1                       # -1: GPU only; else the DLA core (with GPU fallback)
//! l4t_release = "R36 (release), REVISION: 4.3"  # first line of /etc/nv_tegra_release, "" off Jetson
//! trtexec_command = "/usr/src/tensorrt/bin/trtexec --onnx=... --saveEngine=..."
//! built_unix_s = 1764500000           # when the build finished (seconds since 1970, UTC)
//! build_seconds = 312.5               # how long trtexec ran
//!
//! [gpu]
//! name = "Orin"                       # cuDeviceGetName
//! compute_capability = "8.7"          # major.minor
//! sm_count = 16                       # multiprocessors
//! ```

use crate::infer::tensorrt::cuda::GpuInfo;
use crate::infer::tensorrt::library::TrtVersion;
use reflex_models::manifest::Precision;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The sidecar format this runtime writes and reads.
pub const SIDECAR_FORMAT_VERSION: u32 = 1;

/// The folder of a bundle holding engines, sidecars and timing caches.
pub const ENGINES_DIR: &str = "engines";

/// The GPU an engine was built on (what TensorRT's compatibility depends on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuIdentity {
    /// The device name (`cuDeviceGetName`): `Orin`, `NVIDIA GeForce RTX 4090`.
    pub name: String,
    /// Compute capability `major.minor` (`8.7` on Orin).
    pub compute_capability: String,
    /// Streaming multiprocessors (`CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT`).
    pub sm_count: u32,
}

impl From<&GpuInfo> for GpuIdentity {
    fn from(g: &GpuInfo) -> Self {
        GpuIdentity {
            name: g.name.clone(),
            compute_capability: format!("{}.{}", g.compute_capability.0, g.compute_capability.1),
            sm_count: g.sm_count,
        }
    }
}

impl std::fmt::Display for GpuIdentity {
    /// `Orin (compute 8.7, 16 SMs)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (compute {}, {} SMs)",
            self.name, self.compute_capability, self.sm_count
        )
    }
}

/// What an engine was built from, with what and where (the module documentation shows the file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSidecar {
    pub format_version: u32,
    /// The engine's file name in `engines/`.
    pub engine: String,
    /// Lower-case hex sha256 of the engine file.
    pub engine_sha256: String,
    /// The model file it was built from, relative to the bundle (as the manifest lists it).
    pub source_model: String,
    /// Lower-case hex sha256 of that file's bytes at build time.
    pub source_sha256: String,
    pub precision: Precision,
    /// `M.m.p` or `M.m.p.b`.
    pub tensorrt_version: String,
    /// DLA core the engine runs on, -1 for the GPU only.
    pub dla_core: i32,
    /// First line of `/etc/nv_tegra_release` on the build board; empty off Jetson.
    pub l4t_release: String,
    /// The exact trtexec command line that built it.
    pub trtexec_command: String,
    /// When the build finished, seconds since 1970-01-01 UTC.
    pub built_unix_s: u64,
    /// How long the build took, seconds.
    pub build_seconds: f64,
    pub gpu: GpuIdentity,
}

/// A sidecar that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("cannot read engine sidecar {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("engine sidecar {path} is not valid (rebuild with `reflex engine build`)")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error(
        "engine sidecar {path} has format_version {found}; this runtime reads {SIDECAR_FORMAT_VERSION} \
         (rebuild with `reflex engine build`)"
    )]
    Version { path: PathBuf, found: u32 },
}

/// Why an engine whose sidecar was read does not fit this machine or this bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineMismatch {
    /// TensorRT engines deserialize only on the TensorRT version they were built with.
    #[error(
        "engine {engine} was built with TensorRT {built}, this library is TensorRT {running} \
         (rebuild it here with `reflex engine build`)"
    )]
    Version {
        engine: String,
        built: String,
        running: String,
    },
    /// Engines are tuned for one GPU (compute capability and SM count).
    #[error(
        "engine {engine} was built on {built}, this device is {running} (rebuild it here with \
         `reflex engine build`)"
    )]
    Gpu {
        engine: String,
        built: Box<GpuIdentity>,
        running: Box<GpuIdentity>,
    },
    /// The model file changed since the engine was built (a retrained model of the same name).
    #[error(
        "engine {engine} was built from {model} with sha256 {built}, the file now has {now} \
         (the model changed: rebuild with `reflex engine build`)"
    )]
    Model {
        engine: String,
        model: String,
        built: String,
        now: String,
    },
    /// The engine file is not the one the sidecar describes (copied from another board with
    /// a stale sidecar, truncated, or overwritten).
    #[error(
        "engine {engine} has sha256 {now}, its sidecar records {recorded} (the file changed since \
         it was built: rebuild it here with `reflex engine build`)"
    )]
    EngineBytes {
        engine: String,
        recorded: String,
        now: String,
    },
}

/// `engines/<stem>.engine` for the model file `model` (relative to the bundle).
pub fn engine_path(bundle_dir: &Path, model: &str) -> PathBuf {
    let stem = Path::new(model)
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| model.to_string());
    bundle_dir.join(ENGINES_DIR).join(format!("{stem}.engine"))
}

/// The sidecar of an engine file: `<engine>.toml`.
pub fn sidecar_path(engine: &Path) -> PathBuf {
    let mut s = engine.as_os_str().to_owned();
    s.push(".toml");
    PathBuf::from(s)
}

/// The board's timing cache for a GPU and TensorRT version:
/// `engines/timing-sm<major><minor>-<SMs>sm-trt<M.m.p>.cache`.
pub fn timing_cache_path(bundle_dir: &Path, gpu: &GpuIdentity, trt: &TrtVersion) -> PathBuf {
    let cc: String = gpu
        .compute_capability
        .chars()
        .filter(|c| c.is_ascii_digit())
        .collect();
    bundle_dir.join(ENGINES_DIR).join(format!(
        "timing-sm{cc}-{}sm-trt{}.cache",
        gpu.sm_count,
        trt.short()
    ))
}

impl EngineSidecar {
    /// Reads and checks the format of the sidecar at `path`.
    pub fn read(path: &Path) -> Result<EngineSidecar, SidecarError> {
        let text = std::fs::read_to_string(path).map_err(|source| SidecarError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let s = Self::parse(&text, path)?;
        Ok(s)
    }

    /// Parses sidecar text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<EngineSidecar, SidecarError> {
        let s: EngineSidecar = toml::from_str(text).map_err(|source| SidecarError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        if s.format_version != SIDECAR_FORMAT_VERSION {
            return Err(SidecarError::Version {
                path: path.to_path_buf(),
                found: s.format_version,
            });
        }
        Ok(s)
    }

    /// The sidecar as TOML text.
    pub fn to_toml(&self) -> String {
        // Every field is a plain string, number or table: serialization cannot fail.
        toml::to_string(self).unwrap_or_default()
    }

    /// Whether this engine fits the running library, the device and the model's current bytes:
    /// TensorRT version (major.minor.patch; a build-number difference is caught by
    /// deserialization, the library does not report its build), then the GPU (name, compute
    /// capability, SM count), then the model's sha256.
    pub fn check(
        &self,
        running: &TrtVersion,
        gpu: &GpuIdentity,
        model_sha256: &str,
    ) -> Result<(), EngineMismatch> {
        let built_short = self
            .tensorrt_version
            .split('.')
            .take(3)
            .collect::<Vec<_>>()
            .join(".");
        if built_short != running.short() {
            return Err(EngineMismatch::Version {
                engine: self.engine.clone(),
                built: self.tensorrt_version.clone(),
                running: running.to_string(),
            });
        }
        if &self.gpu != gpu {
            return Err(EngineMismatch::Gpu {
                engine: self.engine.clone(),
                built: Box::new(self.gpu.clone()),
                running: Box::new(gpu.clone()),
            });
        }
        if self.source_sha256 != model_sha256 {
            return Err(EngineMismatch::Model {
                engine: self.engine.clone(),
                model: self.source_model.clone(),
                built: self.source_sha256.clone(),
                now: model_sha256.to_string(),
            });
        }
        Ok(())
    }
}

/// The first line of `/etc/nv_tegra_release` (`# R36 (release), REVISION: 4.3, ...` trimmed of
/// the `# `), or empty off Jetson.
pub fn l4t_release() -> String {
    std::fs::read_to_string("/etc/nv_tegra_release")
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .map(|l| l.trim_start_matches('#').trim().to_string())
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn orin() -> GpuIdentity {
        GpuIdentity {
            name: "Orin".into(),
            compute_capability: "8.7".into(),
            sm_count: 16,
        }
    }

    fn sidecar() -> EngineSidecar {
        EngineSidecar {
            format_version: 1,
            engine: "policy.engine".into(),
            engine_sha256: "ab".repeat(32),
            source_model: "policy.onnx".into(),
            source_sha256: "cd".repeat(32),
            precision: Precision::Fp16,
            tensorrt_version: "10.3.0.30".into(),
            dla_core: -1,
            l4t_release: "R36 (release), REVISION: 4.3".into(),
            trtexec_command: "/usr/src/tensorrt/bin/trtexec --onnx=policy.onnx".into(),
            built_unix_s: 1_764_500_000,
            build_seconds: 312.5,
            gpu: orin(),
        }
    }

    #[test]
    fn sidecar_round_trips_through_toml() {
        let s = sidecar();
        let text = s.to_toml();
        assert!(text.contains("tensorrt_version = \"10.3.0.30\""), "{text}");
        assert!(text.contains("[gpu]"), "{text}");
        let back = EngineSidecar::parse(&text, Path::new("x.toml")).expect("parses");
        assert_eq!(back, s);
    }

    #[test]
    fn sidecar_errors_name_the_file_and_the_fix() {
        let p = Path::new("b/engines/policy.engine.toml");
        let e = EngineSidecar::parse("format_version = 1\n", p).expect_err("missing fields");
        assert!(
            e.to_string().contains("b/engines/policy.engine.toml"),
            "{e}"
        );
        assert!(e.to_string().contains("reflex engine build"), "{e}");
        let v2 = sidecar()
            .to_toml()
            .replace("format_version = 1", "format_version = 2");
        let e = EngineSidecar::parse(&v2, p).expect_err("future format");
        assert!(matches!(e, SidecarError::Version { found: 2, .. }), "{e}");
    }

    #[test]
    fn check_refuses_another_version_gpu_or_model_in_that_order() {
        let s = sidecar();
        let v1030 = TrtVersion::from_int(100300);
        let model = "cd".repeat(32);
        assert_eq!(s.check(&v1030, &orin(), &model), Ok(()));
        let e = s
            .check(&TrtVersion::from_int(101601), &orin(), "other")
            .expect_err("version");
        assert_eq!(
            e.to_string(),
            "engine policy.engine was built with TensorRT 10.3.0.30, this library is TensorRT \
             10.16.1 (rebuild it here with `reflex engine build`)"
        );
        let mut nano = orin();
        nano.sm_count = 8;
        let e = s.check(&v1030, &nano, "other").expect_err("gpu");
        assert!(matches!(e, EngineMismatch::Gpu { .. }), "{e}");
        assert!(
            e.to_string().contains(
                "built on Orin (compute 8.7, 16 SMs), this device is Orin (compute 8.7, 8 SMs)"
            ),
            "{e}"
        );
        let e = s
            .check(&v1030, &orin(), &"ef".repeat(32))
            .expect_err("model");
        assert!(matches!(e, EngineMismatch::Model { .. }), "{e}");
        assert!(e.to_string().contains("the model changed"), "{e}");
    }

    #[test]
    fn engine_files_live_under_engines_named_after_the_model() {
        let e = engine_path(Path::new("b"), "models/policy_fp16.onnx");
        assert_eq!(e, Path::new("b/engines/policy_fp16.engine"));
        assert_eq!(
            sidecar_path(&e),
            Path::new("b/engines/policy_fp16.engine.toml")
        );
        assert_eq!(
            timing_cache_path(Path::new("b"), &orin(), &TrtVersion::from_int(100300)),
            Path::new("b/engines/timing-sm87-16sm-trt10.3.0.cache")
        );
    }
}
