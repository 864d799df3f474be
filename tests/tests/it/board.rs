//! The board binary (`scripts/build-board.sh`: `reflex` for aarch64-unknown-linux-gnu, release,
//! glibc 2.35) run under qemu-user on this x86-64 machine, against the x86 build of the same
//! commit: `--version`, `check` on the demo bundle, a 2 s `run` on a replayed episode into a
//! candump log that decodes back, and `bench --model-only` giving the x86 build's actions.
//!
//! They run when `REFLEX_BOARD_BIN` names the aarch64 binary, with `REFLEX_BOARD_QEMU` (a
//! qemu-user for aarch64) and `REFLEX_BOARD_SYSROOT` (the arm64 libc it is run against, `-L`);
//! `eval "$(scripts/build-board.sh --qemu --env)"` sets all three, and scripts/test.sh does that
//! (TESTING.md). Without `REFLEX_BOARD_BIN` they print that they skipped and pass.

use reflex_models::manifest::{CaptureSpec, PixelFormat};
use reflex_models::Bundle;
use reflex_runtime::camera::replay::generate_synthetic_episode;
use reflex_runtime::can::candump::read_candump_log;
use reflex_runtime::can::frame::decode_per_joint;
use reflex_testkit::bundles::{demo_bundle, write_tiny_bundle};
use reflex_testkit::cli::{workspace_bin, Cli};
use reflex_testkit::dirs::WorkDir;
use std::path::PathBuf;

/// `e_machine` of an aarch64 ELF file (ELF for the Arm 64-bit Architecture, "EM_AARCH64").
const EM_AARCH64: u16 = 183;
/// JetPack 6's glibc (Ubuntu 22.04): the newest symbol version the board binary may need.
const MAX_GLIBC: (u32, u32) = (2, 35);

/// The aarch64 binary and how to run it here.
struct Board {
    bin: PathBuf,
    qemu: PathBuf,
    sysroot: PathBuf,
}

impl Board {
    /// `None` (and a line saying so) when `REFLEX_BOARD_BIN` is unset.
    fn from_env(test: &str) -> Option<Board> {
        let Some(bin) = std::env::var_os("REFLEX_BOARD_BIN") else {
            println!(
                "{test}: skipped (set REFLEX_BOARD_BIN, REFLEX_BOARD_QEMU and REFLEX_BOARD_SYSROOT: \
                 eval \"$(scripts/build-board.sh --qemu --env)\", see TESTING.md)"
            );
            return None;
        };
        let var = |name: &str| -> PathBuf {
            let v = std::env::var_os(name).unwrap_or_else(|| {
                panic!("REFLEX_BOARD_BIN is set but {name} is not: eval \"$(scripts/build-board.sh --qemu --env)\"")
            });
            let p = PathBuf::from(v);
            assert!(p.exists(), "{name}={} does not exist", p.display());
            p
        };
        let board = Board {
            bin: PathBuf::from(bin),
            qemu: var("REFLEX_BOARD_QEMU"),
            sysroot: var("REFLEX_BOARD_SYSROOT"),
        };
        assert!(
            board.bin.exists(),
            "REFLEX_BOARD_BIN={} does not exist: run scripts/build-board.sh",
            board.bin.display()
        );
        Some(board)
    }

    /// `reflex ARGS` on the board binary, under qemu-user, emulating a Cortex-A76 (ARMv8.2 with
    /// fp16 and dot product, like Orin's Cortex-A78AE) unless `REFLEX_BOARD_QEMU_CPU` names
    /// another model: qemu's default `max` model has 512-bit SVE2, which tract detects and
    /// which qemu emulates slowly (`reflex check` on the demo bundle: 52 s as cortex-a72, over
    /// 300 s as max, on the loaded 2-core development machine).
    fn reflex(&self) -> Cli {
        let cpu = std::env::var("REFLEX_BOARD_QEMU_CPU").unwrap_or_else(|_| "cortex-a76".into());
        Cli::new(&self.qemu)
            .arg("-cpu")
            .arg(cpu)
            .arg("-L")
            .arg(&self.sysroot)
            .arg(&self.bin)
    }
}

/// The x86 build of the same workspace.
fn host_reflex() -> Cli {
    Cli::new(workspace_bin("reflex", "reflex-runtime"))
}

/// The highest `GLIBC_x.y` symbol version named in an ELF file (its `.gnu.version_r` strings).
fn max_glibc_version(elf: &[u8]) -> Option<(u32, u32)> {
    let tag = b"GLIBC_";
    let mut best = None;
    for at in 0..elf.len().saturating_sub(tag.len()) {
        if &elf[at..at + tag.len()] != tag {
            continue;
        }
        let rest = &elf[at + tag.len()..];
        let end = rest
            .iter()
            .position(|b| !(b.is_ascii_digit() || *b == b'.'))
            .unwrap_or(rest.len());
        let text = std::str::from_utf8(&rest[..end]).unwrap_or("");
        let mut parts = text.split('.').map(|p| p.parse::<u32>());
        if let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) {
            best = best.max(Some((major, minor)));
        }
    }
    best
}

#[test]
fn board_binary_is_aarch64_for_glibc_2_35_and_checks_the_demo_bundle() {
    let Some(board) =
        Board::from_env("board_binary_is_aarch64_for_glibc_2_35_and_checks_the_demo_bundle")
    else {
        return;
    };
    let elf = std::fs::read(&board.bin).expect("reading the board binary");
    assert_eq!(&elf[..5], b"\x7fELF\x02", "a 64-bit ELF file");
    assert_eq!(
        u16::from_le_bytes([elf[18], elf[19]]),
        EM_AARCH64,
        "e_machine"
    );
    let glibc = max_glibc_version(&elf).expect("the binary names no GLIBC_ symbol version");
    assert!(
        glibc <= MAX_GLIBC,
        "the board binary needs glibc {}.{}, newer than JetPack 6's {}.{}",
        glibc.0,
        glibc.1,
        MAX_GLIBC.0,
        MAX_GLIBC.1
    );

    let version = board.reflex().arg("--version").run().success();
    let host = host_reflex().arg("--version").run().success();
    assert_eq!(version.stdout, host.stdout);
    assert!(version.stdout.starts_with("reflex "), "{}", version.stdout);

    // The same report as the x86 build's, but for the time it took and the backend survey (the
    // board build may have TensorRT support compiled in, and finds no library here).
    let check = board
        .reflex()
        .args(["check", "--bundle"])
        .arg(demo_bundle())
        .run()
        .success();
    let host = host_reflex()
        .args(["check", "--bundle"])
        .arg(demo_bundle())
        .run()
        .success();
    // What the bundle is, as each build reads it: the lines about this machine (timings, the
    // backends each build has compiled in and finds here, the selection) legitimately differ
    // between the board build (TensorRT shim in) and the host's.
    let untimed = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| {
                !l.contains(" ms")
                    && !l.contains(" s)")
                    && !l.starts_with("  backend ")
                    && !l.starts_with("    tensorrt ")
                    && !l.starts_with("  selected: ")
            })
            .map(str::to_owned)
            .collect()
    };
    assert!(
        check.stdout.contains("backend tract: available"),
        "{}",
        check.stdout
    );
    assert_eq!(untimed(&check.stdout), untimed(&host.stdout));
}

#[test]
fn board_binary_runs_a_replay_into_a_candump_log_that_decodes_back() {
    let Some(board) =
        Board::from_env("board_binary_runs_a_replay_into_a_candump_log_that_decodes_back")
    else {
        return;
    };
    let _real_time = reflex_testkit::serial::real_time();
    let dir = WorkDir::new("board-run");
    // The test kit's tiny bundle: the ResNet-18 demo network takes seconds per inference under
    // emulation, far from its 20 Hz.
    let m = write_tiny_bundle(
        &dir.join("bundle"),
        CaptureSpec {
            width: 64,
            height: 48,
            format: PixelFormat::Yuyv,
            fps: 30,
        },
    );
    generate_synthetic_episode(&m, &dir.join("episode"), 1.0, 30).expect("episode");
    let log = dir.join("can0.log");
    let out = board
        .reflex()
        .args(["run", "--bundle"])
        .arg(dir.join("bundle"))
        .arg(format!("--camera=replay:{}", dir.join("episode").display()))
        .arg(format!("--can=candump:{}", log.display()))
        .args(["--duration", "2"])
        .run()
        .success();
    let counters: serde_json::Value = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("counters: "))
        .map(|j| serde_json::from_str(j).expect("counters JSON"))
        .unwrap_or_else(|| panic!("no counters line:\n{}", out.stdout));
    let ticks = counters["ticks"].as_u64().expect("ticks");
    assert_eq!(counters["sink_errors"], 0, "{counters}");
    assert!(counters["inferences"].as_u64() >= Some(1), "{counters}");
    // 2 s at 20 Hz; emulation may slow the start, not the loop's own clock.
    assert!((20..=41).contains(&ticks), "{ticks} ticks: {counters}");

    let frames = read_candump_log(&log).expect("the candump log parses");
    let dims = m.action.names.len();
    assert_eq!(
        frames.len() as u64,
        (ticks + 1) * dims as u64,
        "one frame per joint per tick, and the stop command"
    );
    let limits = m.action.limits.as_ref().expect("limits");
    let mut last_ts = 0;
    for (k, command) in frames.chunks(dims).enumerate() {
        let mut tick = None;
        for (j, (ts_us, iface, frame)) in command.iter().enumerate() {
            assert_eq!(iface, "can0");
            assert!(*ts_us >= last_ts, "timestamps go forward");
            last_ts = *ts_us;
            let (idx, value, stop, t) = decode_per_joint(frame, 0x100, dims)
                .unwrap_or_else(|| panic!("command {k}, joint {j}: not a per-joint frame"));
            assert_eq!(idx, j, "joint order");
            assert!(
                value.is_finite() && value >= limits.min[j] && value <= limits.max[j],
                "command {k}, joint {j}: {value}"
            );
            assert_eq!(
                stop,
                k == frames.len() / dims - 1,
                "only the last is a stop"
            );
            assert_eq!(*tick.get_or_insert(t), t, "one tick per command");
        }
    }
}

#[test]
fn board_binary_bench_model_only_gives_the_x86_actions() {
    let Some(board) = Board::from_env("board_binary_bench_model_only_gives_the_x86_actions") else {
        return;
    };
    let dir = WorkDir::new("board-bench");
    let bundle = demo_bundle();
    // One warm-up and one timed run each; a 0.01 Hz rate so that emulation still passes.
    let bench = |reflex: Cli, name: &str| -> Vec<f32> {
        let json = dir.join(format!("{name}.json"));
        reflex
            .args([
                "bench",
                "--model-only",
                "--warmup",
                "1",
                "--iterations",
                "1",
            ])
            .args(["--rate", "0.01", "--bundle"])
            .arg(bundle)
            .arg("--json")
            .arg(&json)
            .arg("--svg")
            .arg(dir.join(format!("{name}.svg")))
            .run()
            .success();
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).expect("report")).expect("JSON");
        assert_eq!(report["mode"], "model-only");
        report["model_output"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no model_output in the report"))
            .iter()
            .map(|v| v.as_f64().expect("a number") as f32)
            .collect()
    };
    let board_actions = bench(board.reflex(), "aarch64");
    let host_actions = bench(host_reflex(), "x86_64");
    let m = Bundle::load(bundle).expect("bundle").manifest;
    assert_eq!(
        host_actions.len(),
        m.action.output.horizon() * m.action.names.len()
    );
    assert_eq!(board_actions.len(), host_actions.len());
    let mut worst = 0f32;
    for (i, (a, b)) in board_actions.iter().zip(&host_actions).enumerate() {
        let d = (a - b).abs();
        assert!(
            d <= 1e-5,
            "action {i}: aarch64 {a}, x86-64 {b} (|d| = {d:e})"
        );
        worst = worst.max(d);
    }
    println!(
        "aarch64 vs x86-64 actions: max |d| = {worst:e} over {}",
        host_actions.len()
    );
}
