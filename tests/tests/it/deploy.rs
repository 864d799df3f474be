//! `reflex-tools deploy`, the deployed service's command line and `reflex-tools rollback`, end to
//! end against a real OpenSSH server this test starts on 127.0.0.1 (a throwaway host key and
//! user key; a temporary directory stands in for the board's root), with `rsync` over it as the
//! tool copies. A copy that fails mid-way (the connection drops while the bundle is copied)
//! must leave the previous version current.
//!
//! Needs `sshd`, `ssh`, `ssh-keygen` and `rsync` (scripts/setup.sh installs openssh-server,
//! openssh-client and rsync) and `systemd-analyze` for the unit check.

use reflex_models::manifest::{CaptureSpec, PixelFormat};
use reflex_runtime::camera::replay::generate_synthetic_episode;
use reflex_testkit::cli::{workspace_bin, Cli};
use reflex_testkit::dirs::WorkDir;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// An sshd on 127.0.0.1 that only this test's key can log in to; killed on drop.
struct Sshd {
    child: Child,
    port: u16,
    key: PathBuf,
    user: String,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen (apt-get install openssh-client; scripts/setup.sh does)");
    assert!(ok.success(), "ssh-keygen failed");
}

impl Sshd {
    /// Starts sshd with its files in `dir`. Every session goes through `dir/gate.sh`
    /// (`ForceCommand`): it runs the client's command unless `dir/fail-on` holds a pattern the
    /// command matches, in which case the connection drops (exit 255).
    fn start(dir: &Path) -> Sshd {
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(
            sshd.exists(),
            "/usr/sbin/sshd missing: apt-get install openssh-server (scripts/setup.sh does)"
        );
        keygen(&dir.join("host_key"));
        keygen(&dir.join("user_key"));
        std::fs::copy(dir.join("user_key.pub"), dir.join("authorized_keys")).expect("keys");
        let gate = dir.join("gate.sh");
        std::fs::write(
            &gate,
            format!(
                "#!/bin/sh\n\
                 if [ -s {d}/fail-on ] && printf '%s' \"$SSH_ORIGINAL_COMMAND\" | grep -q -f {d}/fail-on; then\n\
                 echo 'test: connection dropped' >&2; exit 255\nfi\n\
                 exec /bin/sh -c \"$SSH_ORIGINAL_COMMAND\"\n",
                d = dir.display()
            ),
        )
        .expect("gate");
        chmod_x(&gate);
        // Privilege separation needs its empty directory when sshd runs as root.
        if Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout == b"0\n")
        {
            std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nForceCommand {d}/gate.sh\n",
                d = dir.display()
            ),
        )
        .expect("sshd_config");
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stderr(std::fs::File::create(dir.join("sshd.log")).expect("log"))
            .spawn()
            .expect("starting sshd");
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "sshd did not listen on 127.0.0.1:{port}: {}",
                std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let user = String::from_utf8(Command::new("id").arg("-un").output().expect("id").stdout)
            .expect("utf8")
            .trim()
            .to_string();
        Sshd {
            child,
            port,
            key: dir.join("user_key"),
            user,
        }
    }

    fn host(&self) -> String {
        format!("{}@127.0.0.1", self.user)
    }

    /// `--ssh-arg`s for reflex-tools.
    fn ssh_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        for a in [
            "-p",
            &self.port.to_string(),
            "-i",
            &self.key.display().to_string(),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
        ] {
            v.push(format!("--ssh-arg={a}"));
        }
        v
    }

    /// Runs a command on the "board" through this sshd.
    fn ssh(&self, command: &str) -> std::process::Output {
        Command::new("ssh")
            .args(["-p", &self.port.to_string(), "-i"])
            .arg(&self.key)
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "LogLevel=ERROR",
            ])
            .arg(self.host())
            .arg(command)
            .output()
            .expect("ssh")
    }
}

fn chmod_x(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut perm = std::fs::metadata(p).expect("meta").permissions();
    perm.set_mode(0o755);
    std::fs::set_permissions(p, perm).expect("chmod");
}

fn tiny(dir: &Path, fps: u32) {
    let capture = CaptureSpec {
        width: 64,
        height: 48,
        format: PixelFormat::Rgb24,
        fps,
    };
    reflex_testkit::bundles::write_tiny_bundle(dir, capture);
}

fn link(p: &Path) -> String {
    std::fs::read_link(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .display()
        .to_string()
}

#[test]
fn deploy_run_fail_midway_and_rollback_over_real_ssh() {
    let w = WorkDir::new("deploy-ssh");
    let dir = w.path();
    let sshd = Sshd::start(&std::fs::canonicalize(dir).expect("abs"));
    let root = dir.join("board");
    let prefix = root.join("opt/reflex");
    let etc = root.join("etc");
    // Two bundles that differ (their camera's frame rate), an episode to replay.
    tiny(&dir.join("v1"), 30);
    tiny(&dir.join("v2"), 15);
    let m = reflex_models::Bundle::load(dir.join("v1"))
        .expect("v1")
        .manifest;
    generate_synthetic_episode(&m, &dir.join("episode"), 1.0, 30).expect("episode");
    let profile = dir.join("test-board.toml");
    std::fs::write(
        &profile,
        "name = \"test-board\"\ndescription = \"this machine, standing in for a board\"\narch = \"x86_64\"\n",
    )
    .expect("profile");
    let tools = workspace_bin("reflex-tools", "reflex-tools");
    let reflex = workspace_bin("reflex", "reflex-runtime");
    let candump = dir.join("can0.log");
    let deploy = |bundle: &str| {
        let mut c = Cli::new(&tools).args([
            "deploy",
            "--host",
            &sshd.host(),
            "--prefix",
            prefix.to_str().expect("utf8"),
            "--etc",
            etc.to_str().expect("utf8"),
            "--no-start",
            "--profile",
            profile.to_str().expect("utf8"),
            "--binary",
            reflex.to_str().expect("utf8"),
        ]);
        c = c.args(sshd.ssh_args());
        for a in [
            "--camera".to_string(),
            format!("front=replay:{}", dir.join("episode").display()),
            "--can".into(),
            format!("candump:{}", candump.display()),
            "--force".into(),
        ] {
            c = c.arg(format!("--run-arg={a}"));
        }
        c.arg(dir.join(bundle).to_str().expect("utf8")).run()
    };

    // A dry run prints the steps and the files, and touches nothing.
    let dry = Cli::new(&tools)
        .args(["deploy", "--dry-run", "--host", &sshd.host(), "--prefix"])
        .arg(prefix.to_str().expect("utf8"))
        .args(["--profile", "generic-x86-64", "--binary"])
        .arg(reflex.to_str().expect("utf8"))
        .arg(dir.join("v1").to_str().expect("utf8"))
        .run()
        .success();
    for want in [
        "dry run",
        "rsync",
        "reflex check",
        "mv -T current.new current",
        "WatchdogSec=2",
        "ExecStart=ip link set can0 type can bitrate 1000000",
    ] {
        assert!(
            dry.stdout.contains(want),
            "no `{want}` in the dry run:\n{}",
            dry.stdout
        );
    }
    assert!(!root.exists(), "the dry run wrote {}", root.display());

    // First deployment.
    let r1 = deploy("v1");
    r1.success();
    let v1 = link(&prefix.join("current"));
    assert!(v1.starts_with("versions/v"), "{v1}");
    assert!(!prefix.join("previous").exists());
    let unit = etc.join("systemd/system/reflex.service");
    let text = std::fs::read_to_string(&unit).expect("unit installed");
    assert!(
        text.contains("Type=notify\n") && text.contains("WatchdogSec=2\n"),
        "{text}"
    );
    // The installed unit is valid for systemd (its ExecStart exists: the deployed binary).
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    assert!(
        verify.status.success(),
        "systemd-analyze verify {}: {}",
        unit.display(),
        String::from_utf8_lossy(&verify.stderr)
    );

    // Run: the unit's own command line, on the board, for one second.
    let exec = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    assert!(
        exec.starts_with(&format!(
            "{}/current/bin/reflex run --bundle {}/current/bundle",
            prefix.display(),
            prefix.display()
        )),
        "{exec}"
    );
    let run = sshd.ssh(&format!("{exec} --duration 1"));
    assert!(
        run.status.success(),
        "the deployed service's command failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let frames = std::fs::read_to_string(&candump).expect("candump log");
    assert!(
        frames.lines().count() >= 6 * 10,
        "{} lines",
        frames.lines().count()
    );

    // Second deployment: current moves, the first is kept as previous.
    deploy("v2").success();
    let v2 = link(&prefix.join("current"));
    assert_ne!(v1, v2);
    assert_eq!(link(&prefix.join("previous")), v1);
    let fps = |v: &str| {
        reflex_models::Bundle::load(prefix.join(v).join("bundle"))
            .expect("deployed bundle loads")
            .manifest
            .cameras[0]
            .capture
            .fps
    };
    assert_eq!((fps(&v1), fps(&v2)), (30, 15));

    // Third deployment: the connection drops while the bundle is copied (the binary went).
    std::fs::write(dir.join("fail-on"), "partial/bundle\n").expect("arm the failure");
    let r3 = deploy("v1").failure();
    std::fs::remove_file(dir.join("fail-on")).expect("disarm");
    assert_eq!(r3.code(), Some(1));
    assert!(
        r3.stderr.contains("step 3") && r3.stderr.contains("previous version is still current"),
        "{}",
        r3.stderr
    );
    assert_eq!(
        link(&prefix.join("current")),
        v2,
        "a failed copy switched versions"
    );
    assert_eq!(link(&prefix.join("previous")), v1);
    let left: Vec<String> = std::fs::read_dir(prefix.join("versions"))
        .expect("versions")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 2, "the partial copy was left behind: {left:?}");
    assert!(left.iter().all(|v| !v.ends_with(".partial")), "{left:?}");

    // Rollback: back to v1, and v2 becomes previous; the units are v1's again.
    let mut rb =
        Cli::new(&tools).args(["rollback", "--host", &sshd.host(), "--no-start", "--prefix"]);
    rb = rb
        .arg(prefix.to_str().expect("utf8"))
        .args(["--etc", etc.to_str().expect("utf8")])
        .args(sshd.ssh_args());
    let out = rb.run().success();
    assert!(
        out.stdout.contains(v1.trim_start_matches("versions/")),
        "{}",
        out.stdout
    );
    assert_eq!(link(&prefix.join("current")), v1);
    assert_eq!(link(&prefix.join("previous")), v2);
    assert_eq!(fps(&link(&prefix.join("current"))), 30);
}
