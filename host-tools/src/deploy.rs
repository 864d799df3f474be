//! `reflex-tools deploy` and `rollback`: put a `reflex` binary and a bundle on a board over ssh,
//! as a new version, and switch to it atomically.
//!
//! On the board (`--prefix`, default `/opt/reflex`):
//!
//! ```text
//! versions/<id>/bin/reflex      the binary
//! versions/<id>/bundle/         the bundle
//! versions/<id>/system/         the units and udev rules generated for the board profile
//! current  -> versions/<id>     what the service runs (a symlink, replaced with rename(2))
//! previous -> versions/<id>     what `rollback` goes back to
//! ```
//!
//! The steps: check locally (the bundle loads, the binary is an ELF for the profile's
//! architecture); on the board, check the architecture (`uname -m`) and make
//! `versions/<id>.partial`; copy the binary, the bundle and the generated files with `rsync`
//! over `ssh`; run the new binary's `reflex check` on the new bundle there; rename the version
//! into place and switch `current` (a new symlink renamed over the old one: readers see the old
//! or the new version, never neither); install the units and udev rules under `--etc`; reload
//! systemd and udev and restart the service (not with `--no-start`); keep two versions.
//!
//! Whatever fails before the switch removes the partial version and leaves the previous one
//! current and running; the error says so and what to do. A service that does not come up
//! after the switch is rolled back to the previous version at once.
//!
//! Everything runs through the system's `ssh` and `rsync` (their options, keys and
//! `~/.ssh/config` apply; `--ssh-arg` adds options to both). `--dry-run` prints every step,
//! command and generated file and runs nothing.

use anyhow::{anyhow, bail, Context, Result};
use reflex_board::profile::Profile;
use reflex_board::systemd::{self, ServiceSpec, SERVICE};
use reflex_board::udev;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where things go on the board.
#[derive(Debug, Clone)]
pub struct Target {
    /// `user@host` (anything `ssh` accepts, `~/.ssh/config` aliases included).
    pub host: String,
    /// Extra arguments for `ssh` (and `rsync -e ssh ...`): `-p 2222`, `-i key`, `-o ...`.
    pub ssh_args: Vec<String>,
    /// The install directory on the board.
    pub prefix: PathBuf,
    /// The board's `/etc`: units go to `ETC/systemd/system`, udev rules to `ETC/udev/rules.d`.
    pub etc: PathBuf,
    /// Reload systemd and udev and (re)start the service; `false` installs files only.
    pub start: bool,
}

/// What to deploy.
#[derive(Debug, Clone)]
pub struct Deploy {
    pub target: Target,
    pub profile: Profile,
    pub bundle: PathBuf,
    pub binary: PathBuf,
    /// The service's watchdog timeout (`WatchdogSec=`), s.
    pub watchdog_sec: u32,
    /// SCHED_FIFO priority of the runtime (0 = none).
    pub rt_priority: u8,
    /// Arguments appended to the unit's `reflex run` command line.
    pub run_args: Vec<String>,
    pub dry_run: bool,
}

/// The architecture an ELF file was built for (`e_machine`, ELF specification / elf(5):
/// 62 = EM_X86_64, 183 = EM_AARCH64), in Rust's names.
pub fn elf_arch(path: &Path) -> Result<&'static str> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" {
        bail!("{} is not an ELF executable", path.display());
    }
    let little = bytes[5] == 1;
    let m = if little {
        u16::from_le_bytes([bytes[18], bytes[19]])
    } else {
        u16::from_be_bytes([bytes[18], bytes[19]])
    };
    match m {
        62 => Ok("x86_64"),
        183 => Ok("aarch64"),
        other => bail!(
            "{}: ELF machine {other}, neither x86_64 nor aarch64",
            path.display()
        ),
    }
}

/// The `reflex` binary to deploy when `--binary` is not given: for an aarch64 board the cross
/// build's output where `scripts/build-board.sh` writes it (`$REFLEX_BOARD_TARGET_DIR`, else
/// `$CARGO_TARGET_DIR/board`, else `target/board`, then
/// `aarch64-unknown-linux-gnu/release/reflex`); for an x86-64 board the `reflex` next to this
/// `reflex-tools` (the same build: a debug `reflex-tools` deploys a debug `reflex`, which
/// `deploy` says when it copies it).
pub fn default_binary(arch: &str) -> PathBuf {
    if arch == "aarch64" {
        board_build_output(
            std::env::var_os("REFLEX_BOARD_TARGET_DIR").map(PathBuf::from),
            std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from),
        )
    } else {
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("reflex")))
            .unwrap_or_else(|| PathBuf::from("reflex"))
    }
}

/// Where `scripts/build-board.sh` writes the aarch64 `reflex`, given its two environment
/// variables (`REFLEX_BOARD_TARGET_DIR`, `CARGO_TARGET_DIR`); the script's header documents the
/// same rule.
pub fn board_build_output(
    board_target_dir: Option<PathBuf>,
    cargo_target_dir: Option<PathBuf>,
) -> PathBuf {
    board_target_dir
        .unwrap_or_else(|| {
            cargo_target_dir
                .unwrap_or_else(|| PathBuf::from("target"))
                .join("board")
        })
        .join("aarch64-unknown-linux-gnu/release/reflex")
}

/// Whether `binary` sits in a cargo `debug` profile directory (`.../debug/reflex`): such a
/// build carries debug assertions and unoptimized glue, fine for a bench board, not what a robot
/// should run by accident.
pub fn is_debug_build(binary: &Path) -> bool {
    binary
        .parent()
        .and_then(|d| d.file_name())
        .is_some_and(|n| n == "debug")
}

/// Quotes `s` for a POSIX shell (single quotes).
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=:,+@".contains(c))
    {
        return s.into();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn p(path: &Path) -> String {
    sh_quote(&path.display().to_string())
}

/// One step of a deployment, printed by `--dry-run` and run otherwise.
#[derive(Debug)]
enum Step {
    /// A shell script run on the board (`ssh HOST sh -s`, the script on stdin).
    Remote { what: String, script: String },
    /// `rsync` of a local file or directory to a path on the board.
    Copy {
        what: String,
        from: PathBuf,
        dir: bool,
        to: PathBuf,
    },
}

impl Target {
    fn ssh(&self) -> Command {
        let mut c = Command::new("ssh");
        c.args(&self.ssh_args).arg(&self.host).arg("sh -s");
        c
    }

    fn rsync_rsh(&self) -> String {
        let mut s = String::from("ssh");
        for a in &self.ssh_args {
            s.push(' ');
            s.push_str(&sh_quote(a));
        }
        s
    }

    /// Runs `script` on the board; its stdout on success, an error with its stderr otherwise.
    fn remote(&self, script: &str) -> Result<String> {
        let mut child = self
            .ssh()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run `ssh` (install openssh-client)")?;
        child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("ssh stdin"))?
            .write_all(format!("set -e\n{script}\n").as_bytes())
            .context("writing the script to ssh")?;
        let out = child.wait_with_output().context("waiting for ssh")?;
        if !out.status.success() {
            bail!(
                "on {}: {} (exit {:?})",
                self.host,
                String::from_utf8_lossy(&out.stderr).trim(),
                out.status.code()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn run(&self, step: &Step) -> Result<String> {
        match step {
            Step::Remote { script, .. } => self.remote(script),
            Step::Copy { from, dir, to, .. } => {
                let mut src = from.display().to_string();
                if *dir {
                    src.push('/');
                }
                let out = Command::new("rsync")
                    .args(["-rt", "--chmod=D755,F644", "-e"])
                    .arg(self.rsync_rsh())
                    .arg(&src)
                    .arg(format!("{}:{}", self.host, to.display()))
                    .output()
                    .context("cannot run `rsync` (install rsync here and on the board)")?;
                if !out.status.success() {
                    bail!(
                        "rsync {} -> {}:{}: {} (exit {:?})",
                        src,
                        self.host,
                        to.display(),
                        String::from_utf8_lossy(&out.stderr).trim(),
                        out.status.code()
                    );
                }
                Ok(String::new())
            }
        }
    }

    fn print(&self, n: usize, step: &Step) {
        match step {
            Step::Remote { what, script } => {
                println!(
                    "{n}. {what}\n   ssh {} {} sh -s <<'EOF'",
                    self.ssh_args.join(" "),
                    self.host
                );
                for l in script.lines() {
                    println!("   {l}");
                }
                println!("   EOF");
            }
            Step::Copy {
                what,
                from,
                dir,
                to,
            } => println!(
                "{n}. {what}\n   rsync -rt -e {} {}{} {}:{}",
                sh_quote(&self.rsync_rsh()),
                from.display(),
                if *dir { "/" } else { "" },
                self.host,
                to.display()
            ),
        }
    }

    /// The script that installs `current/system`'s files and (re)starts the service.
    fn install_script(&self) -> String {
        let sys = self.prefix.join("current/system");
        let units = self.etc.join("systemd/system");
        let rules = self.etc.join("udev/rules.d");
        let mut s = format!(
            "mkdir -p {units}\nfor f in {sys}/*.service; do cp \"$f\" {units}/; done\n\
             if [ -e {sys}/{r} ]; then mkdir -p {rules}; cp {sys}/{r} {rules}/; fi\n",
            units = p(&units),
            sys = p(&sys),
            rules = p(&rules),
            r = udev::RULES_FILE,
        );
        if self.start {
            s += &format!(
                "systemctl daemon-reload\n\
                 if [ -e {sys}/{r} ]; then udevadm control --reload; udevadm trigger; fi\n\
                 units=$(cd {sys} && ls *.service)\n\
                 systemctl enable $units\n\
                 for u in $units; do [ \"$u\" = {SERVICE} ] || systemctl restart \"$u\"; done\n\
                 systemctl restart {SERVICE}\n\
                 sleep 3\n\
                 systemctl is-active --quiet {SERVICE} || {{ echo \"{SERVICE} did not come up: journalctl -u {SERVICE} -n 50\" >&2; exit 1; }}\n",
                sys = p(&sys),
                r = udev::RULES_FILE,
            );
        }
        s
    }
}

/// The version directory name: time (ms since the epoch) and the bundle's name.
fn version_id(bundle_name: &str) -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let name: String = bundle_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("v{ms}-{name}")
}

/// Deploys; returns the new version's id (or the planned one with `--dry-run`).
pub fn deploy(d: &Deploy) -> Result<String> {
    let bundle = reflex_models::Bundle::load(&d.bundle).with_context(|| {
        format!(
            "the bundle {} does not load; nothing was copied",
            d.bundle.display()
        )
    })?;
    let arch = elf_arch(&d.binary).with_context(|| {
        format!(
            "--binary {}: build it (`./scripts/build-board.sh` for an arm64 board, `cargo build --release --bin reflex` for x86-64) or give its path",
            d.binary.display()
        )
    })?;
    if arch != d.profile.arch {
        bail!(
            "--binary {} is built for {arch}, the profile {} is {}: give the {} build (`./scripts/build-board.sh` builds the arm64 one)",
            d.binary.display(),
            d.profile.name,
            d.profile.arch,
            d.profile.arch
        );
    }
    let t = &d.target;
    let id = version_id(&bundle.manifest.name);
    let versions = t.prefix.join("versions");
    let partial = versions.join(format!("{id}.partial"));
    let final_dir = versions.join(&id);

    // The generated files, staged locally.
    let spec = ServiceSpec {
        prefix: t.prefix.clone(),
        watchdog_sec: d.watchdog_sec,
        rt_priority: d.rt_priority,
        extra_args: d.run_args.clone(),
    };
    let mut files = systemd::units(&d.profile, &spec)
        .into_iter()
        .map(|u| (u.name, u.text))
        .collect::<Vec<_>>();
    if let Some(r) = udev::rules(&d.profile) {
        files.push((udev::RULES_FILE.into(), r));
    }
    let stage = std::env::temp_dir().join(format!("reflex-deploy-{}-{id}", std::process::id()));
    let _cleanup = StageDir(stage.clone());
    if !d.dry_run {
        std::fs::create_dir_all(&stage).with_context(|| format!("creating {}", stage.display()))?;
        for (name, text) in &files {
            std::fs::write(stage.join(name), text)
                .with_context(|| format!("writing {}", stage.join(name).display()))?;
        }
    }

    let uname_arch = if d.profile.arch == "x86_64" {
        "x86_64"
    } else {
        "aarch64"
    };
    let steps = [
        Step::Remote {
            what: format!("check the board's architecture ({uname_arch}) and make the new version's directory"),
            script: format!(
                "m=$(uname -m); [ \"$m\" = {uname_arch} ] || {{ echo \"the board is $m, the profile {} is {uname_arch}: choose the board's profile\" >&2; exit 1; }}\n\
                 command -v rsync >/dev/null || {{ echo 'rsync is missing on the board: sudo apt-get install rsync' >&2; exit 1; }}\n\
                 mkdir -p {}/bin {}/system",
                d.profile.name,
                p(&partial),
                p(&partial)
            ),
        },
        Step::Copy {
            what: format!("copy the binary {}", d.binary.display()),
            from: d.binary.clone(),
            dir: false,
            to: partial.join("bin/reflex"),
        },
        Step::Copy {
            what: format!("copy the bundle {} ({})", d.bundle.display(), bundle.manifest.name),
            from: d.bundle.clone(),
            dir: true,
            to: partial.join("bundle"),
        },
        Step::Copy {
            what: format!("copy the generated files ({})", files.iter().map(|f| f.0.as_str()).collect::<Vec<_>>().join(", ")),
            from: stage.clone(),
            dir: true,
            to: partial.join("system"),
        },
        Step::Remote {
            what: "run the new binary's `reflex check` on the new bundle, on the board".into(),
            script: format!(
                "chmod 755 {bin}\n{bin} --quiet check --bundle {b} >/dev/null",
                bin = p(&partial.join("bin/reflex")),
                b = p(&partial.join("bundle"))
            ),
        },
        Step::Remote {
            what: format!("make {id} current (atomic symlink switch), keep the old one as `previous`"),
            script: format!(
                "cd {prefix}\nmv {partial} {fin}\n\
                 if [ -L current ]; then ln -sfn \"$(readlink current)\" previous.new; mv -T previous.new previous; fi\n\
                 ln -sfn versions/{id} current.new\nmv -T current.new current",
                prefix = p(&t.prefix),
                partial = p(&partial),
                fin = p(&final_dir),
            ),
        },
        Step::Remote {
            what: if t.start {
                "install the units and udev rules, reload, enable and restart the service".into()
            } else {
                "install the units and udev rules (--no-start: nothing reloaded or started)".into()
            },
            script: t.install_script(),
        },
        Step::Remote {
            what: "remove versions other than current and previous".into(),
            script: format!(
                "cd {prefix}\nkeep1=$(readlink current); keep2=$(readlink previous || true)\n\
                 for v in versions/*; do [ \"$v\" = \"$keep1\" ] || [ \"$v\" = \"$keep2\" ] || rm -rf \"$v\"; done",
                prefix = p(&t.prefix)
            ),
        },
    ];

    if d.dry_run {
        println!(
            "deploy to {} (profile {}, {} -> {}), dry run: nothing is run",
            t.host,
            d.profile.name,
            d.bundle.display(),
            final_dir.display()
        );
        for (i, s) in steps.iter().enumerate() {
            t.print(i + 1, s);
        }
        for (name, text) in &files {
            println!(
                "\n--- {} ---\n{text}",
                partial.join("system").join(name).display()
            );
        }
        return Ok(id);
    }

    const SWITCH: usize = 5;
    for (i, s) in steps.iter().enumerate() {
        let what = match s {
            Step::Remote { what, .. } | Step::Copy { what, .. } => what,
        };
        log::info!("{}/{}: {what}", i + 1, steps.len());
        if let Err(e) = t.run(s) {
            if i < SWITCH {
                let cleanup = t.remote(&format!("rm -rf {}", p(&partial)));
                let left = match cleanup {
                    Ok(_) => String::new(),
                    Err(c) => format!(
                        "; the partial copy {} could not be removed ({c:#}): remove it by hand",
                        partial.display()
                    ),
                };
                return Err(e.context(format!(
                    "deploy failed at step {} ({what}); the previous version is still current and \
                     running, nothing on the board changed{left}. Fix the cause and deploy again",
                    i + 1
                )));
            }
            if i == SWITCH + 1 {
                let back = rollback(t);
                return Err(e.context(match back {
                    Ok(v) => format!(
                        "the new version {id} did not start; rolled back to {v}. `ssh {} journalctl -u {SERVICE} -n 50` says why",
                        t.host
                    ),
                    Err(b) => format!(
                        "the new version {id} did not start, and rolling back failed too ({b:#}): run `reflex-tools rollback --host {}`",
                        t.host
                    ),
                }));
            }
            if i == SWITCH {
                return Err(e.context(format!(
                    "deploy failed while switching to {id}: the previous version is current \
                     unless `{}` points to versions/{id}; check with `ssh {} ls -l {}`",
                    t.prefix.join("current").display(),
                    t.host,
                    t.prefix.display()
                )));
            }
            // Pruning old versions failed: the deployment itself is done.
            log::warn!("{e:#}");
        }
    }
    Ok(id)
}

/// Removes the local staging directory when the deployment ends.
struct StageDir(PathBuf);

impl Drop for StageDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Switches `current` back to `previous` (and `previous` to what was current), reinstalls that
/// version's units and restarts the service. Returns the version now current.
pub fn rollback(t: &Target) -> Result<String> {
    let script = format!(
        "cd {prefix}\n[ -L previous ] || {{ echo 'no previous version to roll back to (only one was ever deployed)' >&2; exit 1; }}\n\
         cur=$(readlink current); prev=$(readlink previous)\n\
         [ -d \"$prev\" ] || {{ echo \"the previous version $prev is gone\" >&2; exit 1; }}\n\
         ln -sfn \"$prev\" current.new; mv -T current.new current\n\
         ln -sfn \"$cur\" previous.new; mv -T previous.new previous\n\
         {install}\nreadlink current",
        prefix = p(&t.prefix),
        install = t.install_script()
    );
    let out = t.remote(&script).context("rollback")?;
    let v = out.lines().last().unwrap_or_default().trim();
    Ok(v.trim_start_matches("versions/").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_board_binary_is_where_build_board_writes_it() {
        // scripts/build-board.sh: target_dir="${REFLEX_BOARD_TARGET_DIR:-$base_target/board}",
        // base_target="${CARGO_TARGET_DIR:-$PWD/target}", bin=$target_dir/$TARGET/release/reflex.
        let script = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-board.sh"),
        )
        .unwrap();
        assert!(script.contains("${REFLEX_BOARD_TARGET_DIR:-$base_target/board}"));
        assert!(script.contains("${CARGO_TARGET_DIR:-$PWD/target}"));
        assert_eq!(
            board_build_output(None, None),
            Path::new("target/board/aarch64-unknown-linux-gnu/release/reflex")
        );
        assert_eq!(
            board_build_output(None, Some("/t".into())),
            Path::new("/t/board/aarch64-unknown-linux-gnu/release/reflex")
        );
        assert_eq!(
            board_build_output(Some("/b".into()), Some("/t".into())),
            Path::new("/b/aarch64-unknown-linux-gnu/release/reflex")
        );
        assert!(is_debug_build(Path::new("/t/debug/reflex")));
        assert!(!is_debug_build(Path::new("/t/release/reflex")));
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(sh_quote("/opt/reflex"), "/opt/reflex");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
        assert_eq!(sh_quote(""), "''");
    }

    #[test]
    fn elf_machine_of_this_executable() {
        let exe = std::env::current_exe().expect("exe");
        assert_eq!(elf_arch(&exe).expect("elf"), std::env::consts::ARCH);
        let e = elf_arch(Path::new("Cargo.toml")).expect_err("not elf");
        assert!(e.to_string().contains("not an ELF"), "{e}");
    }
}
