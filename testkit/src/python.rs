//! The Python references in `tests/python/` (ONNX Runtime, numpy, PIL, cantools), run with one
//! policy for every test:
//!
//! - `REFLEX_SKIP_PY=1`: [`reference`] runs nothing and returns `None`; the test skips its
//!   comparison (and says so on stderr) but still runs and checks its Rust side.
//! - otherwise a missing `python3`, a missing package or a failing script fails the test, with
//!   the script's stderr and the line that installs the packages: a comparison that did not run
//!   must not pass silently.
//!
//! `scripts/setup.sh` installs every package the references need.

use crate::cli::{Cli, Run};
use std::ffi::OsStr;
use std::path::PathBuf;

/// The environment variable that skips every Python reference comparison when set to `1`.
pub const SKIP_ENV: &str = "REFLEX_SKIP_PY";

/// True when `REFLEX_SKIP_PY=1` says to skip the Python references.
pub fn skipped() -> bool {
    std::env::var(SKIP_ENV).as_deref() == Ok("1")
}

/// The repository's root directory (where `tests/python/` is).
pub fn repo_root() -> PathBuf {
    let testkit = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    testkit.parent().map(PathBuf::from).unwrap_or(testkit)
}

/// `tests/python/<script>` in this repository.
pub fn script(name: &str) -> PathBuf {
    repo_root().join("tests/python").join(name)
}

/// Runs `python3 tests/python/<script> ARGS...`; `packages` are the pip packages it imports
/// (for the install hint, e.g. `"numpy onnx onnxruntime"`).
///
/// Returns `None` without running anything when `REFLEX_SKIP_PY=1` (printing what was skipped).
/// Otherwise returns the finished run, its stderr echoed (the references print their figures
/// there); panics with the script's stderr and the install hint when python3 cannot start or the
/// script fails.
#[track_caller]
pub fn reference<I, S>(script_name: &str, args: I, packages: &str) -> Option<Run>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    if skipped() {
        eprintln!("{SKIP_ENV}=1: skipped the comparison with tests/python/{script_name}");
        return None;
    }
    run_reference("python3", script_name, args, packages)
}

/// The environment variable naming a Python interpreter that has `torch` and `torchvision`
/// (e.g. a training virtual environment's `bin/python`). PyTorch is too large for
/// `scripts/setup.sh` to install system-wide, so the torch references run only where it is set.
pub const TORCH_PYTHON_ENV: &str = "REFLEX_TORCH_PYTHON";

/// Like [`reference`], but runs the script with the interpreter `REFLEX_TORCH_PYTHON` names.
///
/// Returns `None` (printing what was skipped) when `REFLEX_SKIP_PY=1` or `REFLEX_TORCH_PYTHON`
/// is unset; once it is set, a missing interpreter or package, or a failing script, fails the
/// test as in [`reference`].
#[track_caller]
pub fn torch_reference<I, S>(script_name: &str, args: I, packages: &str) -> Option<Run>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    if skipped() {
        eprintln!("{SKIP_ENV}=1: skipped the comparison with tests/python/{script_name}");
        return None;
    }
    let Some(python) = std::env::var_os(TORCH_PYTHON_ENV).filter(|p| !p.is_empty()) else {
        eprintln!(
            "{TORCH_PYTHON_ENV} unset: skipped the comparison with tests/python/{script_name} \
             (set it to a python with {packages})"
        );
        return None;
    };
    run_reference(&python.to_string_lossy(), script_name, args, packages)
}

#[track_caller]
fn run_reference<I, S>(python: &str, script_name: &str, args: I, packages: &str) -> Option<Run>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let path = script(script_name);
    let hint = format!(
        "tests/python/{script_name} needs python3 with {packages} (scripts/setup.sh installs them: \
         pip install {packages}); set {SKIP_ENV}=1 to skip the Python reference comparisons"
    );
    let cli = Cli::new(python).arg(&path).args(args);
    let command = cli.command_line();
    let run = match std::process::Command::new(python).arg("--version").output() {
        Ok(_) => cli.run(),
        Err(e) => panic!("cannot run `{command}`: {e}\n{hint}"),
    };
    eprint!("{}", run.stderr);
    assert!(
        run.status.success(),
        "the Python reference failed:\n{run}\n{hint}"
    );
    Some(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_found_in_the_repository() {
        assert!(
            script("ort_run.py").is_file(),
            "{}",
            script("ort_run.py").display()
        );
    }
}

/// The environment variable that makes [`RecordedDigests::check`] record fresh digests (and
/// [`RecordedDigests::finish`] write them) instead of comparing.
pub const RECORD_ENV: &str = "REFLEX_RECORD_DIGESTS";

/// sha256 digests of reference outputs, recorded in `tests/data/torch/<file>` (one
/// `<sha256>  <name>` line each), for a reference that cannot run on every machine: PyTorch is
/// too large for CI, so where it is absent a test compares reflex's own output with the digest of
/// what torch produced on a machine that has it, which fails on any differing bit.
///
/// Where the reference does run, [`RecordedDigests::check`] compares its fresh output's digest
/// with the recorded one, so a stale record is caught; with `REFLEX_RECORD_DIGESTS=1` it records
/// the fresh digests instead, and [`RecordedDigests::finish`] writes the file.
#[derive(Debug)]
pub struct RecordedDigests {
    pub path: PathBuf,
    entries: std::collections::BTreeMap<String, String>,
    record: bool,
    changed: bool,
}

impl RecordedDigests {
    /// Reads `tests/data/torch/<file>` (a missing file is an empty record).
    pub fn load(file: &str) -> Self {
        let path = repo_root().join("tests/data/torch").join(file);
        let entries = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (d, n) = l.split_once("  ")?;
                Some((n.trim().to_string(), d.trim().to_string()))
            })
            .collect();
        RecordedDigests {
            path,
            entries,
            record: std::env::var(RECORD_ENV).as_deref() == Ok("1"),
            changed: false,
        }
    }

    /// The recorded digest of `name`; panics, saying how to record it, when there is none.
    #[track_caller]
    pub fn digest(&self, name: &str) -> &str {
        self.entries
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| {
                panic!(
                    "no recorded digest `{name}` in {}: run the test once with {TORCH_PYTHON_ENV} \
                 set and {RECORD_ENV}=1",
                    self.path.display()
                )
            })
    }

    /// The reference ran and its output's digest is `fresh`: records it (`REFLEX_RECORD_DIGESTS=1`)
    /// or checks it against the record.
    #[track_caller]
    pub fn check(&mut self, name: &str, fresh: &str) {
        if self.record {
            if self.entries.get(name).map(String::as_str) != Some(fresh) {
                self.entries.insert(name.to_string(), fresh.to_string());
                self.changed = true;
            }
            return;
        }
        assert_eq!(
            self.digest(name),
            fresh,
            "the reference's output for `{name}` is not the one recorded in {} (another torch \
             version?); record it again with {RECORD_ENV}=1",
            self.path.display()
        );
    }

    /// Writes the file when digests were recorded.
    pub fn finish(self) {
        if !(self.record && self.changed) {
            return;
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).expect("creates tests/data/torch");
        }
        let text: String = self
            .entries
            .iter()
            .map(|(n, d)| format!("{d}  {n}\n"))
            .collect();
        std::fs::write(&self.path, text).expect("writes the recorded digests");
        eprintln!("recorded {}", self.path.display());
    }
}
