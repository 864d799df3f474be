//! Building a bundle's engine on the board with trtexec (`reflex engine build`).
//!
//! The engine is built from the model file the manifest lists for TensorRT, strongly typed
//! ([`super::trtexec`]), into a staging file next to its target; only when trtexec succeeded is
//! it renamed over `engines/<stem>.engine`, and then its sidecar written (atomically, through
//! `reflex_models::output`). The old sidecar is removed first, so that an interrupted build leaves
//! either the old engine and sidecar, or an engine without a sidecar (which selection refuses:
//! "no engine"), never a half-written engine that looks usable. trtexec's log is kept in
//! `engines/<stem>.build.log`. The manifest is not rewritten.

use crate::infer::tensorrt::engine::{
    engine_path, l4t_release, sidecar_path, timing_cache_path, EngineSidecar, GpuIdentity,
    ENGINES_DIR, SIDECAR_FORMAT_VERSION,
};
use crate::infer::tensorrt::trtexec::TrtexecBuild;
use crate::infer::tensorrt::Platform;
use reflex_models::bundle::sha256_file;
use reflex_models::manifest::BackendKind;
use reflex_models::output::{write_file, Replace, ANY_FILE};
use reflex_models::Bundle;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The trtexec executable (`trtexec::find_trtexec`).
    pub trtexec: PathBuf,
    /// DLA core (with GPU fallback); `None` for the GPU.
    pub dla_core: Option<u32>,
    /// Builder workspace limit in MiB.
    pub workspace_mib: Option<u64>,
}

/// Why no engine was built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(
        "the bundle lists no policy model for tensorrt (export one for TensorRT on the host: \
         reflex-tools export / quantize, which list the files TensorRT may build from)"
    )]
    NotListed,
    #[error("cannot build a TensorRT engine here: {0}")]
    Unavailable(String),
    #[error("cannot run {trtexec}: {source} (install TensorRT's samples, or pass --trtexec PATH)")]
    Spawn {
        trtexec: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("trtexec failed ({status}); its log: {log} (last line: {last})")]
    Failed {
        status: String,
        log: PathBuf,
        last: String,
    },
    #[error("{path}: cannot {op}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Bundle(#[from] reflex_models::BundleError),
    #[error(transparent)]
    Output(#[from] reflex_models::output::OutputError),
}

fn io(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> BuildError {
    let path = path.to_path_buf();
    move |source| BuildError::Io { path, op, source }
}

/// Builds the engine of `bundle`'s TensorRT policy model on `platform`'s library and GPU, calling
/// `progress` with each line trtexec prints. Returns the sidecar written.
pub fn build_engine(
    bundle: &Bundle,
    opts: &BuildOptions,
    platform: &dyn Platform,
    progress: &mut dyn FnMut(&str),
) -> Result<EngineSidecar, BuildError> {
    let file = bundle
        .manifest
        .policy_model_for(BackendKind::Tensorrt)
        .ok_or(BuildError::NotListed)?;
    let library = platform
        .library()
        .map_err(|e| BuildError::Unavailable(e.to_string()))?;
    let gpu = platform
        .gpu()
        .map_err(|e| BuildError::Unavailable(format!("no CUDA device: {e}")))?;
    let gpu = GpuIdentity::from(&gpu);
    let onnx = bundle.model_path(file);
    let source_sha256 = sha256_file(&onnx)?;
    let engine = engine_path(&bundle.dir, &file.file);
    let dir = bundle.dir.join(ENGINES_DIR);
    std::fs::create_dir_all(&dir).map_err(io(&dir, "create"))?;
    let name = engine
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let staging = dir.join(format!(".{name}.reflex-tmp-{}-0", std::process::id()));
    let build = TrtexecBuild {
        onnx: onnx.clone(),
        engine: staging.clone(),
        timing_cache: Some(timing_cache_path(&bundle.dir, &gpu, &library.version)),
        dla_core: opts.dla_core,
        workspace_mib: opts.workspace_mib,
    };
    let log_path = dir.join(format!("{}.build.log", name.trim_end_matches(".engine")));
    let started = Instant::now();
    let result = run_trtexec(&opts.trtexec, &build, &log_path, progress);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&staging);
        return Err(e);
    }
    let build_seconds = started.elapsed().as_secs_f64();
    let sidecar_file = sidecar_path(&engine);
    match std::fs::remove_file(&sidecar_file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&sidecar_file, "remove")(e)),
    }
    std::fs::rename(&staging, &engine).map_err(io(&engine, "write"))?;
    let recorded = TrtexecBuild {
        engine: engine.clone(),
        ..build
    };
    let sidecar = EngineSidecar {
        format_version: SIDECAR_FORMAT_VERSION,
        engine: name,
        engine_sha256: sha256_file(&engine)?,
        source_model: file.file.clone(),
        source_sha256,
        precision: file.precision,
        tensorrt_version: library.version.to_string(),
        dla_core: opts.dla_core.map(|c| c as i32).unwrap_or(-1),
        l4t_release: l4t_release(),
        trtexec_command: recorded.command_line(&opts.trtexec),
        built_unix_s: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        build_seconds,
        gpu,
    };
    write_file(
        &sidecar_file,
        sidecar.to_toml().as_bytes(),
        Replace::Any,
        &ANY_FILE,
    )?;
    Ok(sidecar)
}

/// Runs trtexec, its stdout and stderr lines to `progress` and to the log file.
fn run_trtexec(
    trtexec: &Path,
    build: &TrtexecBuild,
    log_path: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(), BuildError> {
    use std::io::Write;
    let mut log = std::fs::File::create(log_path).map_err(io(log_path, "create"))?;
    let mut child = Command::new(trtexec)
        .args(build.args())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| BuildError::Spawn {
            trtexec: trtexec.to_path_buf(),
            source,
        })?;
    // stderr on its own thread, so that neither pipe fills while the other is read.
    let stderr = child.stderr.take();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        if let Some(e) = stderr {
            for line in std::io::BufReader::new(e).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        }
    });
    let mut last = String::new();
    let mut take = |line: String, last: &mut String| -> Result<(), BuildError> {
        writeln!(log, "{line}").map_err(io(log_path, "write"))?;
        progress(&line);
        *last = line;
        Ok(())
    };
    if let Some(out) = child.stdout.take() {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            take(line, &mut last)?;
            while let Ok(l) = rx.try_recv() {
                take(l, &mut last)?;
            }
        }
    }
    let _ = reader.join();
    while let Ok(l) = rx.try_recv() {
        take(l, &mut last)?;
    }
    let status = child.wait().map_err(io(trtexec, "wait for"))?;
    if !status.success() || !build.engine.is_file() {
        return Err(BuildError::Failed {
            status: if status.success() {
                "exited 0 but wrote no engine".into()
            } else {
                status.to_string()
            },
            log: log_path.to_path_buf(),
            last,
        });
    }
    Ok(())
}
