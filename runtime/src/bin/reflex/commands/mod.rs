//! One module per command, each with its `Args` (clap derive) and `run`.

pub mod bench;
pub mod can;
pub mod check;
pub mod demo;
pub mod doctor;
pub mod engine;
pub mod record;
pub mod run;

use anyhow::{Context, Result};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// How a command that did not fail ended; `main` maps it to the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// `reflex bench` measured a FAIL verdict, or a `reflex doctor` check failed.
    VerdictFail,
    /// `reflex doctor`: a check warned, none failed.
    Warnings,
}

/// Stdout was closed by the reader (`| head`): not an error of ours.
#[derive(Debug, thiserror::Error)]
#[error("stdout closed")]
pub struct StdoutClosed;

/// Prints a line on stdout; a closed pipe is reported as [`StdoutClosed`].
pub fn stdout_line(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        r => r.context("writing to stdout"),
    }
}

/// The Ctrl-C / SIGTERM flag, installed once per process (before anything slow, so an early
/// interrupt is handled too): the loop sees it, sends the stop command and exits.
pub fn interrupt_flag() -> Result<Arc<AtomicBool>> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    if let Some(f) = FLAG.get() {
        return Ok(f.clone());
    }
    let f = Arc::new(AtomicBool::new(false));
    let h = f.clone();
    ctrlc::set_handler(move || h.store(true, Ordering::Relaxed))
        .context("installing the Ctrl-C handler")?;
    Ok(FLAG.get_or_init(|| f).clone())
}
