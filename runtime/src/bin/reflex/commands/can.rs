//! `reflex can encode|send|decode`: motor bring-up in the bundle's CAN protocol. The jog ramp is
//! the library's ([`reflex_runtime::control::jog`]).

use super::{interrupt_flag, stdout_line, Outcome};
use crate::args::{BundleArg, CanOutArgs};
use crate::open::{load_bundle, Devices};
use anyhow::{bail, Context, Result};
use reflex_models::manifest::Manifest;
use reflex_runtime::can::codec::{Codec, Frames};
use reflex_runtime::can::CanFrame;
use reflex_runtime::clock::{Clock, MonotonicClock};
use reflex_runtime::control::jog::{clamps, parse_target, Jog, STATE_TIMEOUT_NS};
use reflex_runtime::control::safety::Filtered;
use reflex_runtime::spec::StateSourceSpec;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Print the frames a command would be sent as, without sending anything.
    ///
    /// Frames are printed as `ID#DATA` (the notation of can-utils' `cansend` and `candump -L`),
    /// one per line on stdout, with what each one means on stderr. Values are physical, in the
    /// bundle's action units, and go through its position limits.
    ///
    /// Example: reflex can encode --bundle B shoulder_pan=0.1 shoulder_lift=0 ...
    Encode {
        #[command(flatten)]
        target: CanTarget,
        /// Also print the protocol's start frames (MIT: command timeout and enable) first.
        #[arg(long)]
        start: bool,
        /// Encode a stop command at these values instead of a move.
        #[arg(long)]
        stop: bool,
    },
    /// Send a command (jog the motors): start frames, then the command through the safety filter.
    ///
    /// With `--state`, the filter is seeded from the measured joint positions and the
    /// command is repeated at the control rate for `--hold` seconds, so the rate limits ramp the
    /// joints to the target instead of jumping; without it only the position limits apply to
    /// the single command sent (keep steps small).
    Send {
        #[command(flatten)]
        target: CanTarget,
        #[command(flatten)]
        out: CanOutArgs,
        /// Joint state to start from: `can:IFACE[:BASE_ID]` (as for `reflex run`).
        #[arg(long)]
        state: Option<StateSourceSpec>,
        /// Seconds to keep sending the command at the control rate (with --state; default 2).
        #[arg(long)]
        hold: Option<f64>,
    },
    /// Decode a candump log into joint names and values with units, like `cantools decode`.
    ///
    /// Reads the `candump -l` format; explains commands, the protocol's special frames (enable,
    /// timeout) and motor replies.
    Decode {
        #[command(flatten)]
        bundle: BundleArg,
        /// The candump log; `-` reads stdin.
        log: PathBuf,
    },
}

#[derive(clap::Args)]
pub struct CanTarget {
    #[command(flatten)]
    bundle: BundleArg,
    /// Run a bundle without action limits (bench setups only).
    #[arg(long)]
    allow_unlimited: bool,
    /// `NAME=VALUE` for every action dimension, in its physical unit.
    #[arg(required = true, value_name = "NAME=VALUE")]
    values: Vec<String>,
}

impl CanTarget {
    /// The jog to the target values, through the bundle's safety filter.
    fn jog(&self, m: &Manifest) -> Result<Jog> {
        let target = parse_target(&m.action.names, &self.values)?;
        Ok(Jog::new(m, target, self.allow_unlimited)?)
    }
}

pub fn run(c: Cmd) -> Result<Outcome> {
    match c {
        Cmd::Encode {
            target,
            start,
            stop,
        } => encode(target, start, stop),
        Cmd::Send {
            target,
            out,
            state,
            hold,
        } => send(target, out, state, hold),
        Cmd::Decode { bundle, log } => decode(&bundle, &log),
    }
}

fn encode(target: CanTarget, start: bool, stop: bool) -> Result<Outcome> {
    let bundle = load_bundle(&target.bundle.bundle)?;
    let codec = Codec::from_bundle(&bundle)?;
    let m = &bundle.manifest;
    let mut jog = target.jog(m)?;
    let f = jog.step(0);
    print_clamps(m, jog.target(), &f);
    let cmd = if stop { jog.stop(1) } else { f.command };
    let mut frames = Frames::new();
    let mut out = vec![];
    if start {
        codec.start_frames(&mut frames)?;
        out.extend(frames.iter().copied());
    }
    codec.encode(&cmd, &mut frames)?;
    out.extend(frames.iter().copied());
    for f in &out {
        eprintln!("  {} = {}", frame_text(f), explain_text(&codec, f));
        stdout_line(&frame_text(f))?;
    }
    Ok(Outcome::Success)
}

fn send(
    target: CanTarget,
    out: CanOutArgs,
    state: Option<StateSourceSpec>,
    hold: Option<f64>,
) -> Result<Outcome> {
    if let Some(s @ StateSourceSpec::Replay(_)) = &state {
        bail!("--state {s}: expected can:IFACE[:BASE_ID]");
    }
    let stop = interrupt_flag()?;
    let clock = MonotonicClock::new();
    let bundle = load_bundle(&target.bundle.bundle)?;
    let m = &bundle.manifest;
    let mut jog = target.jog(m)?;
    let mut dev = Devices::new(&bundle);
    let mut sink = dev.sink(&out.can, &out.iface, &clock, out.force)?;
    let can = &out.can;
    let Some(state) = state else {
        eprintln!("note: no --state: the command is not rate-limited from the joints' positions");
        let f = jog.step(0);
        print_clamps(m, jog.target(), &f);
        sink.send(&f.command, clock.now_ns())?;
        sink.flush()?;
        println!("sent 1 command to {can}: {:?}", f.command.values());
        return Ok(Outcome::Success);
    };
    let mut src = dev.state(Some(&state), None)?;
    jog.seed_from_state(src.as_mut(), &clock, STATE_TIMEOUT_NS)?;
    let ticks = ((hold.unwrap_or(2.0) * 1e9) as u64 / jog.period_ns()).max(1);
    let target_values = jog.target().to_vec();
    let report = jog.ramp(src.as_mut(), sink.as_mut(), &clock, ticks, &stop, |f| {
        print_clamps(m, &target_values, f)
    })?;
    if report.state_errors > 0 {
        eprintln!(
            "note: {} joint state reads failed during the ramp",
            report.state_errors
        );
    }
    if let Some(c) = report.last {
        println!(
            "sent {} commands to {can} at {} Hz; last: {:?}; measured: {:?}",
            report.sent,
            m.control.rate_hz,
            c.values(),
            jog.measured()
        );
    }
    Ok(Outcome::Success)
}

fn decode(bundle: &BundleArg, log: &PathBuf) -> Result<Outcome> {
    let bundle = load_bundle(&bundle.bundle)?;
    let codec = Codec::from_bundle(&bundle)?;
    let bytes = if log.as_os_str() == "-" {
        let mut b = vec![];
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b).context("reading stdin")?;
        b
    } else {
        std::fs::read(log).with_context(|| format!("reading {}", log.display()))?
    };
    // Every line, to the end (as log2asc): a line that does not parse (a stray non-UTF-8 byte
    // included) is reported and counted, and the exit status says so.
    let text = String::from_utf8_lossy(&bytes);
    let mut bad = 0;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match reflex_runtime::can::decode::explain_line(&codec, line) {
            Ok(out) => stdout_line(&out)?,
            Err(e) => {
                bad += 1;
                eprintln!("{}:{}: {e}", log.display(), n + 1);
            }
        }
    }
    if bad > 0 {
        bail!("{bad} line(s) of {} could not be read", log.display());
    }
    Ok(Outcome::Success)
}

/// A note on stderr for every dimension the safety filter changed.
fn print_clamps(m: &Manifest, target: &[f32], f: &Filtered) {
    let a = &m.action;
    for c in clamps(target, f) {
        eprintln!(
            "note: {} {} {} -> {} (safety filter: {})",
            a.names[c.dim], c.target, a.units[c.dim], c.sent, c.why
        );
    }
}

fn frame_text(f: &CanFrame) -> String {
    reflex_runtime::can::candump::frame_notation(f)
}

fn explain_text(codec: &Codec, f: &CanFrame) -> String {
    reflex_runtime::can::decode::explain_frame(codec, f)
}
