//! `reflex-tools deploy` and `reflex-tools rollback`: their flags and help text; the work is
//! [`reflex_tools::deploy`].

use anyhow::{Context, Result};
use reflex_board::profile::Profile;
use reflex_tools::deploy::{default_binary, is_debug_build, Deploy, Target};
use std::path::PathBuf;

/// Where the board is and how to reach it (shared by deploy and rollback).
#[derive(clap::Args)]
pub struct TargetArgs {
    /// The board: `user@robot` (anything `ssh` accepts, `~/.ssh/config` aliases included).
    /// The user needs write access to --prefix and --etc and, unless --no-start, to run
    /// `systemctl`/`udevadm` (root).
    #[arg(long)]
    pub host: String,
    /// An extra argument for `ssh` and `rsync`'s ssh, repeatable: `--ssh-arg=-p --ssh-arg=2222`,
    /// `--ssh-arg=-i --ssh-arg=~/.ssh/robot`.
    #[arg(long = "ssh-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub ssh_args: Vec<String>,
    /// Install directory on the board (versions/, current, previous).
    #[arg(long, default_value = "/opt/reflex")]
    pub prefix: PathBuf,
    /// The board's /etc: units go to ETC/systemd/system, udev rules to ETC/udev/rules.d.
    #[arg(long, default_value = "/etc")]
    pub etc: PathBuf,
    /// Install the files only: do not reload systemd/udev or (re)start the service.
    #[arg(long)]
    pub no_start: bool,
}

impl TargetArgs {
    fn target(&self) -> Target {
        Target {
            host: self.host.clone(),
            ssh_args: self.ssh_args.clone(),
            prefix: self.prefix.clone(),
            etc: self.etc.clone(),
            start: !self.no_start,
        }
    }
}

#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  reflex-tools deploy --host robot@arm1 --profile jetson-orin-nx bundles/pick-v3\n  \
    reflex-tools deploy --dry-run --host robot@arm1 --profile ./lab-board.toml bundles/pick-v3\n  \
    reflex-tools rollback --host robot@arm1\n\n\
    Each deployment is a new version directory; `current` switches to it only once everything \
    is copied and `reflex check` passed on the board; a failure before that leaves the previous \
    version running. Two versions are kept."
)]
pub struct Args {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Board profile: a built-in name (jetson-orin-nano, jetson-orin-nx, jetson-agx-orin,
    /// generic-arm64, generic-x86-64) or a profile TOML file (board/profiles/ has the schema).
    #[arg(long)]
    pub profile: String,
    /// The `reflex` binary for the board [default: where scripts/build-board.sh writes it,
    /// $CARGO_TARGET_DIR/board/aarch64-unknown-linux-gnu/release/reflex (or target/board/...),
    /// for an arm64 profile; the `reflex` next to this reflex-tools for x86-64].
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// The service's watchdog timeout, s (`WatchdogSec=`): a loop stalled this long is killed
    /// and restarted.
    #[arg(long, default_value_t = 2)]
    pub watchdog_sec: u32,
    /// SCHED_FIFO priority of the runtime (1-99; 0 = normal scheduling).
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u8).range(0..=99))]
    pub rt_priority: u8,
    /// An argument appended to the service's `reflex run` command line, repeatable
    /// (`--run-arg=--rate --run-arg=50`).
    #[arg(long = "run-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub run_args: Vec<String>,
    /// Print every step, command and generated file; run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The bundle directory to deploy.
    pub bundle: PathBuf,
}

#[derive(clap::Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub target: TargetArgs,
}

/// Deploy (see [`reflex_tools::deploy::deploy`]).
pub fn run(a: Args) -> Result<()> {
    let profile = Profile::load(&a.profile).context("--profile")?;
    let binary = match a.binary {
        Some(b) => b,
        None => {
            let b = default_binary(&profile.arch);
            if is_debug_build(&b) {
                eprintln!(
                    "note: deploying the debug build {} (the `reflex` next to this reflex-tools); \
                     for a release one: cargo build --release --workspace, then --binary \
                     <target dir>/release/reflex",
                    b.display()
                );
            }
            b
        }
    };
    let d = Deploy {
        target: a.target.target(),
        profile,
        bundle: a.bundle,
        binary,
        watchdog_sec: a.watchdog_sec,
        rt_priority: a.rt_priority,
        run_args: a.run_args,
        dry_run: a.dry_run,
    };
    let id = reflex_tools::deploy::deploy(&d)?;
    if !d.dry_run {
        println!(
            "deployed {id} to {}:{}",
            d.target.host,
            d.target.prefix.display()
        );
    }
    Ok(())
}

/// Roll back (see [`reflex_tools::deploy::rollback`]).
pub fn rollback(a: RollbackArgs) -> Result<()> {
    let t = a.target.target();
    let v = reflex_tools::deploy::rollback(&t)?;
    println!("rolled back: {v} is current on {}", t.host);
    Ok(())
}
