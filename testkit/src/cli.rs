//! Runs a binary the way a user does and keeps what it printed.
//!
//! A [`Run`] holds the command line, exit status, stdout and stderr. [`Run::success`] and
//! [`Run::failure`] panic with all four when the status is not the expected one; and any failed
//! assertion while a `Run` is alive prints them too (from its `Drop`), so a test's own
//! `assert!(run.stdout.contains(..))` never hides the error message that explains it.
//!
//! ```no_run
//! use reflex_testkit::cli::Cli;
//! let run = Cli::new("reflex").args(["check", "--bundle", "b"]).run().failure();
//! assert!(run.stderr.contains("policy.toml"));
//! ```

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

/// A command line to run: program, arguments, extra environment.
#[derive(Debug)]
pub struct Cli {
    cmd: Command,
}

impl Cli {
    /// `program` with no arguments yet (a path, or a name looked up in `PATH`).
    pub fn new(program: impl AsRef<OsStr>) -> Cli {
        Cli {
            cmd: Command::new(program),
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Cli {
        self.cmd.arg(arg);
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Cli
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    /// Sets an environment variable for the child.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Cli {
        self.cmd.env(key, value);
        self
    }

    /// The command line as a shell would show it (arguments with spaces quoted).
    pub fn command_line(&self) -> String {
        command_line(&self.cmd)
    }

    /// Runs to completion, capturing stdout and stderr. Panics only when the program cannot be
    /// started (naming it); a non-zero exit is a [`Run`] for the test to judge.
    pub fn run(mut self) -> Run {
        let command = command_line(&self.cmd);
        let out = self
            .cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run `{command}`: {e}"));
        Run {
            command,
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts the program with stdout and stderr piped, for a test that signals it; collect it
    /// with [`wait`].
    pub fn spawn(mut self) -> (Child, String) {
        let command = command_line(&self.cmd);
        let child = self
            .cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{command}`: {e}"));
        (child, command)
    }
}

/// Waits for a child started by [`Cli::spawn`] and collects its output into a [`Run`].
pub fn wait(child: Child, command: String) -> Run {
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for `{command}`: {e}"));
    Run {
        command,
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn command_line(cmd: &Command) -> String {
    let quote = |s: &OsStr| {
        let s = s.to_string_lossy();
        if s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
            format!("'{}'", s.replace('\'', r"'\''"))
        } else {
            s.into_owned()
        }
    };
    let mut line: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), quote(v?))))
        .collect();
    line.push(quote(cmd.get_program()));
    line.extend(cmd.get_args().map(quote));
    line.join(" ")
}

/// A finished run: command line, exit status, stdout and stderr (lossy UTF-8).
///
/// Printed in full (`{run}`) by [`Run::success`], [`Run::failure`] and, when a test panics while
/// it is alive, by its `Drop`.
pub struct Run {
    /// The command line as run.
    pub command: String,
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
}

impl Run {
    /// The run, if it exited with status 0; panics showing everything otherwise.
    #[track_caller]
    pub fn success(self) -> Run {
        assert!(self.status.success(), "expected success:\n{self}");
        self
    }

    /// The run, if it exited with a non-zero status; panics showing everything otherwise.
    #[track_caller]
    pub fn failure(self) -> Run {
        assert!(!self.status.success(), "expected a failure:\n{self}");
        self
    }

    /// The exit code (`None` when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "$ {}", self.command)?;
        writeln!(f, "({})", self.status)?;
        writeln!(f, "--- stdout\n{}", self.stdout.trim_end())?;
        write!(f, "--- stderr\n{}", self.stderr.trim_end())
    }
}

impl fmt::Debug for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- a command the failed test ran:\n{self}\n---");
        }
    }
}

/// The binary `name` of this workspace, next to the running test executable's `deps/` folder
/// (`<target>/<profile>/<name>`): for a test of another crate than the binary's, which has no
/// `CARGO_BIN_EXE_<name>`. Panics with the build command when it is missing.
pub fn workspace_bin(name: &str, package: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join(name);
    assert!(
        bin.exists(),
        "{} not built: run `cargo build -p {package} --bin {name}` first",
        bin.display()
    );
    bin
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_status() {
        let run = Cli::new("sh")
            .args(["-c", "echo out; echo err >&2; exit 3"])
            .run();
        assert_eq!(run.stdout, "out\n");
        assert_eq!(run.stderr, "err\n");
        assert_eq!(run.code(), Some(3));
        let shown = run.failure().to_string();
        assert!(
            shown.contains("$ sh -c 'echo out; echo err >&2; exit 3'"),
            "{shown}"
        );
        assert!(shown.contains("--- stderr\nerr"), "{shown}");
    }

    #[test]
    fn success_panics_with_the_whole_run() {
        let r = std::panic::catch_unwind(|| {
            Cli::new("sh")
                .args(["-c", "echo why >&2; exit 1"])
                .env("A", "1")
                .run()
                .success();
        });
        let msg = r.expect_err("must panic");
        let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("A=1 sh -c") && msg.contains("why"), "{msg}");
    }
}
