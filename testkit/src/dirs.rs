//! Where tests write files: one unique directory per test ([`WorkDir`]), removed when the test
//! passes and kept (its path printed) when it fails; and per-process fixture directories for
//! what several tests of one binary share (a bundle built once).
//!
//! Everything lives under `<target dir>/tmp/reflex-testkit/` (the directory cargo names
//! `CARGO_TARGET_TMPDIR`, found from the test executable's path), so that `cargo clean` removes
//! what failed tests left behind and large files stay off a RAM-backed `/tmp`. A binary that does
//! not run from a target dir (a test binary copied into a QEMU guest) uses the system temporary
//! directory instead.

use std::ops::Deref;
use std::path::{Path, PathBuf};

/// `<target>/tmp/reflex-testkit` when the running executable sits in `<target>/<profile>/deps/`
/// (every cargo test binary does), else `<system temp dir>/reflex-testkit`.
pub fn root() -> PathBuf {
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        let deps = exe.parent()?;
        if deps.file_name()? != "deps" {
            return None;
        }
        Some(deps.parent()?.parent()?.join("tmp"))
    });
    from_exe
        .unwrap_or_else(std::env::temp_dir)
        .join("reflex-testkit")
}

/// A fresh, uniquely named directory `<root>/<name>-XXXXXX` for one test.
///
/// Dropped at the end of a passing test, it removes itself. Dropped while the thread panics (a
/// failed assertion), it stays, and its path is printed so the files can be looked at.
/// Dereferences to its [`Path`].
#[derive(Debug)]
pub struct WorkDir {
    dir: Option<tempfile::TempDir>,
}

impl WorkDir {
    /// Creates the directory; `name` (letters, digits, `-`, `_`) says which test it belongs to.
    ///
    /// Panics (this is test code) when the directory cannot be created, naming it.
    pub fn new(name: &str) -> WorkDir {
        let root = root();
        std::fs::create_dir_all(&root)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", root.display()));
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in(&root)
            .unwrap_or_else(|e| panic!("cannot create a work dir in {}: {e}", root.display()));
        WorkDir { dir: Some(dir) }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new(""), |d| d.path())
    }

    /// Keeps the directory after the test (for a file the test prints for a person to look at);
    /// returns its path.
    pub fn keep(mut self) -> PathBuf {
        self.dir.take().map(|d| d.keep()).unwrap_or_default()
    }
}

impl Deref for WorkDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.path()
    }
}

impl AsRef<Path> for WorkDir {
    fn as_ref(&self) -> &Path {
        self.path()
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(d) = self.dir.take() {
                eprintln!("test files kept in {}", d.keep().display());
            }
        }
    }
}

/// A fixture directory shared by the tests of one test binary: `<root>/fixtures/<binary>/<name>`,
/// emptied by this call. Call it once per process (from a `OnceLock`), since it removes what an
/// earlier run of the same binary left there, and so every run starts from fresh files.
///
/// Panics when the directory cannot be created, naming it.
pub fn fixture_dir(name: &str) -> PathBuf {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|e| e.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "test".into());
    let dir = root().join("fixtures").join(binary).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// Copies every file of `src` (not recursing) into `dst`, created if absent: a bundle copied
/// before a test edits or corrupts it.
///
/// Panics naming the file that could not be read or written.
pub fn copy_files(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap_or_else(|e| panic!("cannot create {}: {e}", dst.display()));
    let entries =
        std::fs::read_dir(src).unwrap_or_else(|e| panic!("cannot list {}: {e}", src.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", src.display()));
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            let to = dst.join(entry.file_name());
            std::fs::copy(entry.path(), &to).unwrap_or_else(|e| {
                panic!(
                    "cannot copy {} to {}: {e}",
                    entry.path().display(),
                    to.display()
                )
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_dirs_are_unique_and_removed_after_a_passing_test() {
        let (a, b) = (WorkDir::new("unique"), WorkDir::new("unique"));
        assert_ne!(a.path(), b.path());
        assert!(a.is_dir() && b.is_dir());
        std::fs::write(a.join("file"), b"x").expect("write");
        let path = a.path().to_path_buf();
        drop(a);
        assert!(!path.exists(), "{} still exists", path.display());
    }

    #[test]
    fn a_failing_test_keeps_its_work_dir() {
        let path = std::thread::spawn(|| {
            let d = WorkDir::new("kept");
            let p = d.path().to_path_buf();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                let _d = d;
                panic!("a failed assertion");
            }));
            assert!(r.is_err());
            p
        })
        .join()
        .expect("thread");
        assert!(path.is_dir(), "{} was removed", path.display());
        std::fs::remove_dir_all(&path).expect("clean up");
    }

    #[test]
    fn fixtures_start_empty_and_copies_take_every_file() {
        let f = fixture_dir("copy-source");
        std::fs::write(f.join("a"), b"1").expect("write");
        std::fs::write(f.join("b"), b"22").expect("write");
        let to = WorkDir::new("copy");
        copy_files(&f, &to.join("dst"));
        assert_eq!(std::fs::read(to.join("dst/b")).expect("copied"), b"22");
        let again = fixture_dir("copy-source");
        assert_eq!(again, f);
        assert!(!f.join("a").exists(), "a fixture dir starts empty");
    }
}
