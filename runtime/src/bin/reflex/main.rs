//! `reflex`: the on-board binary. This file parses the command line, dispatches to one module
//! per command (`commands/`) and turns every command's result into an exit status, in one place
//! ([`exit_code`]).

mod args;
mod commands;
mod open;

use clap::{Parser, Subcommand};
use commands::{bench, can, check, demo, doctor, engine, record, run, Outcome, StdoutClosed};
use std::process::ExitCode;

/// The exit statuses, for `--help` and the README.
const EXIT_STATUS: &str = "Exit status:\n  \
    0  success (`reflex bench`: verdict PASS)\n  \
    1  error; the message on stderr names the file, device or value at fault\n  \
    2  `reflex bench` verdict FAIL, a `reflex doctor` check FAIL, or a malformed command line \
       (the message names the accepted forms)\n  \
    3  `reflex doctor`: a check WARN, none FAIL";

#[derive(Parser)]
#[command(
    name = "reflex",
    version,
    about = "Run visuomotor robot policies on the robot: cameras -> policy -> safe CAN commands",
    long_about = "Run visuomotor robot policies on the robot.\n\n\
        reflex reads camera frames and joint state, preprocesses them exactly as in training, runs \
        the policy bundle's network, turns its output into physical commands (unnormalize, chunk \
        scheduling, hard limits, rate limits, watchdog) and sends them at a fixed rate.\n\n\
        Start with `reflex demo`: it builds a reference ResNet-18 bundle and a synthetic episode \
        and runs the whole loop for 10 s, writing CAN frames to a candump log.",
    after_help = EXIT_STATUS
)]
struct Cli {
    /// More logging (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Less logging (errors only).
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a bundle on cameras and a CAN output until Ctrl-C (or --duration).
    Run(run::Args),
    /// Build the reference ResNet-18 bundle and a synthetic episode if absent, run ~10 s.
    Demo(demo::Args),
    /// Offline latency check: time the whole frame-to-command path (or the network alone) and
    /// give a PASS/FAIL verdict against the bundle's control period. Exit code 0 = PASS, 2 = FAIL.
    Bench(bench::Args),
    /// Motor bring-up in the bundle's CAN protocol: encode, send (through the safety filter) and
    /// decode frames by joint name, in physical units.
    #[command(subcommand)]
    Can(can::Cmd),
    /// Validate a bundle (manifest, hashes, graph I/O) and print what it expects.
    Check(check::Args),
    /// Record an episode (reflex-episode-v1: camera frames as delivered + joint state) from the
    /// bundle's cameras, for `reflex run --camera replay:DIR`, bench and calibration.
    Record(record::Args),
    /// Is this board ready? Profile, CAN interfaces (up, bitrate, state), cameras (present, the
    /// bundle's format), e-stop (released), bundle, backend, clocks, disk, the service: one
    /// PASS/WARN/FAIL line each with the fix. Exit 0 all PASS, 3 a WARN, 2 a FAIL.
    Doctor(doctor::Args),
    /// TensorRT engines: build the bundle's engine on this board (`reflex engine build`).
    #[command(subcommand)]
    Engine(engine::Cmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    reflex_runtime::logging::init(cli.quiet, cli.verbose);
    let result = match cli.cmd {
        Cmd::Run(a) => run::run(a),
        Cmd::Demo(a) => demo::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Can(c) => can::run(c),
        Cmd::Check(a) => check::run(a),
        Cmd::Record(a) => record::run(a),
        Cmd::Doctor(a) => doctor::run(a),
        Cmd::Engine(c) => engine::run(c),
    };
    ExitCode::from(exit_code(&result))
}

/// The one exit-status policy (see [`EXIT_STATUS`]); prints the error, if any, on stderr.
/// (Command-line errors never get here: clap prints them and exits with 2.)
fn exit_code(result: &anyhow::Result<Outcome>) -> u8 {
    match result {
        Ok(Outcome::Success) => 0,
        Ok(Outcome::VerdictFail) => 2,
        Ok(Outcome::Warnings) => 3,
        // `reflex can decode ... | head`: a closed pipe ends the program quietly, as for other
        // Unix tools.
        Err(e) if e.downcast_ref::<StdoutClosed>().is_some() => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}
