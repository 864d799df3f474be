//! Writing outputs without destroying what reflex did not write.
//!
//! Every command of `reflex` and `reflex-tools` that writes a folder (a bundle, held-out inputs,
//! an episode) or a file (a report, a tensor) goes through here. The rules:
//!
//! - **Folders** ([`OutDir`]) are built in a sibling staging folder `.NAME.reflex-tmp-PID-N/new`
//!   and renamed into place at the end ([`OutDir::commit`]). An existing folder is first renamed
//!   aside into the staging folder (`old`) and removed only once the new one is in place, so a
//!   failed or killed run leaves the previous folder where it was.
//! - An existing non-empty folder is replaced only when the caller allows it ([`Replace::Ours`]:
//!   a command's `--force`) **and** it is recognized as reflex's own by the [`Kind`] given (for a
//!   bundle: `bundle::is_bundle_dir`). A folder holding anything else is never replaced, whatever
//!   the flags. An empty folder is replaced without asking (nothing is lost).
//! - The current folder, one of its ancestors, the home folder and `/` are refused as targets.
//! - **Files** ([`write_file`]) are written to a sibling temporary file and renamed over the
//!   target. An existing file is replaced per [`Replace`]: never, when the [`Kind`] recognizes it
//!   as reflex's own (a report it wrote), or always (`--force`).
//! - Staging folders and temporary files left by a killed run are recognized by their name and,
//!   for folders, a marker file holding the writer's process id: the next write of the same
//!   target removes them once that process is gone (and puts back a previous folder that a kill
//!   left aside between the two renames). Anything else is never touched.
//!
//! Test hook: with the environment variable [`PAUSE_ENV`] set to `staged` (new folder complete,
//! nothing moved yet) or `moved-aside` (old folder renamed aside, new not yet in place),
//! [`OutDir::commit`] prints `reflex test hook: paused at POINT` on stderr and sleeps 60 s
//! before going on, so a test can kill the process at that exact point.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Why an output was not written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The target holds something that must not be replaced; `fix` says what to do.
    #[error("{path}: {reason}: {fix}")]
    Refused {
        path: PathBuf,
        reason: String,
        fix: String,
    },
    /// The cause is part of the message (not a `source`), as in `BundleError::Io`.
    #[error("{path}: cannot {op}: {error}")]
    Io {
        path: PathBuf,
        op: &'static str,
        error: std::io::Error,
    },
}

/// What may be replaced at an output path that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Nothing (except an empty folder or file): the default of every command.
    No,
    /// What the [`Kind`] recognizes as reflex's own; anything else is refused.
    Ours,
    /// Files: whatever regular file is there (a user's explicit `--force`). Folders: same as
    /// [`Replace::Ours`]: a folder reflex did not write is never replaced.
    Any,
}

impl Replace {
    /// `--force` for a folder or a report: reflex's own output may be replaced.
    pub fn ours_if(force: bool) -> Replace {
        if force {
            Replace::Ours
        } else {
            Replace::No
        }
    }
}

/// A kind of output reflex writes, and how to recognize one it wrote before.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    /// What it is, for messages: `a reflex bundle`, `a reflex-bench report`.
    pub what: &'static str,
    /// `Ok` when the path holds this kind of output as reflex writes it; else why not.
    pub recognize: fn(&Path) -> Result<(), String>,
}

/// A kind no existing file is recognized as (data files such as `.npy` tensors: who wrote one
/// cannot be told from its content).
pub const ANY_FILE: Kind = Kind {
    what: "a file",
    recognize: |_| Err("its content does not say who wrote it".into()),
};

/// Environment variable of the test hook (see the module documentation).
pub const PAUSE_ENV: &str = "REFLEX_TEST_PAUSE_AT";

const MARKER: &str = "REFLEX-STAGING";
const TMP_INFIX: &str = ".reflex-tmp-";
static COUNTER: AtomicU64 = AtomicU64::new(0);

fn test_pause(point: &str) {
    if std::env::var(PAUSE_ENV).is_ok_and(|v| v == point) {
        eprintln!("reflex test hook: paused at {point}");
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}

fn io(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> OutputError {
    let path = path.to_path_buf();
    move |error| OutputError::Io { path, op, error }
}

fn refused(path: &Path, reason: impl Into<String>, fix: impl Into<String>) -> OutputError {
    OutputError::Refused {
        path: path.to_path_buf(),
        reason: reason.into(),
        fix: fix.into(),
    }
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// `target` as an absolute path: canonical when it exists, else its canonical parent joined with
/// its name.
fn absolute(target: &Path) -> Result<PathBuf, OutputError> {
    if let Ok(p) = target.canonicalize() {
        return Ok(p);
    }
    if exists(target) {
        return Err(refused(
            target,
            "is a broken symbolic link",
            "give a real path",
        ));
    }
    let name = target.file_name().ok_or_else(|| {
        refused(
            target,
            "names no folder or file",
            "give a path ending in a new name, e.g. bundles/my-policy",
        )
    })?;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent = match parent.canonicalize() {
        Ok(p) => p,
        Err(_) => std::path::absolute(parent).map_err(io(parent, "resolve"))?,
    };
    Ok(parent.join(name))
}

/// Refuses `/`, the current folder or one of its ancestors, and the home folder or one of its
/// ancestors: replacing any of them would take everything below with it.
fn check_not_precious(target: &Path, abs: &Path) -> Result<(), OutputError> {
    let fix = "name a new folder (or a bundle folder to replace), e.g. --out bundles/my-policy";
    if abs.parent().is_none() {
        return Err(refused(target, "is the root folder", fix));
    }
    if let Ok(cwd) = std::env::current_dir().and_then(|c| c.canonicalize()) {
        if cwd == abs {
            return Err(refused(target, "is the current folder", fix));
        }
        if cwd.starts_with(abs) {
            return Err(refused(target, "contains the current folder", fix));
        }
    }
    if let Some(home) = std::env::var_os("HOME").and_then(|h| PathBuf::from(h).canonicalize().ok())
    {
        if home.starts_with(abs) {
            return Err(refused(target, "is (or contains) the home folder", fix));
        }
    }
    Ok(())
}

/// The name prefix of staging folders and temporary files for a target named `name`.
fn staging_prefix(name: &str) -> String {
    format!(".{name}{TMP_INFIX}")
}

/// The writer's pid in a staging name `.NAME.reflex-tmp-PID-N`, if `entry` is one for `name`.
fn staging_pid(entry: &str, name: &str) -> Option<u32> {
    let rest = entry.strip_prefix(&staging_prefix(name))?;
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Whether `entry` (a name in the target's folder) is a staging folder or temporary file of a
/// reflex write of the target named `target_name`.
pub fn is_staging_name(entry: &str, target_name: &str) -> bool {
    staging_pid(entry, target_name).is_some()
}

fn pid_alive(pid: u32) -> bool {
    pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes what killed writes of `abs` left in `parent` (see the module documentation).
fn clean_stale(parent: &Path, abs: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|f| staging_pid(f, name)) else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        let p = e.path();
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if md.is_file() {
            let _ = std::fs::remove_file(&p);
            continue;
        }
        let ours = std::fs::read_to_string(p.join(MARKER))
            .is_ok_and(|m| m.lines().next() == Some(format!("pid {pid}").as_str()));
        if !md.is_dir() || !ours {
            continue;
        }
        let old = p.join("old");
        if exists(&old) && !exists(abs) {
            // Killed between the two renames: the previous folder goes back first.
            if std::fs::rename(&old, abs).is_err() {
                continue;
            }
            log::warn!(
                "{}: put back the previous folder, left aside by an interrupted write",
                abs.display()
            );
        }
        if let Err(e) = std::fs::remove_dir_all(&p) {
            log::warn!("{}: cannot remove a stale staging folder: {e}", p.display());
        }
    }
}

/// Checks what is at `abs` against `replace`; `Ok` when it is absent or may be replaced.
fn check_existing_dir(
    target: &Path,
    abs: &Path,
    replace: Replace,
    kind: &Kind,
) -> Result<(), OutputError> {
    let md = match std::fs::symlink_metadata(abs) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(target, "read")(e)),
        Ok(m) => m,
    };
    if !md.is_dir() {
        return Err(refused(
            target,
            "exists and is not a folder (nothing was changed)",
            "choose a new folder name, or move the file away",
        ));
    }
    if std::fs::read_dir(abs)
        .map_err(io(target, "read"))?
        .next()
        .is_none()
    {
        return Ok(());
    }
    if let Err(why) = (kind.recognize)(abs) {
        return Err(refused(
            target,
            format!(
                "is a folder that is not {} ({why}); nothing was changed",
                kind.what
            ),
            "choose an empty or new folder, or move its contents away",
        ));
    }
    if replace == Replace::No {
        return Err(refused(
            target,
            format!("already holds {}", kind.what),
            "use --force to replace it, or choose a new folder",
        ));
    }
    Ok(())
}

/// Creates the missing ancestors of `dir`; returns them, outermost first.
fn create_parents(dir: &Path) -> Result<Vec<PathBuf>, OutputError> {
    let mut missing: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !exists(a))
        .map(Path::to_path_buf)
        .collect();
    missing.reverse();
    for d in &missing {
        std::fs::create_dir(d).map_err(io(d, "create"))?;
    }
    Ok(missing)
}

/// An output folder being written: fill [`OutDir::path`], then [`OutDir::commit`]. Dropped
/// without a commit, it removes everything it created and leaves the target as it was.
#[derive(Debug)]
pub struct OutDir {
    target: PathBuf,
    abs: PathBuf,
    wrapper: PathBuf,
    replace: Replace,
    kind: Kind,
    created: Vec<PathBuf>,
    committed: bool,
}

impl OutDir {
    /// Checks `target` (see the module documentation) and creates its staging folder. Call it
    /// before any long work, so a refused target fails fast.
    ///
    /// Errors: [`OutputError::Refused`] naming the target and the fix; [`OutputError::Io`].
    pub fn prepare(target: &Path, replace: Replace, kind: &Kind) -> Result<OutDir, OutputError> {
        let abs = absolute(target)?;
        check_not_precious(target, &abs)?;
        let (Some(parent), Some(name)) = (abs.parent(), abs.file_name()) else {
            return Err(refused(target, "names no folder", "give a folder path"));
        };
        let name = name.to_string_lossy().to_string();
        // First, so that a folder an interrupted write left aside is back before the check.
        clean_stale(parent, &abs, &name);
        check_existing_dir(target, &abs, replace, kind)?;
        let created = create_parents(parent)?;
        let wrapper = parent.join(format!(
            "{}{}-{}",
            staging_prefix(&name),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let out = OutDir {
            target: target.to_path_buf(),
            abs,
            wrapper,
            replace,
            kind: *kind,
            created,
            committed: false,
        };
        std::fs::create_dir(&out.wrapper).map_err(io(&out.wrapper, "create"))?;
        let marker = format!(
            "pid {}\nstaging folder of a reflex write of {}; removed by the next write once \
             this process is gone\n",
            std::process::id(),
            out.abs.display()
        );
        let mp = out.wrapper.join(MARKER);
        std::fs::write(&mp, marker).map_err(io(&mp, "write"))?;
        let new = out.path();
        std::fs::create_dir(&new).map_err(io(&new, "create"))?;
        Ok(out)
    }

    /// The folder to fill: it becomes the target at [`OutDir::commit`].
    pub fn path(&self) -> PathBuf {
        self.wrapper.join("new")
    }

    /// A scratch folder next to the staging folder, removed with it, never moved into place.
    pub fn scratch(&self) -> Result<PathBuf, OutputError> {
        let p = self.wrapper.join("scratch");
        std::fs::create_dir_all(&p).map_err(io(&p, "create"))?;
        Ok(p)
    }

    /// The target as given.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Puts the staged folder in place: checks the target again (it may have changed since
    /// [`OutDir::prepare`]), renames the existing folder aside, renames the new one in, then
    /// removes the old one. If the second rename fails the old folder is renamed back.
    pub fn commit(mut self) -> Result<(), OutputError> {
        check_existing_dir(&self.target, &self.abs, self.replace, &self.kind)?;
        test_pause("staged");
        let (new, old) = (self.path(), self.wrapper.join("old"));
        let had_old = exists(&self.abs);
        if had_old {
            std::fs::rename(&self.abs, &old).map_err(io(&self.target, "move aside"))?;
            test_pause("moved-aside");
        }
        if let Err(e) = std::fs::rename(&new, &self.abs) {
            // Drop puts the old folder back.
            return Err(io(&self.target, "rename the new folder into place")(e));
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        let old = self.wrapper.join("old");
        if exists(&old) && !exists(&self.abs) && std::fs::rename(&old, &self.abs).is_err() {
            // Keep the staging folder: it holds the previous folder, the next write restores it.
            return;
        }
        let _ = std::fs::remove_dir_all(&self.wrapper);
        if !self.committed {
            for d in self.created.iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

/// Checks that [`write_file`] may write `target` with `replace`, without writing anything: call
/// it before long work so a refused target fails fast.
pub fn check_file(target: &Path, replace: Replace, kind: &Kind) -> Result<(), OutputError> {
    let md = match std::fs::symlink_metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(target, "read")(e)),
        Ok(m) => m,
    };
    if md.is_dir() {
        return Err(refused(
            target,
            "is a folder",
            "give a file path (a new name, or a file to replace)",
        ));
    }
    if !md.is_file() {
        return Err(refused(
            target,
            "is not a regular file (a link, device or pipe)",
            "give the path of a regular file",
        ));
    }
    if md.len() == 0 || replace == Replace::Any {
        return Ok(());
    }
    let fix = "use --force to replace it, or choose another file name";
    match ((kind.recognize)(target), replace) {
        (Ok(()), Replace::Ours) => Ok(()),
        (Ok(()), _) => Err(refused(
            target,
            format!("exists and holds {}", kind.what),
            fix,
        )),
        (Err(why), _) => Err(refused(
            target,
            format!(
                "exists and reflex cannot confirm it holds {} that reflex wrote: {why}",
                kind.what
            ),
            fix,
        )),
    }
}

/// Writes `bytes` to `target` atomically (a sibling temporary file renamed over it), if
/// [`check_file`] allows; creates missing parent folders.
pub fn write_file(
    target: &Path,
    bytes: &[u8],
    replace: Replace,
    kind: &Kind,
) -> Result<(), OutputError> {
    check_file(target, replace, kind)?;
    let name = target
        .file_name()
        .ok_or_else(|| refused(target, "names no file", "give a file path"))?
        .to_string_lossy()
        .to_string();
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(io(parent, "create"))?;
    clean_stale(parent, target, &name);
    let tmp = parent.join(format!(
        "{}{}-{}",
        staging_prefix(&name),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let r = std::fs::write(&tmp, bytes)
        .map_err(io(&tmp, "write"))
        .and_then(|()| std::fs::rename(&tmp, target).map_err(io(target, "write")));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir()
            .join(format!("reflex-output-{}", std::process::id()))
            .join(name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    const MARKED: Kind = Kind {
        what: "a test output",
        recognize: |p| {
            if p.join("ours").exists() {
                Ok(())
            } else {
                Err("no `ours` file".into())
            }
        },
    };

    #[test]
    fn staging_names() {
        assert_eq!(staging_pid(".b.reflex-tmp-12-0", "b"), Some(12));
        assert_eq!(staging_pid(".b.reflex-tmp-12", "b"), None);
        assert_eq!(staging_pid(".c.reflex-tmp-12-0", "b"), None);
        assert!(!is_staging_name("b", "b"));
    }

    #[test]
    fn folder_rules() {
        let d = tmp("folders");
        let user = d.join("user");
        std::fs::create_dir(&user).expect("mkdir");
        std::fs::write(user.join("notes.txt"), "mine").expect("write");
        for r in [Replace::No, Replace::Ours, Replace::Any] {
            let e = OutDir::prepare(&user, r, &MARKED).expect_err("refused");
            assert!(e.to_string().contains("not a test output"), "{e}");
        }
        assert_eq!(
            std::fs::read_to_string(user.join("notes.txt")).expect("kept"),
            "mine"
        );

        let ours = d.join("ours");
        let o = OutDir::prepare(&ours, Replace::No, &MARKED).expect("new");
        std::fs::write(o.path().join("ours"), "1").expect("write");
        o.commit().expect("commit");
        let e = OutDir::prepare(&ours, Replace::No, &MARKED).expect_err("needs force");
        assert!(e.to_string().contains("--force"), "{e}");
        let o = OutDir::prepare(&ours, Replace::Ours, &MARKED).expect("replace");
        std::fs::write(o.path().join("ours"), "2").expect("write");
        drop(o); // not committed: the previous folder stays
        assert_eq!(
            std::fs::read_to_string(ours.join("ours")).expect("kept"),
            "1"
        );
        let o = OutDir::prepare(&ours, Replace::Ours, &MARKED).expect("replace");
        std::fs::write(o.path().join("ours"), "2").expect("write");
        o.commit().expect("commit");
        assert_eq!(
            std::fs::read_to_string(ours.join("ours")).expect("new"),
            "2"
        );
        let left: Vec<_> = std::fs::read_dir(&d)
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");

        // A failed write into new parent folders leaves none of them behind.
        let deep = d.join("a/b/c");
        drop(OutDir::prepare(&deep, Replace::No, &MARKED).expect("new"));
        assert!(!d.join("a").exists());
    }

    #[test]
    fn precious_targets_are_refused() {
        let cwd = std::env::current_dir().expect("cwd");
        for t in [
            PathBuf::from("."),
            PathBuf::from(".."),
            PathBuf::from("/"),
            cwd.clone(),
        ] {
            let e = OutDir::prepare(&t, Replace::Any, &MARKED).expect_err("refused");
            assert!(
                e.to_string().contains("current folder") || e.to_string().contains("root"),
                "{e}"
            );
        }
    }

    #[test]
    fn stale_staging_of_a_dead_writer_is_recovered() {
        let d = tmp("stale");
        let target = d.join("b");
        // A writer (pid 4_000_000_000 cannot be alive: pid_max is at most 2^22) killed between
        // the two renames: its `old` holds the previous folder, the target is missing.
        let w = d.join(".b.reflex-tmp-4000000000-0");
        std::fs::create_dir_all(w.join("old")).expect("mkdir");
        std::fs::write(w.join("old/ours"), "prev").expect("write");
        std::fs::write(w.join(MARKER), "pid 4000000000\n").expect("marker");
        // A user's folder with a look-alike name but no marker is left alone.
        let look = d.join(".b.reflex-tmp-4000000001-0");
        std::fs::create_dir_all(&look).expect("mkdir");
        let o = OutDir::prepare(&target, Replace::Ours, &MARKED).expect("prepare");
        assert_eq!(
            std::fs::read_to_string(target.join("ours")).expect("restored"),
            "prev"
        );
        assert!(!w.exists() && look.exists());
        drop(o);
    }

    #[test]
    fn file_rules() {
        let d = tmp("files");
        let f = d.join("r.json");
        std::fs::write(&f, "user data").expect("write");
        let e = write_file(&f, b"x", Replace::No, &ANY_FILE).expect_err("refused");
        assert!(e.to_string().contains("--force"), "{e}");
        write_file(&f, b"x", Replace::Ours, &ANY_FILE).expect_err("refused");
        assert_eq!(std::fs::read_to_string(&f).expect("kept"), "user data");
        write_file(&f, b"x", Replace::Any, &ANY_FILE).expect("forced");
        assert_eq!(std::fs::read_to_string(&f).expect("new"), "x");
        write_file(&d, b"x", Replace::Any, &ANY_FILE).expect_err("a folder");
        assert_eq!(std::fs::read_dir(&d).expect("ls").count(), 1);
    }
}
