//! End to end with an imported LeRobot Diffusion Policy checkpoint (two cameras, the reduced
//! U-Net of `tests/data/lerobot/diffusion`): the folder through `reflex-tools import lerobot`,
//! then the control loop on real tract sessions over a replayed episode, and `reflex run`,
//! `reflex check` and `reflex bench` as a user starts them.
//!
//! The bundle's scheduler is switched to DDIM-10 in its `policy.toml` (what a user does to run a
//! DDPM-trained policy in fewer steps) to keep the tests short; LeRobot's DDPM-100 is checked
//! against LeRobot in `host-tools/tests/it/lerobot_diffusion.rs`.

use reflex_models::manifest::{SchedulerKind, MANIFEST_FILE};
use reflex_models::Bundle;
use reflex_runtime::camera::replay::generate_synthetic_episode;
use reflex_runtime::infer::diffusion::{EncoderDenoiserPolicy, SeededNoise};
use reflex_runtime::infer::tract::TractOptions;
use reflex_testkit::cli::{workspace_bin, Cli};
use reflex_testkit::counting;
use reflex_testkit::rig::tick_replayed_episode;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// The Diffusion checkpoint imported once per run (YUYV cameras at 10 Hz), its scheduler set to
/// DDIM-10, and a 3-second synthetic episode for its two cameras and state.
fn diffusion() -> &'static (PathBuf, PathBuf) {
    static DIRS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DIRS.get_or_init(|| {
        let root = reflex_testkit::dirs::fixture_dir("lerobot_diffusion");
        let folder = root.join("pretrained_model");
        reflex_testkit::lerobot::diffusion_folder(&folder);
        let bundle = root.join("diffusion_bundle");
        Cli::new(workspace_bin("reflex-tools", "reflex-tools"))
            .args(["import", "lerobot", s(&folder), "--out", s(&bundle)])
            .args(["--rate", "10", "--capture-format", "yuyv"])
            .run()
            .success();
        let mut m = Bundle::load(&bundle).expect("bundle").manifest;
        let d = m.diffusion.as_mut().expect("[diffusion]");
        d.scheduler.kind = SchedulerKind::Ddim;
        d.scheduler.num_inference_steps = 10;
        std::fs::write(bundle.join(MANIFEST_FILE), m.to_toml().expect("toml")).expect("write");
        let m = Bundle::load(&bundle)
            .expect("the edited bundle loads")
            .manifest;
        let episode = root.join("episode");
        generate_synthetic_episode(&m, &episode, 3.0, 30).expect("episode");
        (bundle, episode)
    })
}

#[test]
fn diffusion_runs_two_cameras_on_a_replayed_episode_and_its_ticks_allocate_only_inside_inference() {
    let (bundle_dir, episode) = diffusion();
    let bundle = Bundle::load(bundle_dir).expect("bundle");
    let m = &bundle.manifest;
    assert_eq!(m.cameras.len(), 2);
    // Single-threaded tract keeps every allocation on this (counted) thread.
    let policy =
        EncoderDenoiserPolicy::tract(&bundle, TractOptions { threads: 1 }, SeededNoise::new(0))
            .expect("encoder + denoiser on tract");
    // 8 of 15 steps executed per inference at 10 Hz: an inference every 8 ticks or sooner.
    let t = tick_replayed_episode(m, episode, policy, 3, 32);
    counting::assert_installed();
    assert!(
        t.inferences >= 3,
        "{} inferences, {:?}",
        t.inferences,
        t.counters
    );
    assert!(
        t.fresh >= 30,
        "{} fresh commands, {:?}",
        t.fresh,
        t.counters
    );
    assert_eq!(
        t.other_allocs, 0,
        "ticks that do not run the networks allocate nothing (two cameras, observation history, scheduler buffers)"
    );
    let stages = reflex_runtime::bench::stage_stats(&t.timings);
    let has = |n: &str| stages.iter().any(|s| s.stage == n);
    assert!(
        has("encoder") && has("denoiser_step"),
        "the loop times both networks: {:?}",
        stages.iter().map(|s| &s.stage).collect::<Vec<_>>()
    );
}

#[test]
fn reflex_check_run_and_bench_take_the_imported_diffusion_bundle() {
    let (bundle, episode) = diffusion();
    let check = Cli::new(workspace_bin("reflex", "reflex-runtime"))
        .args(["check", "--bundle", s(bundle)])
        .run()
        .success();
    for want in [
        "model Encoder: encoder.onnx",
        "model Denoiser: denoiser.onnx",
        "denoiser tensors: in sample",
        "diffusion: Ddim, 10 of 100 timesteps per inference",
        "history 2 observation(s), horizon 16 (output from step 1)",
        "backend tract: available",
    ] {
        assert!(check.stdout.contains(want), "missing `{want}`:\n{check}");
    }

    let dir = reflex_testkit::dirs::WorkDir::new("diffusion_bench");
    let bench = Cli::new(workspace_bin("reflex", "reflex-runtime"))
        .args([
            "bench",
            "--bundle",
            s(bundle),
            "--model-only",
            "--iterations",
            "3",
        ])
        .args([
            "--json",
            s(&dir.join("bench.json")),
            "--svg",
            s(&dir.join("bench.svg")),
        ])
        .run();
    assert!(
        matches!(bench.status.code(), Some(0 | 2)),
        "bench ran and gave a verdict:\n{bench}"
    );
    for want in [
        "encoder",
        "denoiser_step",
        "diffusion (Ddim-10, medians): encoder",
    ] {
        assert!(bench.stdout.contains(want), "missing `{want}`:\n{bench}");
    }

    let _real_time = reflex_testkit::serial::real_time();
    let ep = s(episode);
    let out = Cli::new(workspace_bin("reflex", "reflex-runtime"))
        .args(["run", "--bundle", s(bundle)])
        .args(["--camera", &format!("top=replay:{ep}")])
        .args(["--camera", &format!("wrist=replay:{ep}")])
        .args(["--can", "null", "--allow-unlimited", "--duration", "3"])
        .run()
        .success();
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains("inference"), "{text}");
}
