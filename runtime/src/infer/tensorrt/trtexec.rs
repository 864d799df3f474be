//! `trtexec` command lines for building an engine on the board.
//!
//! Built only from flags TensorRT 10.3's trtexec documents (`trtexec --help`, and the TensorRT
//! Developer Guide's "trtexec" section): `--onnx=FILE`, `--saveEngine=FILE`, `--stronglyTyped`,
//! `--useDLACore=N`, `--allowGPUFallback`, `--memPoolSize=workspace:NM` (MiB), and
//! `--timingCacheFile=FILE`. Precision is not a flag: the builder flags `--fp16` / `--int8` /
//! `--best` are deprecated from 10.12 and removed in 11, so engines are built *strongly typed*,
//! their precision coming from the ONNX types (an fp16-typed graph for fp16, explicit QDQ for
//! int8). `--skipInference` stops trtexec after saving the engine (timing is `reflex bench`'s).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Where JetPack installs trtexec (it is not on `PATH` there).
pub const JETPACK_TRTEXEC: &str = "/usr/src/tensorrt/bin/trtexec";

/// One engine build: what trtexec reads and writes, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrtexecBuild {
    /// The ONNX file (the bundle's model listed for TensorRT).
    pub onnx: PathBuf,
    /// Where trtexec writes the engine (a staging file, renamed once the build succeeded).
    pub engine: PathBuf,
    /// Timing cache read and updated by the build.
    pub timing_cache: Option<PathBuf>,
    /// DLA core to build for (AGX Orin and Orin NX have cores 0 and 1), layers DLA cannot run
    /// falling back to the GPU; `None` for the GPU only.
    pub dla_core: Option<u32>,
    /// Builder workspace limit in MiB (`None`: TensorRT's default, the device's memory).
    pub workspace_mib: Option<u64>,
}

impl TrtexecBuild {
    /// trtexec's arguments, in a fixed order.
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut flag = |name: &str, value: &Path| {
            let mut s = OsString::from(format!("--{name}="));
            s.push(value);
            a.push(s);
        };
        flag("onnx", &self.onnx);
        flag("saveEngine", &self.engine);
        if let Some(c) = &self.timing_cache {
            flag("timingCacheFile", c);
        }
        a.push("--stronglyTyped".into());
        if let Some(core) = self.dla_core {
            a.push(format!("--useDLACore={core}").into());
            a.push("--allowGPUFallback".into());
        }
        if let Some(mib) = self.workspace_mib {
            a.push(format!("--memPoolSize=workspace:{mib}M").into());
        }
        a.push("--skipInference".into());
        a
    }

    /// The command line as recorded in the sidecar and shown to the user: the program, then
    /// the arguments, separated by spaces (paths are reflex's own and hold no spaces in a
    /// bundle built by reflex; others are shown as they are).
    pub fn command_line(&self, trtexec: &Path) -> String {
        let mut parts = vec![trtexec.to_string_lossy().to_string()];
        parts.extend(self.args().iter().map(|a| a.to_string_lossy().to_string()));
        parts.join(" ")
    }
}

/// trtexec: `REFLEX_TRTEXEC` if set, else the first `trtexec` on `PATH`, else JetPack's
/// [`JETPACK_TRTEXEC`]; `None` when none exists.
pub fn find_trtexec() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("REFLEX_TRTEXEC") {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("trtexec"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let j = PathBuf::from(JETPACK_TRTEXEC);
        j.is_file().then_some(j)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build() -> TrtexecBuild {
        TrtexecBuild {
            onnx: "b/policy.onnx".into(),
            engine: "b/engines/policy.engine".into(),
            timing_cache: Some("b/engines/timing-sm87-16sm-trt10.3.0.cache".into()),
            dla_core: None,
            workspace_mib: None,
        }
    }

    const T: &str = "/usr/src/tensorrt/bin/trtexec";

    /// fp32, fp16 and int8 differ only in the ONNX file (its types set the precision).
    #[test]
    fn fp32_fp16_and_int8_builds_are_strongly_typed_from_the_onnx() {
        for onnx in ["policy.onnx", "policy_fp16_trt.onnx", "policy_int8.onnx"] {
            let mut b = build();
            b.onnx = format!("b/{onnx}").into();
            assert_eq!(
                b.command_line(Path::new(T)),
                format!(
                    "{T} --onnx=b/{onnx} --saveEngine=b/engines/policy.engine \
                     --timingCacheFile=b/engines/timing-sm87-16sm-trt10.3.0.cache --stronglyTyped \
                     --skipInference"
                )
            );
        }
        let line = build().command_line(Path::new(T));
        for removed in ["--fp16", "--int8", "--best"] {
            assert!(!line.contains(removed), "{line}");
        }
    }

    #[test]
    fn dla_builds_name_the_core_and_allow_gpu_fallback() {
        let b = TrtexecBuild {
            dla_core: Some(1),
            workspace_mib: Some(2048),
            timing_cache: None,
            ..build()
        };
        assert_eq!(
            b.command_line(Path::new(T)),
            format!(
                "{T} --onnx=b/policy.onnx --saveEngine=b/engines/policy.engine --stronglyTyped \
                 --useDLACore=1 --allowGPUFallback --memPoolSize=workspace:2048M --skipInference"
            )
        );
    }
}
