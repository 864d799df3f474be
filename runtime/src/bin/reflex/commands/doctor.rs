//! `reflex doctor`: is this board ready for the robot to move? One line per check, PASS, WARN
//! or FAIL with what was found and the fix; the exit status follows the worst (0 all PASS,
//! 3 a WARN, 2 a FAIL).
//!
//! The board-side checks (profile, CAN interfaces, governor, power mode, disk, the unit's state)
//! are `reflex_board::doctor`'s; this module adds those that need the runtime: the bundle, each
//! camera offering the bundle's capture format and size (the same V4L2 negotiation `reflex run`
//! does), the e-stop line readable and released, and the backend decision with its reasons.

use super::{stdout_line, Outcome};
use crate::args::BackendArgs;
use crate::open::safety_input;
use anyhow::{Context, Result};
use reflex_board::doctor::{self, Check, Status};
use reflex_board::input::SafetyInput;
use reflex_board::profile::{self, CameraNode, Profile};
use reflex_models::Bundle;
use reflex_runtime::camera::v4l2::V4l2Camera;
use reflex_runtime::clock::{Clock, MonotonicClock};
use reflex_runtime::infer::select::decide;
use reflex_runtime::spec::SafetyInputSpec;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
#[command(
    after_help = "Exit status: 0 every check PASS, 3 a WARN and no FAIL, 2 a FAIL, 1 doctor \
    itself could not run.\n\nExample, on the robot:\n  reflex doctor --bundle /opt/reflex/current/bundle"
)]
pub struct Args {
    /// Board profile: a built-in name or a profile TOML file [default: detected from
    /// /proc/device-tree/model and /etc/nv_tegra_release, else by architecture].
    #[arg(long)]
    pub profile: Option<String>,
    /// The bundle to check (manifest, hashes, graph I/O), with the camera formats and the
    /// backend it would run on [default: /opt/reflex/current/bundle when it exists].
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// A camera to check, `NAME=DEVICE`, repeatable; adds to (or replaces by name) the
    /// profile's cameras.
    #[arg(long = "camera", value_name = "NAME=DEVICE")]
    pub cameras: Vec<String>,
    /// The e-stop input, as `reflex run --estop` takes it [default: the profile's].
    #[arg(long, value_name = "SPEC", value_parser = SafetyInputSpec::parse_estop)]
    pub estop: Option<SafetyInputSpec>,
    /// The systemd unit to report on.
    #[arg(long, default_value = "reflex.service")]
    pub unit: String,
    /// Free space needed on the file system of --bundle (or /), MiB.
    #[arg(long, default_value_t = 500)]
    pub min_free_mib: u64,
    #[command(flatten)]
    pub backend: BackendArgs,
}

pub fn run(a: Args) -> Result<Outcome> {
    let mut checks = Vec::new();
    let mut say = |c: Check| -> Result<()> {
        stdout_line(&c.line())?;
        checks.push(c.status);
        Ok(())
    };

    let profile: Profile = match &a.profile {
        Some(p) => {
            let p = Profile::load(p).context("--profile")?;
            say(Check::pass(
                "profile",
                format!("{} ({}), as given", p.name, p.description),
            ))?;
            p
        }
        None => {
            let d = profile::detect(Path::new("/")).context("detecting the board")?;
            say(Check::pass(
                "profile",
                format!(
                    "{} ({}), detected: {}",
                    d.profile.name, d.profile.description, d.reason
                ),
            ))?;
            d.profile
        }
    };

    for c in &profile.can {
        say(doctor::check_can(c))?;
    }

    let default_bundle = Path::new("/opt/reflex/current/bundle");
    let bundle_path = a.bundle.clone().or_else(|| {
        default_bundle
            .exists()
            .then(|| default_bundle.to_path_buf())
    });
    let bundle = match &bundle_path {
        None => {
            say(Check::warn(
                "bundle",
                "none given, none deployed",
                "give --bundle, or deploy one with `reflex-tools deploy`",
            ))?;
            None
        }
        Some(p) => match Bundle::load(p) {
            Ok(b) => {
                say(Check::pass(
                    "bundle",
                    format!("{} valid ({})", p.display(), b.manifest.name),
                ))?;
                Some(b)
            }
            Err(e) => {
                say(Check::fail(
                    "bundle",
                    format!("{}: {e}", p.display()),
                    "re-export or redeploy the bundle (`reflex check --bundle` shows the same)",
                ))?;
                None
            }
        },
    };

    let mut cameras: Vec<CameraNode> = profile.cameras.clone();
    for spec in &a.cameras {
        let (name, dev) = spec.split_once('=').with_context(|| {
            format!("--camera `{spec}`: NAME=DEVICE (front=/dev/v4l/by-id/...)")
        })?;
        cameras.retain(|c| c.name != name);
        cameras.push(CameraNode {
            name: name.into(),
            device: dev.into(),
        });
    }
    for cam in &cameras {
        say(check_camera(cam, bundle.as_ref()))?;
    }
    if let Some(b) = &bundle {
        for c in &b.manifest.cameras {
            if !cameras.iter().any(|k| k.name == c.name) {
                say(Check::warn(
                    format!("camera {}", c.name),
                    "the bundle's camera is in neither the profile nor --camera: not checked",
                    format!("give --camera {}=/dev/v4l/by-id/...", c.name),
                ))?;
            }
        }
    }

    let estop = match (&a.estop, &profile.estop) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(s)) => Some(SafetyInputSpec::parse_estop(s).context("the profile's estop")?),
        (None, None) => None,
    };
    say(match estop {
        Some(s) => check_estop(&s),
        None => Check::warn(
            "e-stop",
            "none configured",
            "wire an e-stop and give it (`--estop gpio:/dev/gpiochip0:LINE:active-low` here, `estop = ...` in the profile)",
        ),
    })?;

    if let Some(b) = &bundle {
        say(match decide(b, a.backend.backend, a.backend.tract()) {
            Ok(sel) => Check::pass("backend", sel.to_string()),
            Err(e) => Check::fail(
                "backend",
                e.to_string(),
                "run with --backend tract, or install the missing library",
            ),
        })?;
    }

    if let Some(g) = &profile.power.governor {
        say(doctor::check_governor(Path::new("/"), g))?;
    }
    if let Some(m) = profile.power.nvpmodel_mode {
        say(doctor::check_power_mode(Path::new("/"), m))?;
    }
    let disk = bundle_path
        .as_deref()
        .filter(|p| p.exists())
        .unwrap_or(Path::new("/"));
    say(doctor::check_disk(disk, a.min_free_mib))?;
    say(doctor::check_service(&a.unit))?;

    let worst = checks.iter().copied().max().unwrap_or(Status::Pass);
    let (n_fail, n_warn) = (
        checks.iter().filter(|s| **s == Status::Fail).count(),
        checks.iter().filter(|s| **s == Status::Warn).count(),
    );
    stdout_line(&format!(
        "doctor: {} ({} checks, {n_fail} FAIL, {n_warn} WARN)",
        worst.label(),
        checks.len()
    ))?;
    Ok(match worst {
        Status::Pass => Outcome::Success,
        Status::Warn => Outcome::Warnings,
        Status::Fail => Outcome::VerdictFail,
    })
}

/// The camera node exists and, with a bundle that has this camera, offers its capture format
/// and size (opened and negotiated as `reflex run` does, then closed).
fn check_camera(cam: &CameraNode, bundle: Option<&Bundle>) -> Check {
    let name = format!("camera {}", cam.name);
    let dev = Path::new(&cam.device);
    if !dev.exists() {
        return Check::fail(
            name,
            format!("{} does not exist", cam.device),
            "plug the camera in and check `v4l2-ctl --list-devices` and `ls -l /dev/v4l/by-id`; \
             fix the profile's device or --camera",
        );
    }
    let target =
        std::fs::canonicalize(dev).map_or_else(|_| cam.device.clone(), |p| p.display().to_string());
    let Some(spec) = bundle.and_then(|b| b.manifest.cameras.iter().find(|c| c.name == cam.name))
    else {
        return Check::pass(
            name,
            format!(
                "{} -> {target} present (no bundle camera of this name to check its format)",
                cam.device
            ),
        );
    };
    match V4l2Camera::open(dev, &spec.capture) {
        Ok(_) => Check::pass(
            name,
            format!(
                "{} -> {target} offers {} {}x{} at {} fps",
                cam.device, spec.capture.format.as_str(), spec.capture.width, spec.capture.height, spec.capture.fps
            ),
        ),
        Err(e) => Check::fail(
            name,
            e.to_string(),
            "use a camera mode the device offers (`v4l2-ctl -d DEV --list-formats-ext`) in the bundle's capture, or another camera",
        ),
    }
}

/// The e-stop input opens, reads, and reads released (polled for 300 ms: a CAN e-stop's status
/// frame needs that long to arrive).
fn check_estop(spec: &SafetyInputSpec) -> Check {
    let mut input = match safety_input(spec, true) {
        Ok(i) => i,
        Err(e) => return Check::fail(
            "e-stop",
            format!("{e:#}"),
            "check the line (`gpioinfo`) or the CAN interface, and permissions (the gpio group)",
        ),
    };
    let clock = MonotonicClock::new();
    let start = clock.now_ns();
    let mut last = Ok(true);
    while clock.now_ns() - start < 300_000_000 {
        last = input.poll(clock.now_ns());
        clock.sleep_until(clock.now_ns() + 10_000_000);
    }
    match last {
        Ok(false) => Check::pass("e-stop", format!("{} readable, released", input.name())),
        Ok(true) => Check::fail(
            "e-stop",
            format!("{} reads PRESSED", input.name()),
            "release the e-stop (or check its wiring and active level: `active-low` for a normally-closed switch to ground)",
        ),
        Err(e) => Check::fail("e-stop", format!("{}: {e}", input.name()), "check the wiring and the device"),
    }
}
